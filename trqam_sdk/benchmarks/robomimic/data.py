"""Read robomimic hdf5 datasets (MH or scripted) into the SDK's :class:`Transitions`.

Layout (robomimic v0.3): ``data/demo_i/{obs/<key>, next_obs/<key>, actions, rewards, dones, states}``,
``data.attrs["env_args"]`` (JSON), ``mask/<filter>`` = demo names (MH: ``better``, ``okay``, ``worse``,
their pairs such as ``okay_better``, ``train``, ``valid``). Several filter keys are unioned.

Conventions (the TRQAM/QAM robomimic setup): observations are the low-dim keys concatenated and z-scored
with the selected data's statistics; reward ``r - 1`` ∈ {-1, 0} (sparse robomimic reward is 1 at success);
``masks = 0`` where the task is solved (no bootstrapping past success, as the env terminates there);
``terminals = 1`` on each demo's last step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.benchmarks.robomimic.env import LOW_DIM_KEYS, ObsNormalizer
from trqam_sdk.data.transitions import Transitions


@dataclass
class RobomimicData:
    """The transitions plus what evaluation needs: env_args, obs keys and the normaliser, per-demo info."""

    transitions: Transitions
    normalizer: ObsNormalizer
    env_args: dict[str, Any]
    demos: list[str]
    demo_success: dict[str, bool]
    scripted: dict[str, Any] | None = None
    """the generator's record when the file was made by robomimic_gen (results are then labelled scripted)"""


def _decode(names: np.ndarray) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def select_demos(f: Any, filter_keys: list[str] | str | None) -> list[str]:
    """Demo names of the union of ``filter_keys`` (all demos when None), in file order."""
    if "data" not in f:
        raise KeyError(f"{f.filename} has no 'data' group: not a robomimic hdf5 file")
    all_demos = sorted(f["data"].keys(), key=lambda s: int(s.split("_")[-1]) if s.split("_")[-1].isdigit() else s)
    if not filter_keys:
        return all_demos
    keys = [filter_keys] if isinstance(filter_keys, str) else list(filter_keys)
    available = sorted(f["mask"].keys()) if "mask" in f else []
    unknown = [k for k in keys if k not in available]
    if unknown:
        raise KeyError(f"mask filter keys {unknown} are not in {f.filename}; available: {available}")
    chosen = {n for k in keys for n in _decode(f["mask"][k][()])}
    missing = chosen - set(all_demos)
    if missing:
        raise KeyError(f"mask lists demos {sorted(missing)[:5]} that are not under data/")
    return [d for d in all_demos if d in chosen]


def _stack_obs(group: Any, keys: tuple[str, ...] | list[str], where: str) -> np.ndarray:
    missing = [k for k in keys if k not in group]
    if missing:
        raise KeyError(f"{where} lacks observation keys {missing}; it has {sorted(group.keys())}")
    return np.concatenate([np.asarray(group[k], np.float32).reshape(len(group[k]), -1) for k in keys], axis=1)


def load_robomimic(path: str | Path, filter_keys: list[str] | str | None = None,
                   obs_keys: tuple[str, ...] | list[str] = LOW_DIM_KEYS,
                   normalizer: ObsNormalizer | None = None) -> RobomimicData:
    """Load (a filtered subset of) a robomimic file. ``normalizer`` reuses saved statistics (e.g. a run's)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robomimic dataset not found: {path}")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "terminals")}
    success: dict[str, bool] = {}
    with h5py.File(path, "r") as f:
        demos = select_demos(f, filter_keys)
        if not demos:
            raise ValueError(f"{path}: filter {filter_keys!r} selects no demos")
        if "env_args" not in f["data"].attrs:
            raise KeyError(f"{path}: data.attrs has no 'env_args'; cannot build the evaluation env")
        env_args = json.loads(f["data"].attrs["env_args"])
        scripted = json.loads(f["data"].attrs["scripted"]) if "scripted" in f["data"].attrs else None
        for d in demos:
            g = f["data"][d]
            n = int(g["actions"].shape[0])
            obs, nxt = _stack_obs(g["obs"], obs_keys, f"{d}/obs"), _stack_obs(g["next_obs"], obs_keys, f"{d}/next_obs")
            rewards = np.asarray(g["rewards"], np.float32).reshape(-1)
            if obs.shape[0] != n or nxt.shape[0] != n or rewards.shape[0] != n:
                raise ValueError(f"{path}:{d}: obs {obs.shape[0]}, next_obs {nxt.shape[0]}, rewards "
                                 f"{rewards.shape[0]} rows but {n} actions")
            term = np.zeros(n, np.float32)
            term[-1] = 1.0
            cols["obs"].append(obs)
            cols["next_obs"].append(nxt)
            cols["actions"].append(np.asarray(g["actions"], np.float32))
            cols["rewards"].append(rewards)
            cols["terminals"].append(term)
            success[d] = bool(rewards.max() > 0)
    obs, nxt = np.concatenate(cols["obs"]), np.concatenate(cols["next_obs"])
    if normalizer is None:
        normalizer = ObsNormalizer.fit(obs, list(obs_keys))
    elif len(normalizer.mean) != obs.shape[1] or list(normalizer.keys) != list(obs_keys):
        raise ValueError(f"normaliser has {len(normalizer.mean)} dims for keys {normalizer.keys}, the data "
                         f"{obs.shape[1]} dims for keys {list(obs_keys)}")
    rewards = np.concatenate(cols["rewards"])
    solved = (rewards > 0).astype(np.float32)
    arrays = {"observations": normalizer(obs), "next_observations": normalizer(nxt),
              "actions": np.concatenate(cols["actions"]), "rewards": solved - 1.0,
              "masks": 1.0 - solved, "terminals": np.concatenate(cols["terminals"])}
    return RobomimicData(Transitions.from_numpy(arrays), normalizer, env_args, demos, success, scripted)
