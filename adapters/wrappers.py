"""Adapters built from other adapters: opposite time convention, residual fine-tuning."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from trqam_sdk.adapters.base import ADAPTERS, Cond, FlowPolicy


def _inner_meta(policy: FlowPolicy) -> dict[str, Any]:
    """``{"adapter", "config"}`` of a wrapped adapter, the same record ``save_pretrained`` writes."""
    if not policy.type_name:
        raise NotImplementedError(f"{type(policy).__name__} has no `type_name`, so a wrapper cannot save it")
    return {"adapter": policy.type_name, "config": policy.get_config()}


def _build_inner(meta: dict[str, Any]) -> FlowPolicy:
    kind = meta.get("adapter")
    if kind not in ADAPTERS:
        raise ValueError(f"wrapped adapter {kind!r} is not registered; known: {sorted(ADAPTERS)}")
    return ADAPTERS[kind].from_config(meta["config"])


class InnerWrapper(FlowPolicy):
    """Base of a policy that wraps one inner adapter and changes only its velocity: the spec, the conditioning and
    the saved config (the inner adapter's record) are the inner's."""

    def __init__(self, inner: FlowPolicy):
        super().__init__()
        self.inner, self.spec = inner, inner.spec

    def get_config(self) -> dict[str, Any]:
        return {"inner": _inner_meta(self.inner)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        return cls(_build_inner(config["inner"]))

    def condition(self, obs: Any) -> Cond:
        return self.inner.condition(obs)


class ReversedTimePolicy(InnerWrapper):
    """Wrap a model that integrates from t' = 1 (noise) to t' = 0 (action) with v' ≈ noise - action.

    SDK time t = 1 - t' and SDK velocity v = -v' (LeRobot's pi0 family uses this convention; SPEC §1).
    """

    type_name = "reversed_time"

    def velocity(self, cond: Cond, x: Tensor, t: Tensor) -> Tensor:
        return -self.inner.velocity(cond, x, 1.0 - t)


class ResidualPolicy(FlowPolicy):
    """v_theta = v_base + f_theta with v_base frozen (SPEC §2's residual option); f starts at zero.

    ``zero_init`` zeroes the correction's last ``nn.Linear`` (the output layer of every adapter in this
    package), so that v_theta = v_base before fine-tuning; pass False for a correction that is already
    initialised (weights loaded from a checkpoint overwrite it either way).
    """

    type_name = "residual"

    def __init__(self, base: FlowPolicy, correction: FlowPolicy, zero_init: bool = True):
        super().__init__()
        self.base, self.correction, self.spec = base, correction, base.spec
        for p in self.base.parameters():
            p.requires_grad_(False)
        if zero_init:
            linears = [m for m in correction.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(f"zero_init: {type(correction).__name__} has no nn.Linear output layer")
            with torch.no_grad():
                linears[-1].weight.zero_()
                if linears[-1].bias is not None:
                    linears[-1].bias.zero_()

    def get_config(self) -> dict[str, Any]:
        return {"base": _inner_meta(self.base), "correction": _inner_meta(self.correction)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ResidualPolicy:
        return cls(_build_inner(config["base"]), _build_inner(config["correction"]), zero_init=False)

    def condition(self, obs: Tensor) -> Cond:
        return (self.base.condition(obs), self.correction.condition(obs))

    def velocity(self, cond: Cond, x: Tensor, t: Tensor) -> Tensor:
        return self.base.velocity(cond[0], x, t) + self.correction.velocity(cond[1], x, t)
