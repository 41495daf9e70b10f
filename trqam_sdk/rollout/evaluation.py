"""Success-rate evaluation of a chunked policy in any env built by a benchmark's env factory.

The policy is called once per chunk and the whole chunk is executed open-loop, as in the paper (the loop is
:func:`trqam_sdk.rollout.episode.run_episode`). Episodes run in a small spawn-started process pool (one env per
worker, torch limited to one thread each), so two cores evaluate two episodes at once; ``workers=1`` runs
in-process. Every result carries its episode count, success count and 95 % Wilson interval.

The env factory and the policy reach the workers as one plain ``pickle`` payload (tensors by value): torch's
multiprocessing pickler would hand them over as shared-memory file descriptors, which failed to rebuild for
LeRobot VLAs. An error while a worker builds its env (a wrong image size, a missing checkpoint) is re-raised in
the caller with its message, and a crashed worker fails the evaluation (``BrokenProcessPool``), never hangs it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from trqam_sdk.methods.base import AgentActor, FlowActor
from trqam_sdk.rollout.episode import ActFn, EnvFactory, run_episode
from trqam_sdk.rollout.stats import wilson_interval

__all__ = ["AgentActor", "FlowActor", "episode_seeds", "evaluate", "summarize"]


_WORKER: dict[str, Any] = {}


def _init_worker(payload: bytes) -> None:
    torch.set_num_threads(1)
    try:
        env_factory, act_fn = pickle.loads(payload)
        _WORKER["env"] = env_factory()
        _WORKER["act_fn"] = act_fn
    except Exception as err:  # re-raised by every episode: a failing initializer would only break the pool
        _WORKER["error"] = err


def _worker_episode(seed: int) -> dict[str, float]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return run_episode(_WORKER["env"], _WORKER["act_fn"], seed)


def episode_seeds(seed: int, episodes: int) -> list[int]:
    """Env seeds of an evaluation: ``100000 seed + i``, whatever the worker count, so every policy evaluated
    with the same ``seed`` meets the same initial states (a paired comparison)."""
    return [seed * 100_000 + i for i in range(episodes)]


def summarize(results: list[dict[str, float]]) -> dict[str, float]:
    """Per-episode results -> success rate with its count and 95 % Wilson interval, mean return and length."""
    if not results:
        raise ValueError("no episodes to summarise")
    successes = int(sum(r["success"] > 0 for r in results))
    lo, hi = wilson_interval(successes, len(results))
    return {
        "success_rate": successes / len(results),
        "successes": float(successes),
        "episodes": float(len(results)),
        "ci95_low": lo,
        "ci95_high": hi,
        "mean_return": float(np.mean([r["return"] for r in results])),
        "mean_length": float(np.mean([r["length"] for r in results])),
    }


def evaluate(act_fn: ActFn, env_factory: EnvFactory, episodes: int = 10, seed: int = 0, workers: int | None = None,
             progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Success over ``episodes`` seeded episodes in envs from ``env_factory`` (see :func:`summarize`).

    ``env_factory`` and ``act_fn`` must be picklable when ``workers > 1`` (e.g. :class:`FlowActor` and a
    benchmark's factory dataclass); the env follows the gymnasium reset/step API and reports ``info["success"]``.
    Its observations may be vectors or dicts (a VLA's rows: ``integrations.lerobot.policy_env.PolicyEnvFactory``).
    """
    from tqdm.auto import tqdm

    if not callable(env_factory):
        raise TypeError(f"env_factory must be a zero-argument callable that builds an env, got {env_factory!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    seeds = episode_seeds(seed, episodes)
    workers = max(1, min(workers or os.cpu_count() or 1, episodes))
    results: list[dict[str, float]] = []
    bar = tqdm(total=episodes, desc=desc, unit="ep", disable=not progress)

    def add(r: dict[str, float]) -> None:
        results.append(r)
        bar.update(1)
        bar.set_postfix(success=f"{np.mean([x['success'] for x in results]):.2f}")

    if workers == 1:
        env = env_factory()
        try:
            for s in seeds:
                add(run_episode(env, act_fn, s))
        finally:
            env.close()
    else:
        payload = pickle.dumps((env_factory, act_fn))
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(payload,)) as pool:
            for r in pool.map(_worker_episode, seeds):
                add(r)
    bar.close()
    return summarize(results)
