"""Regenerate OGBench manipulation *play* datasets offline and load them through ogbench's own loader.

OGBench's datasets download from a website that may be unreachable, but the scripted oracles ship inside
the ``ogbench`` package. Play data is the env in ``data_collection`` mode with ``terminate_at_goal=False``
driven by the non-Markovian plan oracle (temporally correlated noise, default 0.1 / smoothing 0.5); whenever
the oracle finishes, the env draws a new random target. Episodes are 1001 rows; the loader drops each
episode's last row (it has no next state), giving 1000 transitions per episode.

Files are written in the official npz format (observations, actions, terminals, qpos, qvel), as
``<name>.npz`` and ``<name>-val.npz``, so ``ogbench.make_env_and_datasets(..., dataset_dir=...)`` loads
them and does its own singletask reward relabelling. Generation runs in worker processes, one env each,
writing one shard file per block of episodes: an interrupted run resumes from the shards it has.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trqam_sdk.benchmarks.ogbench.official import REQUIRED_KEYS, to_transitions
from trqam_sdk.io import atomic_write_text

if TYPE_CHECKING:
    from trqam_sdk.data.transitions import Transitions

DEFAULT_CACHE = Path(os.environ.get("TRQAM_CACHE", "~/.cache/trqam")).expanduser() / "ogbench"
DATA_KEYS = (*REQUIRED_KEYS, "button_states")
"""keys of an official OGBench npz file (``button_states`` only for scene/puzzle)"""
EPISODE_LENGTH = 1001
"""rows per play episode, as OGBench's play datasets (1000 transitions after the loader drops the last)"""


def split_task_name(task: str) -> tuple[str, str, str]:
    """'cube-single-play-singletask-task1-v0' -> (dataset 'cube-single-play-v0', collection env
    'cube-single-v0', eval env 'cube-single-singletask-task1-v0'), following ogbench's own name parsing."""
    parts = task.split("-")
    if "singletask" not in parts:
        raise ValueError(f"{task!r} is not a singletask name such as cube-single-play-singletask-task1-v0")
    pos = parts.index("singletask")
    if pos < 2:
        raise ValueError(f"{task!r} lacks a dataset type before 'singletask' (…-play-singletask-…)")
    dataset = "-".join(parts[:pos] + parts[-1:])
    collect_env = "-".join(parts[: pos - 1] + parts[-1:])
    eval_env = "-".join(parts[: pos - 1] + parts[pos:])
    return dataset, collect_env, eval_env


MANIPULATION_DOMAINS = ("cube-single", "cube-double", "cube-triple", "cube-quadruple", "scene", "puzzle-3x3",
                        "puzzle-4x4")
"""manipulation domains whose play datasets this module regenerates with ogbench's shipped oracles"""


def _make_oracles(env: Any, noise: float, noise_smoothing: float) -> dict[str, Any]:
    """Plan oracles keyed by the env's ``info['privileged/target_task']`` (OGBench's play-data recipe).

    cube: pick-and-place; scene: one oracle per object kind; puzzle: button presses with the gripper kept
    closed. Locomaze envs have no shipped expert (their data needs trained checkpoints): use
    ``policy='random'`` there, which gives clearly non-expert data for format tests only.
    """
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    name = env.spec.id if env.spec is not None else ""
    kw = {"env": env, "noise": noise, "noise_smoothing": noise_smoothing}
    if name.startswith("cube"):
        return {"cube": CubePlanOracle(**kw)}
    if name.startswith("scene"):
        return {"cube": CubePlanOracle(**kw), "button": ButtonPlanOracle(**kw), "drawer": DrawerPlanOracle(**kw),
                "window": WindowPlanOracle(**kw)}
    if name.startswith("puzzle"):
        return {"button": ButtonPlanOracle(gripper_always_closed=True, **kw)}
    raise NotImplementedError(f"no shipped oracle for {name!r}: play-data regeneration covers {MANIPULATION_DOMAINS}")


class _RandomPolicy:
    """Temporally correlated uniform noise in [-1, 1]: a stand-in when no expert exists (NOT expert data)."""

    def __init__(self, env: Any, smoothing: float = 0.8):
        self.space, self.smoothing, self.prev, self.done = env.action_space, smoothing, None, False

    def reset(self, ob: Any, info: dict) -> None:
        self.prev = None

    def select_action(self, ob: Any, info: dict) -> np.ndarray:
        a = np.random.uniform(-1.0, 1.0, self.space.shape)
        self.prev = a if self.prev is None else self.smoothing * self.prev + (1 - self.smoothing) * a
        return self.prev


def _state(env: Any, info: dict) -> tuple[np.ndarray, np.ndarray]:
    """qpos/qvel of the state an action is taken in: ogbench's ``prev_qpos`` (manipulation) or the sim's."""
    if "prev_qpos" in info:
        return info["prev_qpos"], info["prev_qvel"]
    data = getattr(env.unwrapped, "data", None) or env.unwrapped._data
    return data.qpos.copy(), data.qvel.copy()


def collect_episodes(
    collect_env: str,
    episodes: int,
    seed: int,
    episode_length: int = EPISODE_LENGTH,
    noise: float = 0.1,
    noise_smoothing: float = 0.5,
    policy: str = "oracle",
) -> dict[str, np.ndarray]:
    """Roll out the play oracle (or ``policy='random'``) for ``episodes`` episodes of ``episode_length`` rows.

    Row i holds the observation before action i and qpos/qvel (and ``button_states`` for scene/puzzle) of
    that same state, and ``terminals`` = 1 on an episode's last row. Oracle actions are clipped to
    [-1, 1]; the fraction that needed it is returned as ``clipped`` (0 for the plan oracles, whose
    ``normalize_action`` already saturates, but the clip keeps the data in the action box regardless).
    """
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    np.random.seed(seed)  # the oracles draw their plans and noise from numpy's global generator
    if policy == "oracle":
        env = gymnasium.make(collect_env, terminate_at_goal=False, mode="data_collection",
                             max_episode_steps=episode_length)
        oracles = _make_oracles(env, noise, noise_smoothing)
    elif policy == "random":
        env = gymnasium.make(collect_env, max_episode_steps=episode_length)
        oracles = {}
    else:
        raise ValueError(f"policy must be 'oracle' or 'random', got {policy!r}")
    out: dict[str, list[np.ndarray]] = {k: [] for k in DATA_KEYS}
    clipped = 0
    for ep in range(episodes):
        ob, info = env.reset(seed=seed * 10_007 + ep)
        oracle = oracles[info["privileged/target_task"]] if oracles else _RandomPolicy(env)
        oracle.reset(ob, info)
        done = False
        while not done:
            raw = np.asarray(oracle.select_action(ob, info), dtype=np.float64)
            action = np.clip(raw, -1.0, 1.0)
            clipped += int(np.any(raw != action))
            qpos, qvel = _state(env, info)
            next_ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            out["observations"].append(ob)
            out["actions"].append(action)
            out["terminals"].append(np.float32(done))
            out["qpos"].append(info.get("prev_qpos", qpos))
            out["qvel"].append(info.get("prev_qvel", qvel))
            if "prev_button_states" in info:
                out["button_states"].append(info["prev_button_states"])
            ob = next_ob
            if oracles and oracle.done and not done:  # play data: the oracle finished, so pick a new target
                ob, info = env.unwrapped.set_new_target()
                oracle = oracles[info["privileged/target_task"]]
                oracle.reset(ob, info)
    env.close()
    rows = len(out["actions"])
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in out.items() if v}
    if "button_states" in arrays:
        arrays["button_states"] = arrays["button_states"].astype(np.int64)
    arrays["clipped"] = np.asarray(clipped / max(rows, 1), dtype=np.float64)
    return arrays


def _shard_job(job: tuple[str, str, int, int, int, float, float, str]) -> str:
    """Worker: write one shard unless it exists (atomic rename: a half-written shard never counts)."""
    path, collect_env, episodes, seed, length, noise, smoothing, policy = job
    if not Path(path).is_file():
        arrays = collect_episodes(collect_env, episodes, seed, length, noise, smoothing, policy)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return path


def generate_dataset(
    task: str = "cube-single-play-singletask-task1-v0",
    episodes: int = 100,
    val_episodes: int | None = None,
    seed: int = 0,
    dataset_dir: str | Path | None = None,
    workers: int | None = None,
    episode_length: int = EPISODE_LENGTH,
    episodes_per_shard: int = 5,
    noise: float = 0.1,
    noise_smoothing: float = 0.5,
    progress: bool = True,
    policy: str = "oracle",
) -> Path:
    """Write ``<dataset>.npz`` and ``<dataset>-val.npz`` in a folder keyed by size and seed; reuse if present.

    Returns the folder to pass as ``dataset_dir`` to :func:`load_ogbench`. ``val_episodes`` defaults to a
    tenth of ``episodes`` (at least 1), as OGBench's generator does.
    """
    from tqdm.auto import tqdm

    name, collect_env, _ = split_task_name(task)
    if policy == "oracle" and (not name.endswith("-play-v0") or collect_env[:-3] not in MANIPULATION_DOMAINS):
        raise ValueError(f"{task!r}: oracle regeneration covers the play datasets of {MANIPULATION_DOMAINS}; "
                         "other data (locomaze navigate) needs the official files, or policy='random' for tests")
    tag = "" if policy == "oracle" else f"-{policy}"
    val_episodes = max(1, episodes // 10) if val_episodes is None else val_episodes
    root = Path(dataset_dir) if dataset_dir is not None else DEFAULT_CACHE
    out_dir = root / f"{name}-ep{episodes}-len{episode_length}-seed{seed}{tag}"
    final = [out_dir / f"{name}.npz", out_dir / f"{name}-val.npz"]
    if all(p.is_file() for p in final):
        return out_dir
    # shards are shared by every size with the same seed/length/noise: a smaller dataset is a prefix
    shard_dir = root / f"{name}-len{episode_length}-seed{seed}-noise{noise}-{noise_smoothing}{tag}-shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, list[tuple]] = {"train": [], "val": []}
    for split, n, base in (("train", episodes, 0), ("val", val_episodes, 1_000_000)):
        for i, start in enumerate(range(0, n, episodes_per_shard)):
            path = str(shard_dir / f"{split}-{i:05d}-of{episodes_per_shard}.npz")
            if n - start < episodes_per_shard:  # a partial last shard gets its own name
                path = path.replace(".npz", f"-n{n - start}.npz")
            jobs[split].append(
                (
                    path,
                    collect_env,
                    min(episodes_per_shard, n - start),
                    seed * 100_003 + base + i,
                    episode_length,
                    noise,
                    noise_smoothing,
                    policy,
                )
            )
    todo = [j for js in jobs.values() for j in js if not Path(j[0]).is_file()]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = tqdm(
        total=episodes + val_episodes,
        desc=f"regenerate {name}",
        unit="ep",
        disable=not progress,
        initial=episodes + val_episodes - sum(j[2] for j in todo),
    )
    if todo and workers == 1:
        for job in todo:
            _shard_job(job)
            bar.update(job[2])
    elif todo:
        sizes = {j[0]: j[2] for j in todo}
        with mp.get_context("spawn").Pool(workers) as pool:
            for path in pool.imap_unordered(_shard_job, todo):
                bar.update(sizes[path])
    bar.close()
    stats: dict[str, Any] = {
        "task": task,
        "episodes": episodes,
        "val_episodes": val_episodes,
        "seed": seed,
        "episode_length": episode_length,
        "noise": noise,
        "noise_smoothing": noise_smoothing,
        "policy": policy if policy == "oracle" else f"{policy} (NOT expert data: for format tests only)",
    }
    for split, target in zip(("train", "val"), final, strict=True):
        shards = [np.load(j[0]) for j in jobs[split]]
        merged = {k: np.concatenate([s[k] for s in shards]) for k in DATA_KEYS if k in shards[0].files}
        rows = len(merged["actions"])
        stats[f"{split}_clipped_fraction"] = float(
            sum(float(s["clipped"]) * len(s["actions"]) for s in shards) / max(rows, 1)
        )
        tmp = str(target) + ".tmp.npz"
        np.savez_compressed(tmp, **merged)
        os.replace(tmp, target)
    atomic_write_text(out_dir / "info.json", json.dumps(stats, indent=2))
    return out_dir


def load_ogbench(task: str, dataset_dir: str | Path) -> tuple[Any, Transitions, Transitions]:
    """(env, train, val) through ``ogbench.make_env_and_datasets`` (its loader and its reward relabelling)."""
    import ogbench

    env, train, val = ogbench.make_env_and_datasets(task, dataset_dir=str(dataset_dir), compact_dataset=False)
    return env, to_transitions(train), to_transitions(val)
