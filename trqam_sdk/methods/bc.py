"""BC as a method: flow matching of the policy itself on dataset chunks (SPEC §6's first stage).

The same objective trains the base inside TRQAM (:meth:`TRQAMAgent.bc_objective`); here the policy being
trained *is* the BC policy, so ``trqam train`` with ``method: bc`` pretrains a prior through the finetuner.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.conventions import Conventions
from trqam_sdk.core.losses import flow_matching_loss
from trqam_sdk.methods.base import Agent, Noise
from trqam_sdk.methods.registry import register_method


def bc_flow_matching(policy: FlowPolicy, batch: dict[str, Any], x0: Tensor, t: Tensor,
                     conventions: Conventions | None = None) -> Tensor:
    """‖v(s, x_t, t) − (x1 − x0)‖² on x_t = (1 − t) x0 + t x1, summed over the chunk (or its mean over H·A with
    ``conventions.bc_loss == "mean"``). Steps past an episode end are masked out one by one; with the reference
    chunk sampling each chunk is weighted whole by its last step's validity, as the authors' code (SPEC §5.1)."""
    conv = conventions or _DEFAULT
    x1 = batch["actions"].flatten(1)
    xt = (1.0 - t[:, None]) * x0 + t[:, None] * x1
    v = policy.velocity(policy.condition(batch["observations"]), xt, t)
    if conv.chunk_sampling == "reference":
        weight = batch["valid"][:, None].to(v.dtype)
    else:
        weight = batch["valid_steps"].repeat_interleave(policy.spec.action_dim, dim=1)
    return flow_matching_loss(v, x0, x1, weight, reduction=conv.bc_loss)


_DEFAULT = Conventions()


@register_method("bc")
class BCAgent(Agent):
    """Trains ``actor`` by flow matching; no critic, no after-step work."""

    progress_keys = ("actor/bc_loss",)

    def __init__(self, actor: FlowPolicy, cfg: FinetuneConfig | None = None, conventions: Conventions | None = None):
        super().__init__()
        self.actor, self.cfg = actor, cfg
        self.flow_steps = cfg.flow_steps if cfg is not None else 10
        # explicit conventions (pretrain_bc) win over the config's
        self.conventions = conventions or (cfg.conventions if cfg is not None else Conventions())

    @classmethod
    def build(cls, cfg: FinetuneConfig, policy: FlowPolicy, data: Any, critic: Any = None) -> Agent:
        if critic is not None:
            raise ValueError("method 'bc' trains no critic: do not pass one")
        return cls(copy.deepcopy(policy), cfg)

    def noise_spec(self, batch: int) -> dict[str, Noise]:
        return {"bc_x0": Noise((batch, self.actor.spec.flat_dim)), "bc_t": Noise((batch,), "uniform")}

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss = bc_flow_matching(self.actor, batch, noise["bc_x0"], noise["bc_t"], self.conventions)
        return loss, {"actor/bc_loss": loss.detach()}
