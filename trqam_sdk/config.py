"""Configuration dataclasses: a docstring under every field (paper symbols named; ``trqam train --help`` prints
them), its allowed range next to it, cross-field rules in ``cross_checks``. Configs are validated when built, in
code or from YAML; call :func:`validate` again after mutating one. Parsing rules live in :mod:`trqam_sdk.schema`, the
strict YAML loader in :mod:`trqam_sdk.strict_yaml`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trqam_sdk.conventions import Conventions
from trqam_sdk.schema import (
    ConfigBase,
    ConfigError,
    ConfigKeyError,
    ConfigTypeError,
    describe_fields,
    field_docs,
    from_dict,
    ranged,
    to_dict,
    validate,
)
from trqam_sdk.strict_yaml import deep_merge, load_yaml_mapping, parse_overrides

__all__ = [
    "ConfigError", "ConfigKeyError", "ConfigTypeError", "CriticConfig", "FinetuneConfig", "PolicyConfig",
    "TrustRegionConfig", "deep_merge", "describe_fields", "field_docs", "from_dict", "load_config", "load_yaml",
    "load_yaml_mapping", "parse_overrides", "to_dict", "validate",
]


@dataclass
class CriticConfig(ConfigBase):
    num_critics: int = ranged(10, ge=1)
    """K, ensemble size"""
    width: int = ranged(512, ge=1)
    """hidden width of each critic MLP"""
    depth: int = ranged(4, ge=1)
    """hidden layers of each critic MLP"""
    layer_norm: bool = True
    """LayerNorm after every hidden layer of the critics"""
    discount: float = ranged(0.995, gt=0, le=1)
    """γ (0.999 for humanoidmaze)"""
    rho: float = ranged(0.5, ge=0)
    """ρ, pessimism: target = mean_k Q̄_k - ρ std_k Q̄_k (0 for humanoidmaze)"""
    target_tau: float = ranged(0.005, gt=0, le=1)
    """EMA rate of the target critic"""


@dataclass
class PolicyConfig(ConfigBase):
    width: int = ranged(512, ge=1)
    """actor hidden width (1024 + LayerNorm for the 10M/100M datasets)"""
    depth: int = ranged(4, ge=1)
    """actor hidden layers"""
    layer_norm: bool = False
    """LayerNorm after every hidden layer of the actor"""


@dataclass
class TrustRegionConfig(ConfigBase):
    kl_budget: float = ranged(0.5, gt=0)
    """ε_KL, the path-space KL budget per chunk step"""
    kl_budget_schedule: list[tuple[int, float]] = field(default_factory=list)
    """[(step, ε), ...]: ε switches to each value once ``step`` is reached (antmaze-giant: 0.5 → 3.0 online);
    steps >= 0 and increasing, every ε > 0"""
    lam_init: float = ranged(1.0, gt=0)
    """λ_0, the initial trust-region scalar (within [lam_min, lam_max])"""
    lam_lr: float = ranged(0.01, gt=0)
    """η_λ, dual step size"""
    lam_min: float = ranged(0.01, gt=0)
    """λ_min, lower end of the projection of λ after each dual step"""
    lam_max: float = ranged(100.0, gt=0)
    """λ_max, upper end of the projection of λ after each dual step"""
    lam_scale: float = ranged(3.0, gt=0)
    """Λ = lam_scale · λ is the temperature of the tilt π_ref · exp(Q / Λ)"""
    ema_rate: float = ranged(0.1, gt=0, le=1)
    """ρ_ema of the KL EMA D̄"""
    kl_clip_mult: float = ranged(2.0, gt=0)
    """c: each D̂ enters the EMA as min(D̂, c ε)"""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.lam_min > self.lam_max:
            yield "lam_min", f"must be <= lam_max = {self.lam_max!r}, got {self.lam_min!r}"
        elif not self.lam_min <= self.lam_init <= self.lam_max:
            yield "lam_init", f"must be in [lam_min, lam_max] = [{self.lam_min!r}, {self.lam_max!r}], " \
                              f"got {self.lam_init!r}"
        last = -1
        for i, (step, eps) in enumerate(self.kl_budget_schedule):
            if step < 0 or step <= last:
                yield f"kl_budget_schedule[{i}]", f"steps must be >= 0 and increasing, got step {step} after {last}"
            elif not eps > 0:
                yield f"kl_budget_schedule[{i}]", f"ε must be > 0, got {eps!r}"
            last = max(last, step)


@dataclass
class FinetuneConfig(ConfigBase):
    method: str = "trqam"
    """a registered method (trqam_sdk.methods): trqam: λ in the SDE with dual descent; qam: fixed Λ = 1/τ;
    qam_ext_kl: fixed Λ, + λ_ext · D̂ in the loss; bc: flow matching of the policy only"""
    method_options: dict[str, Any] = field(default_factory=dict)
    """options of the chosen method, parsed strictly by its ``Options`` dataclass (methods defined outside the
    package keep their own hyper-parameters here)"""
    qam_tau: float = ranged(1.0, gt=0)
    """τ, QAM's inverse temperature (qam and qam_ext_kl use Λ = 1/τ)"""
    flow_steps: int = ranged(10, ge=1)
    """T, Euler steps of the flow"""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """the MLP actor built when no pretrained policy is given"""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """the Q ensemble and its TD target"""
    trust_region: TrustRegionConfig = field(default_factory=TrustRegionConfig)
    """ε_KL and the dual descent on λ (trqam; qam_ext_kl uses its λ_ext)"""
    reference: Literal["ema", "frozen"] = "ema"
    """ema: the base keeps training by BC and the reference is its EMA (SPEC §2); frozen: pretrained copy"""
    reference_tau: float = ranged(0.005, gt=0, le=1)
    """EMA rate of the reference velocity"""
    batch_size: int = ranged(256, ge=1)
    """B, global batch (split across processes)"""
    lr: float = ranged(3e-4, gt=0)
    """Adam learning rate of the actor, base and critics"""
    grad_clip: float | None = ranged(1.0, gt=0, allow_inf=True)
    """global gradient-norm clip; None (or inf, the same): no clip (QAM Table 3 for the baselines outside the QAM
    family), the norm is still logged as ``train/grad_norm``"""
    conventions: Conventions = field(default_factory=Conventions)
    """where this SDK and the authors' code differ (BC loss scale, init, BC clip, chunk sampling, action clip);
    the defaults are this SDK's, ``Conventions.reference()`` the authors' (SPEC §5.1, docs/conventions.md)"""
    steps: int = ranged(1000, ge=0)
    """total gradient steps (a resumed run continues up to this)"""
    seed: int = ranged(0, ge=0, le=2**32 - 1)
    """seeds torch, numpy and the per-step batch / noise draws (runs are reproducible per seed)"""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Accelerate's mixed precision of the forward passes; auto: the launcher's (``accelerate launch
    --config_file recipes/accelerate/single_gpu_bf16.yaml`` sets bf16), else none; no: fp32 whatever the launcher"""
    log_every: int = ranged(50, ge=1)
    """steps between metric rows (metrics.jsonl, trackers, progress bar)"""
    checkpoint_every: int = ranged(0, ge=0)
    """steps between checkpoints; 0: only at the end"""
    keep_checkpoints: int = ranged(0, ge=0)
    """newest checkpoints kept (plus the one ``checkpoints/best.json`` names); older ones are deleted after each
    save; 0: keep all"""
    max_nonfinite_skips: int = ranged(20, ge=0)
    """consecutive non-finite (skipped) updates after which training stops with an error naming what went
    non-finite; a train() call also stops when no update since the run was built or resumed has succeeded;
    0: never stop (skips are still warned about)"""
    output_dir: str = "runs/trqam"
    """run folder: metrics.jsonl, config.json, checkpoints/, tracker logs"""
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Accelerate trackers (tensorboard, wandb, ...); []: metrics.jsonl only"""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        from trqam_sdk.methods.registry import method_names  # lazy: methods import this module

        if self.method not in method_names():
            yield "method", (f"unknown method {self.method!r}; known methods: {method_names()} (register your "
                             "own with trqam_sdk.methods.register_method, load it with --plugin)")
        if not self.output_dir:
            yield "output_dir", "must not be empty"


def load_yaml[T](cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load ``cls`` from a YAML file (optionally one top-level ``section`` of it), strictly: duplicate keys,
    unknown keys, wrong types and out-of-range values are errors naming the file and the field."""
    data = load_yaml_mapping(path)
    if section is not None:
        data = data.get(section) or {}
    return from_dict(cls, data, where=f"{path}[{section}]" if section is not None else str(path))


def load_config[T](cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                   base: T | None = None, section: str | None = None) -> T:
    """``base`` (default: the class defaults), then the YAML file at ``path``, then dotted ``overrides``
    (``["trust_region.kl_budget=0.1"]``); each layer's errors name their source (the file or ``--set``)."""
    data: dict[str, Any] = to_dict(base) if base is not None else {}
    where = "config"
    if path is not None:
        file = load_yaml_mapping(path)
        if section is not None:
            file = file.get(section) or {}
        data, where = deep_merge(data, file), str(path)
        from_dict(cls, data, where=where)  # file errors named after the file, before overrides hide them
    if overrides:
        data, where = deep_merge(data, parse_overrides(overrides)), "--set" if path is None else f"{path} + --set"
    return from_dict(cls, data, where=where)
