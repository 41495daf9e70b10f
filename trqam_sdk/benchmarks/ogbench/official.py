"""Load official-format OGBench datasets (single files and multi-file releases) as singletask Transitions.

The same loader serves the files OGBench publishes (from its cache, ``~/.ogbench/data``, or any folder) and
the ones :mod:`trqam_sdk.benchmarks.ogbench.generate` regenerates. Each file is read with ``ogbench.utils.load_dataset``
(its episode-end handling) and relabelled with ``ogbench.relabel_utils.relabel_dataset`` (its singletask
rewards and masks), so nothing here re-implements OGBench's conventions.

Multi-file releases (e.g. the 100M sets, one folder of many npz files): the paper's 10M sets are the first
10 files sorted by name, so ``num_files=10``. Every file holds whole episodes, so files concatenate.

Reward variants: ``default`` is OGBench's (``#solved subtasks - #subtasks`` for scene/puzzle); ``sparse``
is ``-1`` unless the whole task is solved (SPEC §6, used for scene and puzzle), i.e. ``rewards = -masks``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from trqam_sdk.data.transitions import Transitions

OGBENCH_CACHE = Path("~/.ogbench/data").expanduser()
REQUIRED_KEYS = ("observations", "actions", "terminals", "qpos", "qvel")
"""keys every official OGBench npz holds (scene/puzzle add ``button_states``)"""
Reward = Literal["default", "sparse"]


def eval_env_name(domain: str, task: int) -> str:
    """'cube-double', 3 -> 'cube-double-singletask-task3-v0' (OGBench's singletask env ids)."""
    if not 1 <= int(task) <= 5:
        raise ValueError(f"OGBench singletask tasks are 1..5, got {task}")
    return f"{domain}-singletask-task{int(task)}-v0"


def official_files(dataset: str, dataset_dir: str | Path | None = None,
                   num_files: int | None = None) -> tuple[list[Path], list[Path]]:
    """(train files, val files) of ``dataset`` in ``dataset_dir`` (default: ogbench's cache).

    Looks for ``<dir>/<dataset>.npz`` (+ ``-val.npz``); else a multi-file release, either a folder
    ``<dir>/<dataset>/`` of npz files or ``<dir>/<dataset>-*.npz``; files whose stem ends in ``-val`` are
    validation. ``num_files`` keeps the first N train files sorted by name.
    """
    root = Path(dataset_dir).expanduser() if dataset_dir is not None else OGBENCH_CACHE
    single, single_val = root / f"{dataset}.npz", root / f"{dataset}-val.npz"
    if single.is_file():
        train, val = [single], [single_val] if single_val.is_file() else []
    else:
        folder = root / dataset
        candidates = sorted(folder.glob("*.npz")) if folder.is_dir() else sorted(root.glob(f"{dataset}-*.npz"))
        val = [p for p in candidates if p.stem.endswith("-val")]
        train = [p for p in candidates if not p.stem.endswith("-val")]
    if not train:
        raise FileNotFoundError(
            f"no OGBench files for {dataset!r} in {root}: looked for {single.name}, {dataset}/*.npz and "
            f"{dataset}-*.npz (datasets cannot be downloaded here; regenerate with `trqam data` or copy them)")
    if num_files is not None:
        if num_files < 1 or num_files > len(train):
            raise ValueError(f"num_files={num_files} but {root} has {len(train)} train files for {dataset!r}")
        train = train[:num_files]
    return train, val


def _load_files(files: list[Path]) -> dict[str, np.ndarray]:
    from ogbench.utils import load_dataset

    parts = []
    for f in files:
        with np.load(f) as z:
            missing = [k for k in REQUIRED_KEYS if k not in z.files]
        if missing:
            raise KeyError(f"{f} is not an official OGBench file: lacks {missing}")
        parts.append(load_dataset(str(f), compact_dataset=False, add_info=True))
    keys = set(parts[0])
    for f, p in zip(files, parts, strict=True):
        if set(p) != keys:
            raise KeyError(f"{f} has keys {sorted(p)}, {files[0]} has {sorted(keys)}")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def relabel(ds: dict[str, np.ndarray], env: Any, env_name: str, reward: Reward = "default") -> dict[str, np.ndarray]:
    """Singletask rewards/masks by ogbench's own relabelling; ``sparse``: rewards = -masks (SPEC §6)."""
    from ogbench.relabel_utils import relabel_dataset

    relabel_dataset(env_name, env, ds)
    if reward == "sparse":
        ds["rewards"] = -ds["masks"]
    elif reward != "default":
        raise ValueError(f"reward must be 'default' or 'sparse', got {reward!r}")
    return ds


def load_singletask(domain: str, task: int, dataset: str, dataset_dir: str | Path | None = None,
                    num_files: int | None = None, reward: Reward = "default",
                    env_kwargs: dict[str, Any] | None = None) -> tuple[Any, Transitions, Transitions | None]:
    """(eval env, train, val or None) for ``domain`` task ``task`` from the official-format ``dataset`` files."""
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)


    train_files, val_files = official_files(dataset, dataset_dir, num_files)
    name = eval_env_name(domain, task)
    env = gymnasium.make(name, **(env_kwargs or {}))
    train = to_transitions(relabel(_load_files(train_files), env, name, reward))
    val = to_transitions(relabel(_load_files(val_files[:1]), env, name, reward)) if val_files else None
    return env, train, val


def to_transitions(ds: dict[str, np.ndarray]) -> Transitions:
    """ogbench's regular (non-compact) singletask dataset -> :class:`Transitions`.

    ogbench gives ``terminals`` = 1 on each episode's last transition, ``rewards`` and ``masks`` =
    1 - success from its singletask relabelling, and ``next_observations``; we keep them as they are.
    """
    from trqam_sdk.data.transitions import Transitions

    missing = [k for k in ("rewards", "masks", "next_observations") if k not in ds]
    if missing:
        raise KeyError(f"not a singletask, non-compact ogbench dataset: lacks {missing}")
    return Transitions.from_numpy(
        {k: ds[k] for k in ("observations", "actions", "rewards", "masks", "terminals", "next_observations")}
    )


def write_official(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` (keys of :data:`REQUIRED_KEYS`, optional ``button_states``) as an official npz, atomically."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise KeyError(f"cannot write an OGBench file without {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    keep = {k: v for k, v in arrays.items() if k in (*REQUIRED_KEYS, "button_states")}
    np.savez_compressed(tmp, **keep)
    os.replace(tmp, path)
    return path
