"""`trqam bench`: time one full TRQAM update, count its matmul FLOPs, and report GEMM utilisation.

One update is exactly what the finetuner does per step, in a single process: ``TRQAMAgent.forward``
(critic TD loss, BC loss of the base, SDE rollout, terminal adjoint, lean adjoint, adjoint-matching loss
and path KL), backward, global grad-norm clip, Adam step, EMA target updates and the dual step.

FLOPs are *model* FLOPs: 2 per multiply-add of every matmul the update executes, derived analytically
from the code paths (:func:`analytic_flops`) and checked against ``torch.utils.flop_counter`` on one
step. Utilisation = achieved GFLOP/s ÷ the fp32 GEMM peak measured in the same process with the same
thread count, so it is comparable across machines and robust to (most of) the noise of a shared one.
Only matmuls count, so time spent in GELU / LayerNorm / Adam / Python lowers utilisation.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig
from trqam_sdk.methods.trqam import TRQAMAgent
from trqam_sdk.networks import mlp as networks
from trqam_sdk.networks.mlp import QEnsemble


@dataclass(frozen=True)
class BenchConfig:
    """Problem size of one benchmarked update (critic uses the same width/depth as the actor)."""

    batch: int
    width: int
    depth: int
    num_critics: int
    flow_steps: int = 10
    horizon: int = 5
    action_dim: int = 5
    obs_dim: int = 40
    actor_layer_norm: bool = False
    critic_layer_norm: bool = True


CONFIGS: dict[str, BenchConfig] = {
    "paper": BenchConfig(batch=256, width=512, depth=4, num_critics=10),
    "small": BenchConfig(batch=64, width=128, depth=4, num_critics=2),
    "tiny": BenchConfig(batch=8, width=32, depth=2, num_critics=2, flow_steps=3),
}


# -- problem construction ---------------------------------------------------------------------------------
@dataclass
class Problem:
    """An agent, its optimiser and one fixed batch + noise (the update is timed on the same inputs)."""

    agent: TRQAMAgent
    optimizer: torch.optim.Optimizer
    params: list[Tensor]
    batch: dict[str, Tensor]
    noise: dict[str, Tensor]
    cfg: FinetuneConfig


def finetune_config(bc: BenchConfig) -> FinetuneConfig:
    return FinetuneConfig(
        flow_steps=bc.flow_steps, batch_size=bc.batch, trackers=[],
        policy=PolicyConfig(width=bc.width, depth=bc.depth, layer_norm=bc.actor_layer_norm),
        critic=CriticConfig(num_critics=bc.num_critics, width=bc.width, depth=bc.depth,
                            layer_norm=bc.critic_layer_norm))


def build_problem(bc: BenchConfig, seed: int = 0, fused_adam: bool = False) -> Problem:
    """The finetuner's agent and Adam (same construction) on random data of the configured shapes."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = finetune_config(bc)
    prior = MLPFlowPolicy(MLPPolicyConfig(bc.obs_dim, bc.horizon, bc.action_dim, bc.width, bc.depth,
                                          bc.actor_layer_norm))
    critic = QEnsemble(bc.obs_dim, bc.horizon * bc.action_dim, bc.num_critics, bc.width, bc.depth,
                       bc.critic_layer_norm)
    agent = TRQAMAgent(copy.deepcopy(prior), copy.deepcopy(prior), critic, cfg)
    params = [p for p in agent.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=fused_adam or None,
                                 foreach=None if fused_adam else True)
    b, h, a, o = bc.batch, bc.horizon, bc.action_dim, bc.obs_dim
    batch = {"observations": torch.randn(b, o, generator=g),
             "actions": torch.rand(b, h, a, generator=g) * 2 - 1,
             "rewards": -torch.rand(b, h, generator=g), "masks": torch.ones(b), "valid": torch.ones(b),
             "valid_steps": torch.ones(b, h), "next_observations": torch.randn(b, o, generator=g)}
    noise = {k: torch.randn(s, generator=g) for k, s in agent.noise_shapes(b).items() if k != "bc_t"}
    noise["bc_t"] = torch.rand(b, generator=g)
    return Problem(agent, optimizer, params, batch, noise, cfg)


def train_step(p: Problem) -> float:
    """One full update, as ``Finetuner.train_step`` does it; returns the loss."""
    loss, kl, _ = p.agent(p.batch, p.noise)
    p.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(p.params, p.cfg.grad_clip)
    p.optimizer.step()
    p.agent.update_targets()
    p.agent.dual_step(float(kl), p.cfg.trust_region.kl_budget)
    return float(loss.detach())


# -- FLOP accounting --------------------------------------------------------------------------------------
def _layer_macs(in_dim: int, width: int, depth: int, out_dim: int) -> list[int]:
    dims = [in_dim] + [width] * depth + [out_dim]
    return [a * b for a, b in zip(dims[:-1], dims[1:], strict=True)]


def _pass(layers: list[int], rows: int, *, wgrad: bool = False, igrad: bool = False,
          igrad_first: bool = False) -> int:
    """FLOPs of one MLP evaluation on ``rows`` rows: forward, plus the backward matmuls actually formed.

    ``wgrad``: weight gradients of every layer; ``igrad``: input gradients of layers 2..L (through the
    hidden activations); ``igrad_first``: also the first layer's input gradient (its input requires grad).
    """
    macs = sum(layers)
    if wgrad:
        macs += sum(layers)
    if igrad:
        macs += sum(layers[1:]) + (layers[0] if igrad_first else 0)
    return 2 * rows * macs


def analytic_flops(bc: BenchConfig, reference: str = "ema", reuse_rollout: bool = True) -> dict[str, int]:
    """Matmul FLOPs of one update by component, following the code paths of ``TRQAMAgent.forward``.

    - critic TD: T no-grad actor steps at s' (ODE), a no-grad target-critic pass, the critic with
      weight grads and hidden input grads (its inputs are data);
    - BC: the base with weight grads and hidden input grads (x_t, t are data);
    - SDE rollout (``reuse_rollout``, the default ``TRQAMAgent.reuse_rollout_velocity``): T v_θ passes
      kept with grad for the loss (the T-th at x_{T-1} is not stepped with) — their backward forms weight
      grads and hidden input grads only, x_i being data — plus one no-grad reference pass (last step);
    - terminal adjoint: the target critic with input grads only, first layer included (x requires grad);
    - lean adjoint: T reference VJPs, input grads only, first layer included;
    - loss: the reference at x_0..x_{T-2} batched (no grad; its value at x_{T-1} is the rollout's last
      step). Without ``reuse_rollout`` the rollout is T no-grad passes and the loss re-evaluates v_θ (with
      grad) and the reference on all T·B rows.
    """
    b, t, w, d = bc.batch, bc.flow_steps, bc.width, bc.depth
    flat = bc.horizon * bc.action_dim
    actor = _layer_macs(bc.obs_dim + flat + 1, w, d, flat)
    critic = [bc.num_critics * m for m in _layer_macs(bc.obs_dim + flat, w, d, 1)]
    out = {
        "critic_target_ode": t * _pass(actor, b),
        "critic_target_q": _pass(critic, b),
        "critic_loss": _pass(critic, b, wgrad=True, igrad=True),
        "bc_loss": _pass(actor, b, wgrad=True, igrad=True) if reference == "ema" else 0,
        "sde_rollout": (_pass(actor, t * b, wgrad=True, igrad=True) if reuse_rollout else
                        _pass(actor, (t - 1) * b)) + _pass(actor, b),
        "terminal_adjoint": _pass(critic, b, igrad=True, igrad_first=True),
        "lean_adjoint": t * _pass(actor, b, igrad=True, igrad_first=True),
        "adjoint_loss": (_pass(actor, (t - 1) * b) if reuse_rollout else
                         _pass(actor, t * b, wgrad=True, igrad=True) + _pass(actor, t * b)),
    }
    out["total"] = sum(out.values())
    return out


def counted_flops(step: Callable[[], Any]) -> int:
    """Matmul FLOPs of one call of ``step`` as counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    compiled = networks.compile_enabled()
    networks.set_compile(False)  # count the eager ops: the compiled graphs run the very same matmuls
    try:
        with counter:
            step()
    finally:
        networks.set_compile(compiled)
    return int(counter.get_total_flops())


def gemm_peak_gflops(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """Best fp32 GEMM throughput (GFLOP/s) over square sgemms, with the current thread count."""
    best = 0.0
    for n in sizes:
        a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.mm(a, b, out=c)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            best = max(best, 2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


# -- the benchmark ----------------------------------------------------------------------------------------
def bench_config(bc: BenchConfig, steps: int, warmup: int, count: bool = True,
                 fused_adam: bool = False) -> dict[str, Any]:
    """Warm up (this is where ``torch.compile`` compiles), then time ``steps`` updates.

    FLOPs are analytic and (optionally) counted by FlopCounterMode on one extra step.
    """
    problem = build_problem(bc, fused_adam=fused_adam)
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        train_step(problem)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(problem)
        times.append(time.perf_counter() - t0)
    flops = analytic_flops(bc, problem.cfg.reference, problem.agent.reuse_rollout_velocity)
    ms = statistics.median(times) * 1e3
    res: dict[str, Any] = {
        "config": asdict(bc), "warmup_s": round(warm_s, 2),
        "ms_per_step": ms, "ms_min": min(times) * 1e3, "ms_all": [round(x * 1e3, 2) for x in times],
        "flops_per_step": flops["total"], "flops_breakdown": flops,
        "gflops_per_s": flops["total"] / (ms * 1e-3) / 1e9,
    }
    if count:
        res["flops_counted"] = counted_flops(lambda: train_step(problem))
        res["flops_rel_diff"] = res["flops_counted"] / flops["total"] - 1.0
    return res


def run_bench(configs: list[str], steps: int, warmup: int, threads: int | None = None,
              count: bool = True, compile: bool = True, fused_adam: bool = False) -> dict[str, Any]:
    """The whole benchmark: the GEMM peak (best of before and after), then each config.

    ``compile`` routes the MLP / ensemble forwards through ``torch.compile`` (falls back to eager, and
    says so under ``compile_error``, if compilation fails). ``fused_adam`` swaps in ``Adam(fused=True)``
    instead of the finetuner's default Adam.
    """
    for name in configs:
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    if threads:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    was = networks.compile_enabled()
    networks.set_compile(compile)
    try:
        peak = gemm_peak_gflops()
        for name in configs:
            try:
                out[name] = bench_config(CONFIGS[name], steps, warmup, count, fused_adam)
            except Exception as err:  # inductor needs a C++ compiler; never lose the benchmark to it
                if not networks.compile_enabled():
                    raise
                networks.set_compile(False)
                out["compile_error"] = f"{type(err).__name__}: {err}"[:500]
                out[name] = bench_config(CONFIGS[name], steps, warmup, count, fused_adam)
        peak = max(peak, gemm_peak_gflops())
        out.update(compile=networks.compile_enabled(), fused_adam=fused_adam)
    finally:
        networks.set_compile(was)
    for name in configs:
        out[name]["utilization"] = out[name]["gflops_per_s"] / peak
    out.update(peak_gflops=peak, threads=torch.get_num_threads(), torch=torch.__version__,
               cpu=platform.processor() or platform.machine(), load_avg=_load_avg())
    return out


def _load_avg() -> list[float] | None:
    """1/5/15-minute load averages (the machine may be shared), where the OS reports them."""
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", type=int, default=7, help="timed updates per config (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--configs", default="paper,small", help=f"comma list of {sorted(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-count", action="store_true", help="skip the FlopCounterMode check")
    parser.add_argument("--no-compile", action="store_true",
                        help="eager MLP/ensemble forwards (default: torch.compile, as TRQAM_COMPILE=1 does)")
    parser.add_argument("--fused-adam", action="store_true",
                        help="Adam(fused=True) instead of the finetuner's default (foreach) Adam")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = run_bench([c.strip() for c in args.configs.split(",") if c.strip()], args.steps, args.warmup,
                    args.threads or None, not args.no_count, not args.no_compile, args.fused_adam)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"torch {res['torch']}, {res['threads']} threads, compile={res['compile']}, "
          f"fp32 GEMM peak {res['peak_gflops']:.1f} GFLOP/s, load {res['load_avg']}")
    print(f"{'config':<8} {'ms/step':>9} {'GFLOP/step':>11} {'counted':>9} {'GFLOP/s':>9} {'util':>6}")
    for name, r in res.items():
        if isinstance(r, dict) and "ms_per_step" in r:
            counted = f"{r['flops_counted'] / 1e9:9.3f}" if "flops_counted" in r else f"{'-':>9}"
            print(f"{name:<8} {r['ms_per_step']:9.1f} {r['flops_per_step'] / 1e9:11.3f} {counted} "
                  f"{r['gflops_per_s']:9.1f} {r['utilization']:6.3f}")
    return 0
