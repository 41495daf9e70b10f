"""A test double in the opposite (LeRobot pi0-family) time convention, with an exactly known flow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trqam_sdk.adapters.base import ActionSpec, FlowPolicy


@dataclass
class PointMassConfig:
    obs_dim: int
    horizon: int
    action_dim: int
    t_min: float = 1e-2
    """t' is clamped to at least this, so the native field stays finite at its action end t' = 0"""


class NativeReversedPointMass(FlowPolicy):
    """Exact flow of a point mass at c(s) = tanh(W s + b), written in the pi0 convention.

    t' = 1 is noise, t' = 0 the action, path x_t' = t' noise + (1 - t') c and v'(x, t') = (x - c) / t'
    (≈ noise - action). In SDK time t = 1 - t' the wrapped field is (c - x) / (1 - t), whose Euler ODE from
    t = 0 lands exactly on c at t = 1 (the last step has 1 - t = h). Only correct behind ``ReversedTimePolicy``.
    """

    type_name = "test_native_reversed_point_mass"

    def __init__(self, config: PointMassConfig):
        super().__init__()
        self.config = config
        self.spec = ActionSpec(config.horizon, config.action_dim)
        self.target = nn.Linear(config.obs_dim, self.spec.flat_dim)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NativeReversedPointMass:
        return cls(PointMassConfig(**config))

    def condition(self, obs: Tensor) -> dict[str, Tensor]:
        if obs.ndim != 2 or obs.shape[1] != self.config.obs_dim:
            raise ValueError(f"observations: expected (B, {self.config.obs_dim}), got {tuple(obs.shape)}")
        return {"c": torch.tanh(self.target(obs))}

    def velocity(self, cond: dict[str, Tensor], x: Tensor, t_native: Tensor) -> Tensor:
        return (x - cond["c"]) / t_native.to(x.dtype).clamp_min(self.config.t_min)[:, None]
