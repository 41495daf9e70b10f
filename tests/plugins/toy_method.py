"""A method defined outside the package (docs/extending.md): BC flow matching pulled towards the prior.

``bc_anchor`` = the BC loss of the policy + ``weight`` · ‖θ − θ_prior‖². It registers itself on import, so
``trqam --plugin toy_method train --config cfg.yaml ...`` with ``method: bc_anchor`` runs it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trqam_sdk.methods import register_method
from trqam_sdk.methods.base import Agent, Noise
from trqam_sdk.methods.bc import bc_flow_matching


@dataclass
class AnchorOptions:
    weight: float = 0.1
    """pull of the weights towards the prior's"""


@register_method("bc_anchor")
class BCAnchorAgent(Agent):
    Options = AnchorOptions
    progress_keys = ("actor/bc_loss",)

    def __init__(self, actor: Any, cfg: Any):
        super().__init__()
        self.actor, self.cfg, self.flow_steps = actor, cfg, cfg.flow_steps
        self.opts = self.parse_options(cfg.method_options)
        self.prior = copy.deepcopy(actor).requires_grad_(False)

    @classmethod
    def build(cls, cfg: Any, policy: Any, data: Any, critic: Any = None) -> Agent:
        return cls(copy.deepcopy(policy), cfg)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("prior.",)

    def noise_spec(self, batch: int) -> dict[str, Noise]:
        return {"x0": Noise((batch, self.actor.spec.flat_dim)), "t": Noise((batch,), "uniform")}

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        bc = bc_flow_matching(self.actor, batch, noise["x0"], noise["t"])
        anchor = sum(((p - q) ** 2).sum() for p, q in zip(self.actor.parameters(), self.prior.parameters(),
                                                         strict=True))
        return bc + self.opts.weight * anchor, {"actor/bc_loss": bc.detach(),
                                                "actor/anchor": torch.as_tensor(anchor).detach()}
