"""Adapters built from other adapters: opposite time convention, residual fine-tuning."""

from __future__ import annotations

from torch import Tensor

from adapters.base import Cond, FlowPolicy


class ReversedTimePolicy(FlowPolicy):
    """Wrap a model that integrates from t' = 1 (noise) to t' = 0 (action) with v' ≈ noise - action.

    SDK time t = 1 - t' and SDK velocity v = -v' (LeRobot's pi0 family uses this convention; SPEC §1).
    """

    def __init__(self, inner: FlowPolicy):
        super().__init__()
        self.inner, self.spec = inner, inner.spec

    def condition(self, obs: Tensor) -> Cond:
        return self.inner.condition(obs)

    def velocity(self, cond: Cond, x: Tensor, t: Tensor) -> Tensor:
        return -self.inner.velocity(cond, x, 1.0 - t)


class ResidualPolicy(FlowPolicy):
    """v_theta = v_base + f_theta with v_base frozen (SPEC §2's residual option); f starts at zero."""

    def __init__(self, base: FlowPolicy, correction: FlowPolicy):
        super().__init__()
        self.base, self.correction, self.spec = base, correction, base.spec
        for p in self.base.parameters():
            p.requires_grad_(False)

    def condition(self, obs: Tensor) -> Cond:
        return (self.base.condition(obs), self.correction.condition(obs))

    def velocity(self, cond: Cond, x: Tensor, t: Tensor) -> Tensor:
        return self.base.velocity(cond[0], x, t) + self.correction.velocity(cond[1], x, t)
