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

if TYPE_CHECKING:
    from trqam_sdk.data import Transitions

DEFAULT_CACHE = Path(os.environ.get("TRQAM_CACHE", "~/.cache/trqam")).expanduser() / "ogbench"
EPISODE_LENGTH = 1001
"""rows per play episode, as OGBench's play datasets (1000 transitions after the loader drops the last)"""


def split_task_name(task: str) -> tuple[str, str, str]:
    """'cube-single-play-singletask-task1-v0' -> (dataset 'cube-single-play-v0', collection env
    'cube-single-v0', eval env 'cube-single-singletask-task1-v0'), following ogbench's own name parsing."""
    parts = task.split("-")
    if "singletask" not in parts:
        raise ValueError(f"{task!r} is not a singletask name such as cube-single-play-singletask-task1-v0")
    pos = parts.index("singletask")
    if pos < 2 or parts[pos - 1] != "play":
        raise ValueError(f"{task!r}: only regenerated *play* datasets are supported (…-play-singletask-…)")
    dataset = "-".join(parts[:pos] + parts[-1:])
    collect_env = "-".join(parts[: pos - 1] + parts[-1:])
    eval_env = "-".join(parts[: pos - 1] + parts[pos:])
    return dataset, collect_env, eval_env


def _make_oracle(env: Any, noise: float, noise_smoothing: float) -> Any:
    name = env.spec.id if env.spec is not None else ""
    if not name.startswith("cube"):
        raise NotImplementedError(f"play-data regeneration is implemented for cube envs, not {name!r}")
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    return CubePlanOracle(env=env, noise=noise, noise_smoothing=noise_smoothing)


def collect_episodes(
    collect_env: str,
    episodes: int,
    seed: int,
    episode_length: int = EPISODE_LENGTH,
    noise: float = 0.1,
    noise_smoothing: float = 0.5,
) -> dict[str, np.ndarray]:
    """Roll out the play oracle for ``episodes`` episodes of ``episode_length`` rows in one env.

    Row i holds the observation before action i and qpos/qvel of that same state (ogbench's
    ``info['prev_qpos']``), and ``terminals`` = 1 on an episode's last row. Oracle actions are clipped to
    [-1, 1]; the fraction that needed it is returned as ``clipped`` (it is 0 for the cube plan oracle,
    whose ``normalize_action`` already saturates, but the clip keeps the data in the action box regardless).
    """
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    np.random.seed(seed)  # the oracles draw their plans and noise from numpy's global generator
    env = gymnasium.make(collect_env, terminate_at_goal=False, mode="data_collection", max_episode_steps=episode_length)
    oracle = _make_oracle(env, noise, noise_smoothing)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
    clipped = 0
    for ep in range(episodes):
        ob, info = env.reset(seed=seed * 10_007 + ep)
        oracle.reset(ob, info)
        done = False
        while not done:
            raw = np.asarray(oracle.select_action(ob, info), dtype=np.float64)
            action = np.clip(raw, -1.0, 1.0)
            clipped += int(np.any(raw != action))
            next_ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            out["observations"].append(ob)
            out["actions"].append(action)
            out["terminals"].append(np.float32(done))
            out["qpos"].append(info["prev_qpos"])
            out["qvel"].append(info["prev_qvel"])
            ob = next_ob
            if oracle.done and not done:  # play data: the oracle finished, so pick a new random target
                ob, info = env.unwrapped.set_new_target()
                oracle.reset(ob, info)
    env.close()
    rows = len(out["actions"])
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
    arrays["clipped"] = np.asarray(clipped / max(rows, 1), dtype=np.float64)
    return arrays


def _shard_job(job: tuple[str, str, int, int, int, float, float]) -> str:
    """Worker: write one shard unless it exists (atomic rename: a half-written shard never counts)."""
    path, collect_env, episodes, seed, length, noise, smoothing = job
    if not Path(path).is_file():
        arrays = collect_episodes(collect_env, episodes, seed, length, noise, smoothing)
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
) -> Path:
    """Write ``<dataset>.npz`` and ``<dataset>-val.npz`` in a folder keyed by size and seed; reuse if present.

    Returns the folder to pass as ``dataset_dir`` to :func:`load_ogbench`. ``val_episodes`` defaults to a
    tenth of ``episodes`` (at least 1), as OGBench's generator does.
    """
    from tqdm.auto import tqdm

    name, collect_env, _ = split_task_name(task)
    val_episodes = max(1, episodes // 10) if val_episodes is None else val_episodes
    root = Path(dataset_dir) if dataset_dir is not None else DEFAULT_CACHE
    out_dir = root / f"{name}-ep{episodes}-len{episode_length}-seed{seed}"
    final = [out_dir / f"{name}.npz", out_dir / f"{name}-val.npz"]
    if all(p.is_file() for p in final):
        return out_dir
    # shards are shared by every size with the same seed/length/noise: a smaller dataset is a prefix
    shard_dir = root / f"{name}-len{episode_length}-seed{seed}-noise{noise}-{noise_smoothing}-shards"
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
    }
    for split, target in zip(("train", "val"), final, strict=True):
        shards = [np.load(j[0]) for j in jobs[split]]
        merged = {
            k: np.concatenate([s[k] for s in shards]) for k in ("observations", "actions", "terminals", "qpos", "qvel")
        }
        rows = len(merged["actions"])
        stats[f"{split}_clipped_fraction"] = float(
            sum(float(s["clipped"]) * len(s["actions"]) for s in shards) / max(rows, 1)
        )
        tmp = str(target) + ".tmp.npz"
        np.savez_compressed(tmp, **merged)
        os.replace(tmp, target)
    (out_dir / "info.json").write_text(json.dumps(stats, indent=2))
    return out_dir


def to_transitions(ds: dict[str, np.ndarray]) -> Transitions:
    """ogbench's regular (non-compact) singletask dataset -> :class:`Transitions`.

    ogbench gives ``terminals`` = 1 on each episode's last transition, ``rewards`` and ``masks`` =
    1 - success from its singletask relabelling, and ``next_observations``; we keep them as they are.
    """
    from trqam_sdk.data import Transitions

    missing = [k for k in ("rewards", "masks", "next_observations") if k not in ds]
    if missing:
        raise KeyError(f"not a singletask, non-compact ogbench dataset: lacks {missing}")
    return Transitions.from_numpy(
        {k: ds[k] for k in ("observations", "actions", "rewards", "masks", "terminals", "next_observations")}
    )


def load_ogbench(task: str, dataset_dir: str | Path) -> tuple[Any, Transitions, Transitions]:
    """(env, train, val) through ``ogbench.make_env_and_datasets`` (its loader and its reward relabelling)."""
    import ogbench

    env, train, val = ogbench.make_env_and_datasets(task, dataset_dir=str(dataset_dir), compact_dataset=False)
    return env, to_transitions(train), to_transitions(val)
