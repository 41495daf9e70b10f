"""`trqam lerobot-bench`: one TRQAM update vs sampling one action chunk, for tiny LeRobot VLAs.

Both are timed in the same process on one thread (median of repeats); the ratio is what to compare across
machines. The update is broken down by wrapping the agent's pieces with timers: the prefix (every
``condition``), the critic's target ODE sample at s', the controlled SDE rollout (v_θ with graph), the lean
adjoint's VJPs through the reference, the critic networks (TD loss and ∇_a Q), the backward pass and the
optimiser step; "other" is the rest of the forward (reference velocities on the trajectory, the losses), and
the backward entry is the rest of the update (backward, grad clip, EMA targets, dual step).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _timed(fn: Callable[..., Any], log: dict[str, float], key: str) -> Callable[..., Any]:
    def wrapped(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        log[key] += time.perf_counter() - t0
        return out
    return wrapped


def bench_kind(kind: str, batch: int, flow_steps: int, chunk: int, image: int, repeats: int) -> dict[str, Any]:
    """Median sample / update times (ms), their ratio, and the update's breakdown (ms)."""
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS
    from trqam_sdk.config import CriticConfig, FinetuneConfig
    from trqam_sdk.data.transitions import Transitions
    from trqam_sdk.methods import trqam as trqam_mod
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.profiling.bench import build_problem_from, train_step
    from trqam_sdk.testing.tiny_lerobot import IMAGE_KEY, build_tiny_lerobot
    from trqam_sdk.training.finetuner import Finetuner

    with tempfile.TemporaryDirectory() as tmp:
        policy, pre, post = build_tiny_lerobot(kind, Path(tmp), chunk_size=chunk, image_size=image)
    adapter = LEROBOT_ADAPTERS[kind](policy, pre, post)
    g = torch.Generator().manual_seed(0)

    def obs(n: int) -> dict[str, torch.Tensor]:
        raw = {IMAGE_KEY: torch.rand(n, 3, image, image, generator=g),
               "observation.state": torch.randn(n, 4, generator=g), "task": ["pick the cube"] * n}
        return {k: v for k, v in pre(raw).items() if k.startswith("observation.") and isinstance(v, torch.Tensor)}

    h, a = adapter.spec.horizon, adapter.spec.action_dim
    rows = max(2 * batch, 8, h + 1)  # one episode in which every chunk fits
    o, o_next = obs(rows), obs(rows)
    terminals = torch.zeros(rows)
    terminals[-1] = 1.0
    data = Transitions(observations=o, actions=torch.rand(rows, a, generator=g) * 2 - 1,
                       rewards=torch.randn(rows, generator=g), masks=torch.ones(rows), terminals=terminals,
                       next_observations=o_next)
    cfg = FinetuneConfig(flow_steps=flow_steps, batch_size=batch, reference="frozen", trackers=[],
                         output_dir=tempfile.mkdtemp(prefix="trqam-lerobot-bench-"),
                         critic=CriticConfig(num_critics=2, width=128, depth=2))
    # the update timed is the finetuner's own step (clip, Adam, EMA targets, dual), as in `trqam bench`
    problem = build_problem_from(Finetuner(cfg, adapter, data, critic=vla_critic(adapter, 2, 128, 2)))
    agent = problem.agent
    batch_data = problem.batch

    def sample() -> None:
        agent.act(batch_data["observations"], torch.Generator().manual_seed(1))

    parts: dict[str, float] = defaultdict(float)
    originals = {name: getattr(trqam_mod, name) for name in
                 ("sample_ode", "sample_memoryless_tracked", "lean_adjoint", "terminal_adjoint")}
    labels = {"sample_ode": "critic_target_ode", "sample_memoryless_tracked": "sde_rollout",
              "lean_adjoint": "adjoint_vjps", "terminal_adjoint": "critic_nets"}

    def update() -> None:
        train_step(problem)

    agent.forward = _timed(agent.forward, parts, "forward")
    problem.ft.optimizer.step = _timed(problem.ft.optimizer.step, parts, "optimizer")
    for name, fn in originals.items():
        setattr(trqam_mod, name, _timed(fn, parts, labels[name]))
    for model in (agent.actor, agent.ref, agent.base):
        model.condition = _timed(model.condition, parts, "prefix")
    agent.critic.forward = _timed(agent.critic.forward, parts, "critic_nets")
    try:
        sample(), update()  # warm-up
        sample_ms, update_ms = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sample()
            sample_ms.append(1e3 * (time.perf_counter() - t0))
        parts.clear()
        for _ in range(repeats):
            t0 = time.perf_counter()
            update()
            update_ms.append(1e3 * (time.perf_counter() - t0))
    finally:
        for name, fn in originals.items():
            setattr(trqam_mod, name, fn)
    breakdown = {k: 1e3 * v / repeats for k, v in parts.items()}
    fwd, opt_ms = breakdown.pop("forward"), breakdown["optimizer"]
    breakdown["other_forward"] = fwd - sum(v for k, v in breakdown.items() if k != "optimizer")
    breakdown["backward_clip_targets_dual"] = statistics.fmean(update_ms) - fwd - opt_ms
    s, u = statistics.median(sample_ms), statistics.median(update_ms)
    return {"kind": kind, "sample_ms": round(s, 2), "update_ms": round(u, 2), "ratio": round(u / s, 2),
            "breakdown_ms": {k: round(v, 2) for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])},
            "batch": batch, "flow_steps": flow_steps, "chunk": [h, a], "image": image}
