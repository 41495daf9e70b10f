"""`trqam bench`: time one full update of every method, count its matmul FLOPs, and report GEMM utilisation.

One update is exactly what the finetuner does per step, in a single process (``Finetuner.update``): the
method's loss (for TRQAM: critic TD loss, BC loss of the base, SDE rollout, terminal adjoint, lean adjoint,
adjoint-matching loss and path KL), backward, global grad-norm clip, Adam step and the method's after-step
hook (EMA target updates, the dual step).

FLOPs are *model* FLOPs: 2 per multiply-add of every matmul the update executes. For TRQAM and the QAM
variants that share its update (:data:`ANALYTIC`) they are derived from the code paths (:func:`analytic_flops`)
and checked against a count with ``torch.utils.flop_counter``'s formulas on one step; for every other method
(FQL, DSRL, IFQL, CGQL-Linex, QAM-E, plugins) they are that count, on one step (``flops_source``).
Utilisation = achieved GFLOP/s ÷ the fp32 GEMM peak measured in the same process with the same thread
count, so it is comparable across machines and robust to (most of) the noise of a shared one. Only matmuls
count, so time spent in GELU / LayerNorm / Adam / Python lowers utilisation.
"""

from __future__ import annotations

import platform
import shutil
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig
from trqam_sdk.data.transitions import Transitions
from trqam_sdk.networks import mlp as networks
from trqam_sdk.training.finetuner import Finetuner


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


ANALYTIC = ("trqam", "qam", "qam_ext_kl")
"""methods whose update is TRQAMAgent's code path, which :func:`analytic_flops` follows (QAM changes only Λ,
QAM + External KL adds λ·D̂: no matmul); every other method's FLOPs are counted"""


# -- problem construction ---------------------------------------------------------------------------------
@dataclass
class Problem:
    """A Finetuner and one fixed batch + noise of its own drawing: the update timed is the finetuner's own step
    (``Finetuner.update``: forward, backward, clip, all-reduce, Adam, EMA targets, dual)."""

    ft: Finetuner
    batch: dict[str, Any]
    noise: dict[str, Tensor]

    @property
    def agent(self) -> Any:
        return self.ft.agent

    @property
    def cfg(self) -> FinetuneConfig:
        return self.ft.cfg


def finetune_config(bc: BenchConfig, output_dir: str, method: str = "trqam") -> FinetuneConfig:
    """The benchmarked run's config: ``method`` with its default options, the sizes of ``bc``."""
    return FinetuneConfig(
        method=method, flow_steps=bc.flow_steps, batch_size=bc.batch, trackers=[], output_dir=output_dir,
        policy=PolicyConfig(width=bc.width, depth=bc.depth, layer_norm=bc.actor_layer_norm),
        critic=CriticConfig(num_critics=bc.num_critics, width=bc.width, depth=bc.depth,
                            layer_norm=bc.critic_layer_norm))


def random_transitions(obs_dim: int, action_dim: int, rows: int, episode: int, seed: int = 0) -> Transitions:
    """Random data of the benchmarked shapes (episodes of ``episode`` rows), for timing only."""
    g = torch.Generator().manual_seed(seed)
    terminals = torch.zeros(rows)
    terminals[episode - 1::episode] = 1.0
    return Transitions(observations=torch.randn(rows, obs_dim, generator=g),
                       actions=torch.rand(rows, action_dim, generator=g) * 2 - 1,
                       rewards=-torch.rand(rows, generator=g), masks=torch.ones(rows), terminals=terminals,
                       next_observations=torch.randn(rows, obs_dim, generator=g))


def build_problem(bc: BenchConfig, seed: int = 0, fused_adam: bool = False, output_dir: str | None = None,
                  method: str = "trqam") -> Problem:
    """A Finetuner of ``method`` (its own agent and Adam) on random data of the configured shapes, and step 0's
    batch. Without ``output_dir`` the run folder (the finetuner's config.json) is a temporary one, removed when
    the problem is garbage-collected."""
    torch.manual_seed(seed)
    out = output_dir or tempfile.mkdtemp(prefix="trqam-bench-")
    prior = MLPFlowPolicy(MLPPolicyConfig(bc.obs_dim, bc.horizon, bc.action_dim, bc.width, bc.depth,
                                          bc.actor_layer_norm))
    data = random_transitions(bc.obs_dim, bc.action_dim, rows=max(4 * bc.batch, 64), episode=32, seed=seed)
    try:
        ft = Finetuner(finetune_config(bc, out, method), prior, data)
    except BaseException:
        if output_dir is None:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if fused_adam:
        params = [p for p in ft.agent.parameters() if p.requires_grad]
        ft.optimizer = torch.optim.Adam(params, lr=ft.cfg.lr, fused=True)
    problem = build_problem_from(ft)
    if output_dir is None:
        weakref.finalize(problem, shutil.rmtree, out, True)
    return problem


def build_problem_from(ft: Finetuner) -> Problem:
    """Time ``ft``'s update on its step-0 batch and noise."""
    batch, noise = ft.shard(0)
    return Problem(ft, batch, noise)


def train_step(p: Problem) -> float:
    """One full update, exactly the finetuner's (``Finetuner.update``); returns the loss."""
    return p.ft.update(p.batch, p.noise)["train/loss"]


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
    """Matmul FLOPs of one call of ``step``, counted as ``torch.utils.flop_counter.FlopCounterMode`` counts them
    (its per-op formulas, ``flop_registry``) but without its module tracker: the tracker's backward hooks on
    module inputs break ``torch.autograd.grad`` with respect to a leaf input (CGQL's guidance ∇_x Q)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))
            return out

    compiled = networks.compile_enabled()
    networks.set_compile(False)  # count the eager ops: the compiled graphs run the very same matmuls
    try:
        with Count() as counter:
            step()
    finally:
        networks.set_compile(compiled)
    return counter.total


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
                 fused_adam: bool = False, method: str = "trqam") -> dict[str, Any]:
    """Warm up (this is where ``torch.compile`` compiles), then time ``steps`` updates of ``method``.

    FLOPs are analytic for :data:`ANALYTIC` methods (and, with ``count``, checked by FlopCounterMode on one
    extra step); every other method's are counted by FlopCounterMode on one extra step, ``count`` or not.
    The run folder is temporary and removed before returning.
    """
    with tempfile.TemporaryDirectory(prefix="trqam-bench-") as out:
        problem = build_problem(bc, fused_adam=fused_adam, output_dir=out, method=method)
        t0 = time.perf_counter()
        for _ in range(max(warmup, 1)):
            train_step(problem)
        warm_s = time.perf_counter() - t0
        times = []
        for _ in range(max(steps, 1)):
            t0 = time.perf_counter()
            train_step(problem)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        res: dict[str, Any] = {"method": method, "config": asdict(bc), "warmup_s": round(warm_s, 2),
                               "ms_per_step": ms, "ms_min": min(times) * 1e3,
                               "ms_all": [round(x * 1e3, 2) for x in times], "compiled": networks.compile_enabled()}
        if method in ANALYTIC:
            flops = analytic_flops(bc, problem.cfg.reference, problem.agent.reuse_rollout_velocity)
            res.update(flops_per_step=flops["total"], flops_breakdown=flops, flops_source="analytic")
            if count:
                res["flops_counted"] = counted_flops(lambda: train_step(problem))
                res["flops_rel_diff"] = res["flops_counted"] / flops["total"] - 1.0
        else:
            res["flops_counted"] = res["flops_per_step"] = counted_flops(lambda: train_step(problem))
            res["flops_source"] = "counted"
        res["gflops_per_s"] = res["flops_per_step"] / (ms * 1e-3) / 1e9
    return res


def run_bench(configs: list[str], steps: int, warmup: int, threads: int | None = None,
              count: bool = True, compile: bool = True, fused_adam: bool = False,
              methods: list[str] | None = None) -> dict[str, Any]:
    """The whole benchmark: the GEMM peak (best of before and after), then each (config, method):
    ``out[config][method]`` is one row; ``methods`` (default ``["trqam"]``; ``all`` expands to every registered
    fine-tuning method in Table 1 order) is checked before any timing.

    ``compile`` routes the MLP / ensemble forwards through ``torch.compile`` (falls back to eager for the rest,
    and says so under ``compile_error``, if compilation fails). ``fused_adam`` swaps in ``Adam(fused=True)``
    instead of the finetuner's default Adam. A method whose update fails gets ``{"error": ...}`` as its row.
    """
    from trqam_sdk.benchmarks.sweep import expand_methods

    for name in configs:
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    chosen = expand_methods(methods, prior=False) or ["trqam"]
    if threads:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    was = networks.compile_enabled()
    networks.set_compile(compile)
    try:
        peak = gemm_peak_gflops()
        for name in configs:
            out[name] = {m: _bench_one(out, CONFIGS[name], steps, warmup, count, fused_adam, m) for m in chosen}
        peak = max(peak, gemm_peak_gflops())
        out.update(compile=networks.compile_enabled(), fused_adam=fused_adam)
    finally:
        networks.set_compile(was)
    for name in configs:
        for row in out[name].values():
            if "gflops_per_s" in row:
                row["utilization"] = row["gflops_per_s"] / peak
    out.update(methods=chosen, peak_gflops=peak, threads=torch.get_num_threads(), torch=torch.__version__,
               cpu=platform.processor() or platform.machine(), load_avg=_load_avg())
    return out


def _bench_one(out: dict[str, Any], bc: BenchConfig, steps: int, warmup: int, count: bool, fused_adam: bool,
               method: str) -> dict[str, Any]:
    """One row. A failure under ``torch.compile`` is retried eagerly: if that works, compilation was at fault
    (inductor needs a C++ compiler) and the rest of the run stays eager (``compile_error``); if it fails too,
    the row is the method's ``error`` — one method never loses the benchmark."""
    try:
        return bench_config(bc, steps, warmup, count, fused_adam, method)
    except Exception as err:
        if not networks.compile_enabled():
            return {"method": method, "error": f"{type(err).__name__}: {err}"[:500]}
        networks.set_compile(False)
        try:
            row = bench_config(bc, steps, warmup, count, fused_adam, method)
        except Exception as eager:
            networks.set_compile(True)
            return {"method": method, "error": f"{type(eager).__name__}: {eager}"[:500]}
        out["compile_error"] = f"{type(err).__name__}: {err}"[:500]
        return row


def _load_avg() -> list[float] | None:
    """1/5/15-minute load averages (the machine may be shared), where the OS reports them."""
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None
