"""Configuration dataclasses (one docstring per field, paper symbols named) and a strict YAML loader."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class CriticConfig:
    num_critics: int = 10
    """K, ensemble size"""
    width: int = 512
    depth: int = 4
    layer_norm: bool = True
    discount: float = 0.995
    """γ (0.999 for humanoidmaze)"""
    rho: float = 0.5
    """ρ, pessimism: target = mean_k Q̄_k - ρ std_k Q̄_k (0 for humanoidmaze)"""
    target_tau: float = 0.005
    """EMA rate of the target critic"""


@dataclass
class PolicyConfig:
    width: int = 512
    """actor hidden width (1024 + LayerNorm for the 10M/100M datasets)"""
    depth: int = 4
    layer_norm: bool = False


@dataclass
class TrustRegionConfig:
    kl_budget: float = 0.5
    """ε_KL, the path-space KL budget per chunk step"""
    kl_budget_schedule: list[tuple[int, float]] = field(default_factory=list)
    """[(step, ε), ...]: ε switches to each value once ``step`` is reached (antmaze-giant: 0.5 → 3.0 online)"""
    lam_init: float = 1.0
    """λ_0"""
    lam_lr: float = 0.01
    """η_λ, dual step size"""
    lam_min: float = 0.01
    lam_max: float = 100.0
    lam_scale: float = 3.0
    """Λ = lam_scale · λ is the temperature of the tilt π_ref · exp(Q / Λ)"""
    ema_rate: float = 0.1
    """ρ_ema of the KL EMA D̄"""
    kl_clip_mult: float = 2.0
    """c: each D̂ enters the EMA as min(D̂, c ε)"""


@dataclass
class FinetuneConfig:
    method: str = "trqam"
    """a registered method (trqam_sdk.methods): trqam: λ in the SDE with dual descent; qam: fixed Λ = 1/τ;
    qam_ext_kl: fixed Λ, + λ_ext · D̂ in the loss; bc: flow matching of the policy only"""
    method_options: dict[str, Any] = field(default_factory=dict)
    """options of the chosen method, parsed strictly by its ``Options`` dataclass (methods defined outside the
    package keep their own hyper-parameters here)"""
    qam_tau: float = 1.0
    """τ, QAM's inverse temperature (qam and qam_ext_kl use Λ = 1/τ)"""
    flow_steps: int = 10
    """T, Euler steps of the flow"""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    trust_region: TrustRegionConfig = field(default_factory=TrustRegionConfig)
    reference: Literal["ema", "frozen"] = "ema"
    """ema: the base keeps training by BC and the reference is its EMA (SPEC §2); frozen: pretrained copy"""
    reference_tau: float = 0.005
    """EMA rate of the reference velocity"""
    batch_size: int = 256
    """global batch (split across processes)"""
    lr: float = 3e-4
    grad_clip: float = 1.0
    """global gradient-norm clip"""
    steps: int = 1000
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = 50
    checkpoint_every: int = 0
    """0: only at the end"""
    output_dir: str = "runs/trqam"
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is list:
            return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int | float):
        return float(value)
    if tp in (int, bool, str) and not isinstance(value, tp):
        raise TypeError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict[T](cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a (nested) config dataclass from a mapping; unknown keys are errors, not silently dropped."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise KeyError(f"{where}: unknown keys {sorted(unknown)}; valid keys are {sorted(names)}")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def load_yaml[T](cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load ``cls`` from a YAML file (optionally one top-level ``section`` of it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if section is not None:
        data = data.get(section, {})
    return from_dict(cls, data, where=str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
