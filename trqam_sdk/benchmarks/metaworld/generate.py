"""Noisy scripted-expert demonstrations for one MetaWorld task, written as a LeRobotDataset (v3, images).

Each episode runs MetaWorld's scripted expert in :class:`~trqam_sdk.benchmarks.metaworld.env.TrqamMetaworldEnv`
(the env every other stage uses, so data and evaluation render identically) with Gaussian noise
``N(0, level)`` added to the expert's action and the sum clipped to [-1, 1]; the *executed* clipped action is
recorded. Failed episodes are kept: a prior trained on the mix should land well below 100 % success.

Frame t holds ``observation.*`` at t, the action taken at t, and ``next.reward`` / ``next.done`` /
``next.success`` of that step. ``next.done`` is the true termination (success, where LeRobot's env ends an
episode); a time-limit truncation is not ``done``. The terminal observation itself is not stored (LeRobot's
dataset convention) — unless ``post_success_steps`` > 0 keeps the expert acting after the first success: then
those frames (states at the goal, each with its own ``next.done`` / ``next.success``) close the episode, which is
what a success detector needs to see.

Episode seeds (env reset seed and noise stream) are ``EPISODE_SEED_BASE + 1_000_000 * seed + 10_000 * level
index + i``: from 10 million up, disjoint from evaluation seeds (which start at 0) and stable when episodes
are added to another level.

Resumable and multi-process like ``trqam data``: episodes are cut into fixed blocks (``episodes_per_shard``,
independent of ``workers``); each block is written as its own LeRobotDataset under ``root/.shards/`` to a
temporary folder, renamed to ``shard-XXX`` when finalized, and skipped by a re-run. The shards are then merged
with LeRobot's ``aggregate_datasets``; the dataset under ``root`` counts as finished once
``meta/trqam_generation.json`` exists (written last, atomically).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.benchmarks.metaworld.env import FPS, EnvSettings, TrqamMetaworldEnv, expert_policy, state_vector
from trqam_sdk.io import atomic_write_text

EPISODE_SEED_BASE = 10_000_000
"""first demonstration episode seed; evaluation seeds stay below it"""
DEFAULT_LEVELS: dict[str, float] = {"better": 0.1, "okay": 0.5, "worse": 1.0}
"""action-noise standard deviations (actions live in [-1, 1])"""
DEFAULT_EPISODES_PER_LEVEL = 50
GENERATION_FILE = "trqam_generation.json"
"""written into ``root/meta`` last: its presence means the dataset is complete"""
SHARD_FILE = "trqam_shard.json"
FORMAT_VERSION = 1


def dataset_features(image_size: int) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec of the demonstrations (names as ``preprocess_observation`` produces them)."""
    return {
        "observation.image": {"dtype": "image", "shape": (image_size, image_size, 3),
                              "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "gripper"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
    }


def episode_seed(seed: int, level_index: int, i: int) -> int:
    """Reset / noise seed of episode ``i`` of the ``level_index``-th level (see the module docstring)."""
    if not 0 <= i < 10_000 or not 0 <= level_index < 100:
        raise ValueError(f"episode index {i} / level index {level_index} out of the seed scheme's range")
    return EPISODE_SEED_BASE + 1_000_000 * seed + 10_000 * level_index + i


def noisy_expert_action(policy: Any, env: TrqamMetaworldEnv, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Expert action for the env's current state plus N(0, noise), clipped to the action box [-1, 1]."""
    action = np.asarray(policy.get_action(state_vector(env)), dtype=np.float64)
    if noise > 0:
        action = action + rng.normal(0.0, noise, size=action.shape)
    return np.clip(action, -1.0, 1.0).astype(np.float32)


@contextlib.contextmanager
def _no_reset_on_success(env: TrqamMetaworldEnv) -> Iterator[None]:
    """LeRobot's env resets itself inside the step that succeeds; while active, that internal reset is skipped
    (the instance attribute shadows ``reset`` for the one call LeRobot makes), so an episode can go on."""
    env.reset = lambda *args, **kwargs: (None, {})  # type: ignore[method-assign]
    try:
        yield
    finally:
        del env.reset


def rollout_expert(env: TrqamMetaworldEnv, policy: Any, noise: float, seed: int,
                   hold_steps: int = 0) -> dict[str, np.ndarray]:
    """One episode from ``env.reset(seed=seed)`` until success or the time limit, as stacked per-frame arrays.

    ``hold_steps`` > 0 keeps the expert acting that many steps after the first success (or to the time limit):
    frames of states *at* the goal, each labelled with its own step's success and done. They give a success
    detector positive images (without them the success state is never stored: the episode ends there) and the
    critic more terminal transitions. The noise stream is ``np.random.default_rng(seed)``, so an episode is
    reproducible from its seed alone.
    """
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("image", "state", "action", "reward", "done", "success")}
    held = -1  # steps taken after the first success (-1: not yet succeeded)
    while True:
        action = noisy_expert_action(policy, env, noise, rng)
        if hold_steps > 0:
            with _no_reset_on_success(env):
                next_obs, reward, terminated, truncated, info = env.step(action)
        else:
            next_obs, reward, terminated, truncated, info = env.step(action)
        rows["image"].append(obs["pixels"])
        rows["state"].append(np.asarray(obs["agent_pos"], dtype=np.float32))
        rows["action"].append(action)
        rows["reward"].append(reward)
        rows["done"].append(terminated)
        rows["success"].append(info["success"] > 0)
        if held >= 0 or terminated:
            held += 1
        if truncated or held >= hold_steps:
            break
        obs = next_obs
    return {"image": np.stack(rows["image"]).astype(np.uint8), "state": np.stack(rows["state"]),
            "action": np.stack(rows["action"]), "reward": np.asarray(rows["reward"], dtype=np.float32),
            "done": np.asarray(rows["done"], dtype=bool), "success": np.asarray(rows["success"], dtype=bool)}


@dataclass(frozen=True)
class EpisodeSpec:
    level: str
    noise: float
    seed: int


@dataclass(frozen=True)
class ShardSpec:
    index: int
    episodes: tuple[EpisodeSpec, ...]
    hold_steps: int = 0
    """expert steps kept after the first success (:func:`rollout_expert`)"""


def plan_shards(levels: dict[str, float], episodes: dict[str, int], seed: int,
                episodes_per_shard: int, hold_steps: int = 0) -> list[ShardSpec]:
    """Episodes in level order, cut into blocks of ``episodes_per_shard`` (a level never shares a block)."""
    shards: list[ShardSpec] = []
    for li, (name, noise) in enumerate(levels.items()):
        specs = [EpisodeSpec(name, float(noise), episode_seed(seed, li, i)) for i in range(episodes[name])]
        for start in range(0, len(specs), episodes_per_shard):
            shards.append(ShardSpec(len(shards), tuple(specs[start:start + episodes_per_shard]), hold_steps))
    return shards


def _shard_name(index: int) -> str:
    return f"shard-{index:03d}"


def write_shard(settings: EnvSettings, repo_id: str, shard: ShardSpec, shards_dir: Path) -> dict[str, Any]:
    """Write one block of episodes as a LeRobotDataset under ``shards_dir/shard-XXX`` (temp folder + rename)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    final = shards_dir / _shard_name(shard.index)
    tmp = shards_dir / f"{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    env = TrqamMetaworldEnv(settings)
    policy = expert_policy(settings.task)
    records = []
    ds = LeRobotDataset.create(repo_id=repo_id, fps=FPS, features=dataset_features(settings.image_size),
                               root=tmp, robot_type="sawyer", use_videos=False)
    try:
        for spec in shard.episodes:
            ep = rollout_expert(env, policy, spec.noise, spec.seed, shard.hold_steps)
            for t in range(len(ep["action"])):
                ds.add_frame({"observation.image": ep["image"][t], "observation.state": ep["state"][t],
                              "action": ep["action"][t], "next.reward": ep["reward"][t:t + 1],
                              "next.done": ep["done"][t:t + 1], "next.success": ep["success"][t:t + 1],
                              "task": settings.task_description})
            ds.save_episode()
            records.append({"level": spec.level, "noise": spec.noise, "seed": spec.seed,
                            "frames": len(ep["action"]), "success": bool(ep["success"].any()),
                            "return": float(ep["reward"].sum())})
    finally:
        ds.finalize()
        env.close()
    summary = {"index": shard.index, "episodes": records, "seconds": time.perf_counter() - start}
    atomic_write_text(tmp / "meta" / SHARD_FILE, json.dumps(summary, indent=1))
    os.replace(tmp, final)
    return summary


def _write_shard_job(args: tuple[dict[str, Any], str, ShardSpec, str]) -> dict[str, Any]:
    settings, repo_id, shard, shards_dir = args
    return write_shard(EnvSettings.from_dict(settings), repo_id, shard, Path(shards_dir))


def _normalise_episodes(levels: dict[str, float], episodes_per_level: int | dict[str, int]) -> dict[str, int]:
    if not levels:
        raise ValueError("levels must name at least one noise level, e.g. {'better': 0.1}")
    for name, noise in levels.items():
        if not isinstance(name, str) or not name or not isinstance(noise, int | float) or not noise >= 0:
            raise ValueError(f"level {name!r}: noise must be a number >= 0, got {noise!r}")
    if isinstance(episodes_per_level, int):
        episodes = dict.fromkeys(levels, episodes_per_level)
    else:
        missing, extra = set(levels) - set(episodes_per_level), set(episodes_per_level) - set(levels)
        if missing or extra:
            raise ValueError(f"episodes_per_level keys must equal the levels {sorted(levels)}: "
                             f"missing {sorted(missing)}, extra {sorted(extra)}")
        episodes = {name: episodes_per_level[name] for name in levels}
    for name, n in episodes.items():
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < 10_000:
            raise ValueError(f"episodes for level {name!r} must be an int in [1, 9999], got {n!r}")
    return episodes


def _level_stats(records: list[dict[str, Any]], levels: dict[str, float]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, noise in levels.items():
        rows = [r for r in records if r["level"] == name]
        successes = sum(r["success"] for r in rows)
        out[name] = {"noise": noise, "episodes": len(rows), "frames": sum(r["frames"] for r in rows),
                     "successes": successes, "expert_success": successes / len(rows) if rows else 0.0}
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def _check_same(found: dict[str, Any], wanted: dict[str, Any], where: Path) -> None:
    if found != wanted:
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        detail = "; ".join(f"{k}: found {found.get(k)!r}, asked {wanted.get(k)!r}" for k in diff)
        raise ValueError(f"{where} was generated with different arguments ({detail}); use another root or "
                         f"delete it to regenerate")


def generate_dataset(settings: EnvSettings, root: Path, repo_id: str, levels: dict[str, float] | None = None,
                     episodes_per_level: int | dict[str, int] = DEFAULT_EPISODES_PER_LEVEL, seed: int = 0,
                     workers: int = 1, progress: bool = False, episodes_per_shard: int = 10,
                     post_success_steps: int = 0) -> dict[str, Any]:
    """Generate (or finish, or find) the demonstration dataset under ``root``; returns the generation record
    that is also stored as ``root/meta/trqam_generation.json`` (settings, levels, per-level episodes / frames
    / expert success, seconds). A finished dataset with the same arguments is returned as is; one generated
    with other arguments is refused. ``workers`` and ``episodes_per_shard`` do not change the data."""
    root = Path(root)
    levels = dict(DEFAULT_LEVELS if levels is None else levels)
    episodes = _normalise_episodes(levels, episodes_per_level)
    if not 0 <= seed < 2000:
        raise ValueError(f"seed must be in [0, 2000) (episode seeds must fit the seed scheme), got {seed}")
    if isinstance(post_success_steps, bool) or not isinstance(post_success_steps, int) or post_success_steps < 0:
        raise ValueError(f"post_success_steps must be an int >= 0, got {post_success_steps!r}")
    if workers < 1 or episodes_per_shard < 1:
        raise ValueError(f"workers and episodes_per_shard must be >= 1, got {workers}, {episodes_per_shard}")
    config = {"format": FORMAT_VERSION, "repo_id": repo_id, "settings": settings.to_dict(),
              "levels": {k: float(v) for k, v in levels.items()}, "episodes_per_level": episodes, "seed": seed,
              "episode_seed_base": EPISODE_SEED_BASE}
    if post_success_steps:  # only when used: datasets generated before the option keep their config
        config["post_success_steps"] = post_success_steps
    marker = root / "meta" / GENERATION_FILE
    if marker.is_file():
        record = _read_json(marker)
        _check_same(record.get("config", {}), config, marker)
        return record

    shards_dir = root / ".shards"
    plan_file = shards_dir / "plan.json"
    plan = {"config": config, "episodes_per_shard": episodes_per_shard}
    if plan_file.is_file():
        _check_same(_read_json(plan_file), plan, plan_file)
    elif root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists, is not empty and holds no trqam MetaWorld generation "
                         f"({plan_file} missing): pick an empty or new folder")
    shards_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan_file, json.dumps(plan, indent=1))
    start = time.perf_counter()

    shards = plan_shards(levels, episodes, seed, episodes_per_shard, post_success_steps)
    for stale in shards_dir.glob("shard-*.tmp*"):  # interrupted writes: redone below
        shutil.rmtree(stale, ignore_errors=True)
    todo = [s for s in shards if not (shards_dir / _shard_name(s.index) / "meta" / SHARD_FILE).is_file()]
    jobs = [(settings.to_dict(), repo_id, s, str(shards_dir)) for s in todo]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(shards), initial=len(shards) - len(todo), desc=f"{settings.task} shards")
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            _write_shard_job(job)
            if bar is not None:
                bar.update()
    else:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_write_shard_job, jobs):
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()

    summaries = [_read_json(shards_dir / _shard_name(s.index) / "meta" / SHARD_FILE) for s in shards]
    records = [r for s in summaries for r in s["episodes"]]
    _merge(shards_dir, [shards_dir / _shard_name(s.index) for s in shards], root, repo_id)
    record = {"config": config, "levels": _level_stats(records, levels), "episodes": len(records),
              "frames": sum(r["frames"] for r in records), "task_description": settings.task_description,
              "shard_seconds": sum(s["seconds"] for s in summaries), "seconds": time.perf_counter() - start,
              "per_episode": records}
    atomic_write_text(marker, json.dumps(record, indent=1))
    shutil.rmtree(shards_dir, ignore_errors=True)
    return record


def _merge(shards_dir: Path, shard_roots: list[Path], root: Path, repo_id: str) -> None:
    """Aggregate the shards into ``root/.shards/merged`` with LeRobot, then move its folders into ``root``.

    Anything a crashed earlier merge left in ``root`` is removed first (the dataset is not finished until the
    generation file exists, so nothing there is trusted)."""
    from lerobot.datasets.aggregate import aggregate_datasets

    merged = shards_dir / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    for child in root.iterdir():
        if child.name != shards_dir.name:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    aggregate_datasets(repo_ids=[repo_id] * len(shard_roots), aggr_repo_id=repo_id, roots=shard_roots,
                       aggr_root=merged)
    for child in sorted(merged.iterdir(), key=lambda p: p.name == "meta"):  # meta last
        os.replace(child, root / child.name)
