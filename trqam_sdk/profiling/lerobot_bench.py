"""`trqam lerobot-bench`: one TRQAM update vs sampling one action chunk, for LeRobot VLAs, tiny or real size.

Both are timed in the same process on one thread (median of repeats); the ratio is what to compare across
machines. The update is broken down by wrapping the agent's pieces with timers: the prefix (every
``condition``), the critic's target ODE sample at s', the controlled SDE rollout (v_θ with graph), the lean
adjoint's VJPs through the reference, the critic networks (TD loss and ∇_a Q), the backward pass and the
optimiser step; "other" is the rest of the forward (reference velocities on the trajectory, the losses), and
the backward entry is the rest of the update (backward, grad clip, EMA targets, dual step).

Beside the times: prefix / expert pass counts per sample and per update, the peak RSS growth of one sample and
one update (and the live-tensor peak of the same, :func:`trqam_sdk.profiling.memory.measure_peak`), parameter
counts, the meta-tensor memory estimate at other batch sizes (:mod:`trqam_sdk.profiling.memory`) and, on
request, the on-disk size of one training checkpoint against the policy alone.

Real-size models are random-weight builds of the released shapes (:mod:`trqam_sdk.testing.real_size`).
"""

from __future__ import annotations

import inspect
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

GIB = 2**30


def _timed(fn: Callable[..., Any], log: dict[str, float], key: str) -> Callable[..., Any]:
    def wrapped(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        log[key] += time.perf_counter() - t0
        return out
    return wrapped


def adapter_options(cls: type, *, lora_rank: int = 0, vlm_dtype: str | None = None,
                    checkpointing: bool = False) -> dict[str, Any]:
    """The keyword options of a LeRobot adapter constructor that ``cls`` accepts (feature-detected, so the
    command works with and without the memory options); asking for one it lacks is an error."""
    params = inspect.signature(cls.__init__).parameters
    wanted = {"lora_rank": lora_rank, "vlm_dtype": vlm_dtype, "gradient_checkpointing": checkpointing}
    defaults = {"lora_rank": 0, "vlm_dtype": None, "gradient_checkpointing": False}
    out = {}
    for name, value in wanted.items():
        if name in params:
            if value is not None:
                out[name] = value
        elif value not in (defaults[name], "float32"):
            raise ValueError(f"{cls.__name__} has no {name!r} option (this SDK version does not support it)")
    return out


def _unique_numel(module: torch.nn.Module, trainable: bool | None = None) -> int:
    seen: dict[int, int] = {}
    for p in module.parameters():
        if trainable is None or p.requires_grad == trainable:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


@contextmanager
def _passes(agent: Any) -> Iterator[dict[str, Any]]:
    """Pass counts inside the block (``trqam_sdk.profiling.passes.count_passes``, by model dropped)."""
    from trqam_sdk.profiling.passes import count_passes

    with count_passes(agent) as n:
        yield n


def _observations(adapter: Any, pre: Any, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` pre-processed random observations (every camera at the configured resolution, the state)."""
    feats = adapter.policy.config.input_features
    raw: dict[str, Any] = {k: torch.rand(n, *feats[k].shape, generator=g) for k in adapter.image_keys}
    if adapter.state_dim:
        raw["observation.state"] = torch.randn(n, adapter.state_dim, generator=g)
    raw["task"] = ["pick the cube"] * n
    return {k: v for k, v in pre(raw).items() if k.startswith("observation.") and isinstance(v, torch.Tensor)}


def _transitions(adapter: Any, pre: Any, rows: int) -> Any:
    """One random episode of ``rows`` pre-processed transitions (ends in a terminal)."""
    from trqam_sdk.data.transitions import Transitions

    g = torch.Generator().manual_seed(0)
    terminals = torch.zeros(rows)
    terminals[-1] = 1.0
    return Transitions(observations=_observations(adapter, pre, rows, g),
                       actions=torch.rand(rows, adapter.spec.action_dim, generator=g) * 2 - 1,
                       rewards=torch.randn(rows, generator=g), masks=torch.ones(rows), terminals=terminals,
                       next_observations=_observations(adapter, pre, rows, g))


def bench_config(batch: int, flow_steps: int, reference: str, output_dir: str) -> Any:
    """The benchmarked run's FinetuneConfig (the critic of ``vla_critic(adapter, 2, 128, 2)``)."""
    from trqam_sdk.config import CriticConfig, FinetuneConfig

    return FinetuneConfig(flow_steps=flow_steps, batch_size=batch, reference=reference, trackers=[],
                          output_dir=output_dir, critic=CriticConfig(num_critics=2, width=128, depth=2))


def estimate_only(kind: str, flow_steps: int, chunk: int, image: int | None, *, size: str = "real",
                  n_images: int = 1, reference: str = "frozen", lora_rank: int = 0, vlm_dtype: str | None = None,
                  checkpointing: bool = False, estimate_batches: Sequence[int] = (1,)) -> dict[str, Any]:
    """Only the meta-tensor memory estimates (nothing real is built: any size fits, pi0 included)."""
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS

    options = adapter_options(LEROBOT_ADAPTERS[kind], lora_rank=lora_rank, vlm_dtype=vlm_dtype,
                              checkpointing=checkpointing)
    with tempfile.TemporaryDirectory(prefix="trqam-lerobot-estimate-") as tmp:
        cfg = bench_config(max(estimate_batches), flow_steps, reference, str(Path(tmp) / "run"))
        est = estimate_kind(kind, Path(tmp) / "meta", size, chunk, image, n_images, cfg, options, estimate_batches)
    return {"kind": kind, "size": size, "flow_steps": flow_steps, "chunk": chunk, "n_images": n_images,
            "reference": reference, "options": options, "estimate": est}


def _build(kind: str, root: Path, size: str, chunk: int, image: int | None, n_images: int,
           device: str = "cpu") -> tuple[Any, Any, Any]:
    from trqam_sdk.testing.real_size import build_lerobot

    if size == "tiny":
        return build_lerobot(kind, root, "tiny", chunk_size=chunk, state_dim=4, action_dim=3, image_size=image or 64)
    return build_lerobot(kind, root, "real", device=device, chunk_size=chunk, image_size=image, n_images=n_images)


def bench_kind(kind: str, batch: int, flow_steps: int, chunk: int, image: int | None, repeats: int, *,
               size: str = "tiny", n_images: int = 1, reference: str = "frozen", lora_rank: int = 0,
               vlm_dtype: str | None = None, checkpointing: bool = False, estimate_batches: Sequence[int] = (),
               checkpoint_sizes: bool = False) -> dict[str, Any]:
    """Median sample / update times (ms), their ratio, the update's breakdown (ms), pass counts, peak memory,
    parameter counts, memory estimates at ``estimate_batches`` and (``checkpoint_sizes``) checkpoint sizes."""
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS
    from trqam_sdk.methods import trqam as trqam_mod
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.profiling.bench import build_problem_from, train_step
    from trqam_sdk.profiling.memory import measure_peak
    from trqam_sdk.training.finetuner import Finetuner

    cls = LEROBOT_ADAPTERS[kind]
    options = adapter_options(cls, lora_rank=lora_rank, vlm_dtype=vlm_dtype, checkpointing=checkpointing)
    with tempfile.TemporaryDirectory(prefix="trqam-lerobot-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        policy, pre, post = _build(kind, root / "model", size, chunk, image, n_images)
        adapter = cls(policy, pre, post, **options)
        build_s = time.perf_counter() - t0
        h, a = adapter.spec.horizon, adapter.spec.action_dim
        data = _transitions(adapter, pre, max(2 * batch, 8, h + 1))  # one episode in which every chunk fits
        cfg = bench_config(batch, flow_steps, reference, str(root / "run"))
        # the update timed is the finetuner's own step (clip, Adam, EMA targets, dual), as in `trqam bench`
        problem = build_problem_from(Finetuner(cfg, adapter, data, critic=vla_critic(adapter, 2, 128, 2)))
        agent = problem.agent
        obs = problem.batch["observations"]

        def sample() -> None:
            agent.act(obs, torch.Generator().manual_seed(1))

        def update() -> None:
            train_step(problem)

        out: dict[str, Any] = {
            "kind": kind, "size": size, "batch": batch, "flow_steps": flow_steps, "chunk": [h, a],
            "image": int(adapter.policy.config.input_features[adapter.image_keys[0]].shape[-1]),
            "n_images": len(adapter.image_keys), "reference": reference, "options": options,
            "build_s": round(build_s, 1),
            "params": {"policy_total": _unique_numel(adapter), "policy_trainable": _unique_numel(adapter, True),
                       "agent_total": _unique_numel(agent), "agent_trainable": _unique_numel(agent, True)}}
        rss0 = _maxrss()
        with _passes(agent) as n_sample:
            mem_sample = measure_peak(sample, existing=(agent, problem.batch))  # also the warm-up
        with _passes(agent) as n_update:
            mem_update = measure_peak(update, existing=(agent, problem.batch, problem.noise))
        out["passes"] = {"sample": _plain(n_sample), "update": _plain(n_update)}
        out["memory"] = {"sample_rss_growth_gib": _gib(mem_sample["rss"]),
                         "sample_live_peak_gib": _gib(mem_sample["allocated"]),
                         "update_rss_growth_gib": _gib(mem_update["rss"]),
                         "update_live_peak_gib": _gib(mem_update["allocated"]),
                         "process_peak_rss_gib": _gib(_maxrss()), "process_peak_rss_before_gib": _gib(rss0)}
        out.update(_time(agent, problem, sample, update, repeats, trqam_mod))
        if checkpoint_sizes:
            out["checkpoint"] = _checkpoint_sizes(problem.ft, adapter, root / "policy-alone")
        if estimate_batches:
            out["estimate"] = estimate_kind(kind, root / "meta", size, chunk, image, n_images, cfg, options,
                                            estimate_batches)
    return out


def _time(agent: Any, problem: Any, sample: Callable[[], None], update: Callable[[], None], repeats: int,
          trqam_mod: Any) -> dict[str, Any]:
    """Timed repeats (after the warm-up done by the memory measurement) and the update's breakdown."""
    parts: dict[str, float] = defaultdict(float)
    names = ("sample_ode", "sample_memoryless_tracked", "lean_adjoint", "terminal_adjoint")
    originals = {name: getattr(trqam_mod, name) for name in names}
    labels = {"sample_ode": "critic_target_ode", "sample_memoryless_tracked": "sde_rollout",
              "lean_adjoint": "adjoint_vjps", "terminal_adjoint": "critic_nets"}
    models = {id(m): m for m in (agent.actor, agent.ref, agent.base)}.values()
    targets = [(agent, "forward"), (problem.ft.optimizer, "step"), (agent.critic, "forward")] + \
        [(m, "condition") for m in models]
    saved = [(obj, attr, obj.__dict__.get(attr)) for obj, attr in targets]  # instance attributes to restore
    agent.forward = _timed(agent.forward, parts, "forward")
    problem.ft.optimizer.step = _timed(problem.ft.optimizer.step, parts, "optimizer")
    for name, fn in originals.items():
        setattr(trqam_mod, name, _timed(fn, parts, labels[name]))
    for model in models:
        model.condition = _timed(model.condition, parts, "prefix")
    agent.critic.forward = _timed(agent.critic.forward, parts, "critic_nets")
    try:
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
        for obj, attr, old in saved:
            if old is None:
                obj.__dict__.pop(attr, None)
            else:
                obj.__dict__[attr] = old
    breakdown = {k: 1e3 * v / repeats for k, v in parts.items()}
    fwd, opt_ms = breakdown.pop("forward"), breakdown["optimizer"]
    breakdown["other_forward"] = fwd - sum(v for k, v in breakdown.items() if k != "optimizer")
    breakdown["backward_clip_targets_dual"] = statistics.fmean(update_ms) - fwd - opt_ms
    s, u = statistics.median(sample_ms), statistics.median(update_ms)
    return {"sample_ms": round(s, 2), "update_ms": round(u, 2), "ratio": round(u / s, 2),
            "breakdown_ms": {k: round(v, 2) for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])}}


def estimate_kind(kind: str, root: Path, size: str, chunk: int, image: int | None, n_images: int, cfg: Any,
                  options: dict[str, Any], batches: Sequence[int]) -> dict[str, Any]:
    """Meta-tensor estimates of one update's and one sample's peak memory at each of ``batches``: a meta build
    of the same model with the same options (nothing allocated)."""
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS
    from trqam_sdk.data.transitions import ChunkSampler
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.profiling.memory import build_meta_agent, estimate_sample_memory, estimate_update_memory

    if size == "tiny":
        policy, pre, post = _build(kind, root, size, chunk, image, n_images)
        policy = policy.to("meta")  # a fresh, disposable build
    else:
        policy, pre, post = _build(kind, root, size, chunk, image, n_images, device="meta")
    adapter = LEROBOT_ADAPTERS[kind](policy, pre, post, **options)
    data = _transitions(adapter, pre, adapter.spec.horizon + 1)
    example = ChunkSampler(data, adapter.spec.horizon).sample(torch.zeros(1, dtype=torch.long))
    out: dict[str, Any] = {}
    for b in batches:
        agent = build_meta_agent(cfg, adapter, data, vla_critic(adapter, 2, 128, 2))
        upd = estimate_update_memory(agent, example, b, lr=cfg.lr, grad_clip=cfg.grad_clip)
        smp = estimate_sample_memory(adapter, example["observations"], b, cfg.flow_steps)
        out[str(b)] = {"update_peak_gib": upd["peak_gib"], "update_peak_phase": upd["peak_phase"],
                       "update_at_peak_gib": upd["breakdown_at_peak_gib"],
                       "params_trainable_gib": _gib(upd["params_trainable_bytes"]),
                       "params_frozen_gib": _gib(upd["params_frozen_bytes"]),
                       "grads_gib": _gib(upd["grads_bytes"]), "optimizer_state_gib": _gib(upd["optimizer_state_bytes"]),
                       "activations_at_peak_gib": upd["activations_at_peak_gib"],
                       "sample_peak_gib": smp["peak_gib"], "sample_activations_gib": smp["activations_at_peak_gib"]}
    return out


def _checkpoint_sizes(ft: Any, adapter: Any, alone: Path) -> dict[str, Any]:
    """Save one training checkpoint with the finetuner; its parts' on-disk sizes vs the policy saved alone."""
    t0 = time.perf_counter()
    path = ft.save_checkpoint()
    save_s = time.perf_counter() - t0
    adapter.save_pretrained(alone)
    parts = {name: _folder_bytes(path / name) for name in ("policy", "algorithm.safetensors",
                                                            "optimizer.safetensors", "state.json")
             if (path / name).exists()}
    return {"save_s": round(save_s, 1), "total_gib": _gib(_folder_bytes(path)),
            "parts_gib": {k: _gib(v) for k, v in parts.items()}, "policy_alone_gib": _gib(_folder_bytes(alone)),
            "total_bytes": _folder_bytes(path), "parts_bytes": parts, "policy_alone_bytes": _folder_bytes(alone)}


def _plain(n: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in n.items() if k != "by_model"}


def _gib(nbytes: float) -> float:
    return round(nbytes / GIB, 4)


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
