"""Success-rate evaluation of a chunked policy in an OGBench singletask env (SPEC §6).

The policy is called once per chunk and the whole chunk is executed open-loop, as in the paper. Episodes
run in a small spawn-started process pool (one env per worker, torch limited to one thread each), so two
cores evaluate two episodes at once; ``workers=1`` runs in-process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trqam_sdk.adapters.base import FlowPolicy

ActFn = Callable[[Tensor], Tensor]
"""obs (1, O) float32 -> action chunk (1, H, A) in [-1, 1]"""


class FlowActor:
    """Picklable evaluation policy: Euler ODE sample of a flow policy, clipped to its box (= TRQAMAgent.act).

    Passing this (rather than a bound method of the agent) ships only the actor weights to the workers.
    """

    def __init__(self, policy: FlowPolicy, flow_steps: int = 10, seed: int = 0):
        self.policy, self.flow_steps, self.seed = policy.eval(), flow_steps, seed
        self.generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, obs: Tensor) -> Tensor:
        return self.policy.sample(obs, self.flow_steps, self.generator)


def run_episode(env: Any, act_fn: ActFn, seed: int) -> dict[str, float]:
    """One episode; success is ``info['success']`` of the last step (the env terminates at the goal)."""
    if hasattr(act_fn, "reseed"):
        act_fn.reseed(seed)
    ob, info = env.reset(seed=seed)
    done, success, ret, length = False, 0.0, 0.0, 0
    while not done:
        chunk = act_fn(torch.as_tensor(np.asarray(ob, dtype=np.float32))[None])
        chunk = np.asarray(chunk.detach().cpu().numpy() if isinstance(chunk, Tensor) else chunk)
        if chunk.ndim != 3 or chunk.shape[0] != 1:
            raise ValueError(f"act_fn must return a (1, H, A) chunk, got shape {chunk.shape}")
        for action in chunk[0]:
            ob, reward, terminated, truncated, info = env.step(np.clip(action, -1.0, 1.0))
            ret, length = ret + float(reward), length + 1
            success = max(success, float(info.get("success", 0.0)))
            done = terminated or truncated
            if done:
                break
    return {"success": success, "return": ret, "length": float(length)}


_WORKER: dict[str, Any] = {}


def _init_worker(env_name: str, act_fn: ActFn, env_kwargs: dict[str, Any],
                 env_factory: Callable[[], Any] | None = None) -> None:
    torch.set_num_threads(1)
    _WORKER["env"] = env_factory() if env_factory is not None else _make_env(env_name, env_kwargs)
    _WORKER["act_fn"] = act_fn


def _worker_episode(seed: int) -> dict[str, float]:
    return run_episode(_WORKER["env"], _WORKER["act_fn"], seed)


def _make_env(env_name: str, env_kwargs: dict[str, Any]) -> Any:
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    return gymnasium.make(env_name, **env_kwargs)


def evaluate(
    act_fn: ActFn,
    env_name: str = "cube-single-singletask-task1-v0",
    episodes: int = 10,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    env_factory: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Mean success rate (and return, length) over ``episodes`` seeded episodes.

    ``act_fn`` must be picklable when ``workers > 1`` (e.g. :class:`FlowActor`). Episode ``i`` uses env
    seed ``100000 seed + i`` whatever the worker count, so results do not depend on how the pool splits them.
    ``env_factory`` (picklable, e.g. robomimic_env.RobomimicEnvFactory) builds a non-OGBench env instead;
    it must follow the gymnasium reset/step API and report ``info["success"]``.
    """
    from tqdm.auto import tqdm

    env_kwargs = dict(env_kwargs or {})
    seeds = [seed * 100_000 + i for i in range(episodes)]
    workers = max(1, min(workers or os.cpu_count() or 1, episodes))
    results: list[dict[str, float]] = []
    bar = tqdm(total=episodes, desc=f"eval {env_name}", unit="ep", disable=not progress)
    if workers == 1:
        env = env_factory() if env_factory is not None else _make_env(env_name, env_kwargs)
        for s in seeds:
            results.append(run_episode(env, act_fn, s))
            bar.update(1)
            bar.set_postfix(success=f"{np.mean([x['success'] for x in results]):.2f}")
        env.close()
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(env_name, act_fn, env_kwargs, env_factory)) as pool:
            for r in pool.imap(_worker_episode, seeds):
                results.append(r)
                bar.update(1)
                bar.set_postfix(success=f"{np.mean([x['success'] for x in results]):.2f}")
    bar.close()
    return {
        "success_rate": float(np.mean([r["success"] for r in results])),
        "mean_return": float(np.mean([r["return"] for r in results])),
        "mean_length": float(np.mean([r["length"] for r in results])),
        "episodes": float(episodes),
    }
