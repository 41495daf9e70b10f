"""An adapter defined outside the SDK, as a third party would write it (docs/extending.md, "A new adapter").

A FiLM velocity field: ``condition`` embeds the observation once per state into a per-layer (scale, shift);
``velocity`` runs an MLP over [x_t, t] modulated by them. Importing this module registers it under its
``type_name``, so ``load_policy`` and every ``trqam`` command (``--plugin my_adapter``) can build it from a
saved folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from trqam_sdk.adapters.base import ActionSpec, FlowPolicy


@dataclass
class FiLMPolicyConfig:
    obs_dim: int
    horizon: int
    action_dim: int
    width: int = 64
    depth: int = 2


class FiLMFlowPolicy(FlowPolicy):
    """v(s, x, t) = out(h_depth), h_k = silu(γ_k(s) ⊙ W_k h_{k-1} + β_k(s)), h_0 = [x, t]."""

    type_name = "example_film"

    def __init__(self, config: FiLMPolicyConfig):
        super().__init__()
        self.config = config
        self.spec = ActionSpec(config.horizon, config.action_dim)
        w, d = config.width, self.spec.flat_dim
        self.embed = nn.Linear(config.obs_dim, 2 * w * config.depth)
        self.layers = nn.ModuleList(nn.Linear(d + 1 if k == 0 else w, w) for k in range(config.depth))
        self.out = nn.Linear(w, d)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FiLMFlowPolicy:
        return cls(FiLMPolicyConfig(**config))

    def condition(self, obs: Tensor) -> dict[str, Tensor]:
        """Per-layer FiLM (scale, shift) of the state: computed once, reused for every flow step and VJP."""
        if obs.ndim != 2 or obs.shape[1] != self.config.obs_dim:
            raise ValueError(f"observations: expected (B, {self.config.obs_dim}), got {tuple(obs.shape)}")
        scale, shift = self.embed(obs).view(obs.shape[0], 2, self.config.depth, self.config.width).unbind(1)
        return {"scale": 1.0 + scale, "shift": shift}

    def velocity(self, cond: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
        """SDK convention (t = 0 noise → t = 1 action): the model is trained in it, so nothing to convert."""
        h = torch.cat([x, t.to(x.dtype)[:, None]], dim=-1)
        for k, layer in enumerate(self.layers):
            h = torch.nn.functional.silu(cond["scale"][:, k] * layer(h) + cond["shift"][:, k])
        return self.out(h)
