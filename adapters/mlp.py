"""The paper's MLP flow prior: v(s, x_t, t) = MLP([obs, x_t, t]) with the raw scalar t (SPEC §2)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from trqam_sdk.adapters.base import ActionSpec, FlowPolicy

from trqam_sdk.networks.mlp import MLP


@dataclass
class MLPPolicyConfig:
    """Architecture of the MLP prior."""

    obs_dim: int
    horizon: int
    action_dim: int
    width: int = 512
    """hidden width (512; 1024 with LayerNorm for the 10M/100M datasets)"""
    depth: int = 4
    layer_norm: bool = False

    def __post_init__(self) -> None:
        """Reject sizes that would only fail later as a torch shape error (a hand-edited config.json)."""
        for name, lo in (("obs_dim", 0), ("horizon", 1), ("action_dim", 1), ("width", 1), ("depth", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise ValueError(f"MLPPolicyConfig.{name}: expected an integer >= {lo}, got {v!r}")
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"MLPPolicyConfig.layer_norm: expected true or false, got {self.layer_norm!r}")


class MLPFlowPolicy(FlowPolicy):
    """Small MLP velocity field; its condition is the observation itself."""

    type_name = "mlp"

    def __init__(self, config: MLPPolicyConfig):
        super().__init__()
        self.config = config
        self.spec = ActionSpec(config.horizon, config.action_dim)
        d = self.spec.flat_dim
        self.net = MLP(config.obs_dim + d + 1, d, config.width, config.depth, config.layer_norm)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MLPFlowPolicy:
        return cls(MLPPolicyConfig(**config))

    def condition(self, obs: Tensor) -> Tensor:
        if obs.ndim != 2 or obs.shape[1] != self.config.obs_dim:
            raise ValueError(f"observations: expected (B, {self.config.obs_dim}), got {tuple(obs.shape)}")
        return obs

    def velocity(self, cond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([cond, x, t.to(x.dtype).unsqueeze(-1)], dim=-1))
