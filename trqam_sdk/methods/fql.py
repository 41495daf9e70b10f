"""FQL (Park et al. 2025; QAM paper App. C.1 eqs. 41–43): a BC flow distilled into a one-step policy that
climbs the critic.

One update, for a batch of states s (``FQLAgent.loss``):
  (41) L_FM(θ): flow matching of the BC flow v_θ on dataset chunks (starts as a copy of the prior);
  (42) L_onestep(ω) = α ‖μ_ω(s, z) − ODE(v_θ(s, ·, ·), z)‖² − Q(s, clip(μ_ω(s, z))), z ~ N(0, I_{H·A}),
       the ODE target clipped and detached, Q the mean over the online ensemble evaluated with detached
       parameters (the critic is trained by its TD loss only);
  (43) the chunked pessimistic TD loss of the critic (SPEC §5) with a' = clip(μ_ω(s', z')).
The deployable policy is μ_ω (``actor``, an :class:`~trqam_sdk.adapters.onestep.OneStepPolicy`), so ``policy/``
checkpoints hold it alone and evaluation samples it alone (one step, whatever ``flow_steps``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.adapters.onestep import OneStepPolicy
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.core.flow import sample_ode
from trqam_sdk.core.targets import soft_update
from trqam_sdk.methods.base import Agent, Noise
from trqam_sdk.methods.bc import bc_flow_matching
from trqam_sdk.methods.critics import build_critic, chunked_td_loss, frozen_call
from trqam_sdk.methods.registry import register_method
from trqam_sdk.networks.mlp import reinit_
from trqam_sdk.schema import ranged

# -- FQL ---------------------------------------------------------------------------------------------------


@dataclass
class FQLOptions:
    """FQL's hyper-parameters (``FinetuneConfig.method_options``)."""

    alpha: float = ranged(10.0, ge=0)
    """α, weight of the distillation term (QAM Table 4 "FQL α": 300 scene, 1 puzzle-4x4, 3 antmaze, ...; 10 is
    FQL's own default)"""
    distill_reduction: Literal["mean", "sum"] = "mean"
    """how ‖μ − ODE‖² is reduced over the H·A chunk dims: mean (FQL's reference code, the scale Table 4's α
    were tuned at) or sum (the paper's ‖·‖²; equivalent to α·H·A with mean)"""
    normalize_q_loss: bool = False
    """divide the Q term by the detached batch mean |Q| (FQL's ``normalize_q_loss``), making α scale-free"""
    policy_init: Literal["prior", "fresh"] = "prior"
    """μ_ω's start: the prior's one-step Euler map z + v_prior(s, z, 0), or freshly drawn MLP weights (the
    adapter's MLPs re-initialised with conventions.init; μ = z + MLP(s, z, 0))"""


@register_method("fql")
class FQLAgent(Agent):
    """Holds μ_ω (``actor``, the policy), the BC flow v_θ (``bc_flow``), the critic ensemble and its EMA target."""

    Options = FQLOptions
    progress_keys = ("critic/loss", "actor/distill_loss", "actor/q_loss")

    def __init__(self, actor: OneStepPolicy, bc_flow: FlowPolicy, critic: nn.Module, cfg: FinetuneConfig):
        super().__init__()
        self.cfg, self.flow_steps = cfg, cfg.flow_steps
        self.opts: FQLOptions = self.parse_options(cfg.method_options)
        self.spec = actor.spec
        self.actor, self.bc_flow, self.critic = actor, bc_flow, critic
        self.target_critic = copy.deepcopy(critic).requires_grad_(False)

    @classmethod
    def build(cls, cfg: FinetuneConfig, policy: FlowPolicy, data: Any, critic: nn.Module | None = None) -> Agent:
        """v_θ and μ_ω's inner flow start as copies of the prior (μ_ω re-drawn with ``policy_init: fresh``)."""
        inner = copy.deepcopy(policy)
        if cls.parse_options(cfg.method_options).policy_init == "fresh":
            reinit_(inner, cfg.conventions.init)
        critic = build_critic(cfg, data, policy.spec.flat_dim, critic)
        return cls(OneStepPolicy(inner), copy.deepcopy(policy), critic, cfg)

    def noise_spec(self, batch: int) -> dict[str, Noise]:
        """z of the one-step objective, z' of the TD target at s', the BC noise and times."""
        d = self.spec.flat_dim
        return {"z": Noise((batch, d)), "target_z": Noise((batch, d)), "bc_x0": Noise((batch, d)),
                "bc_t": Noise((batch,), "uniform")}

    # -- the three losses --------------------------------------------------------------------------------
    def chunk(self, x: Tensor) -> Tensor:
        """Flat (B, H·A) → (B, H, A), as the critic takes chunks."""
        return x.view(x.shape[0], self.spec.horizon, self.spec.action_dim)

    @torch.no_grad()
    def next_actions(self, s_next: Any, target_z: Tensor) -> Tensor:
        """a' = clip(μ_ω(s', z')) (eq. 43): the one-step policy, not the BC flow, is what the critic evaluates."""
        return self.chunk(self.actor.one_step(self.actor.condition(s_next), target_z).clamp(-1.0, 1.0))

    def critic_objective(self, batch: dict[str, Any], target_z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 43 with SPEC §5's chunked pessimistic target."""
        a_next = self.next_actions(batch["next_observations"], target_z)
        return chunked_td_loss(self.critic, self.target_critic, batch, a_next, self.cfg.critic)

    @torch.no_grad()
    def bc_ode(self, obs: Any, z: Tensor) -> Tensor:
        """ODE(v_θ(s, ·, ·), z): T-step Euler sample of the BC flow from the same z, clipped (eq. 39)."""
        return sample_ode(self.bc_flow.velocity_fn(self.bc_flow.condition(obs)), z, self.flow_steps).clamp(-1, 1)

    def actor_objective(self, obs: Any, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 42: α · distill + q_loss; gradients reach μ_ω only (target detached, critic parameters detached)."""
        target = self.bc_ode(obs, z)
        mu = self.actor.one_step(self.actor.condition(obs), z)
        sq = (mu - target).square()
        distill = (sq.mean(dim=-1) if self.opts.distill_reduction == "mean" else sq.sum(dim=-1)).mean()
        q = frozen_call(self.critic, obs, self.chunk(mu.clamp(-1.0, 1.0))).mean(dim=0)
        q_loss = -q.mean()
        if self.opts.normalize_q_loss:
            q_loss = q_loss / q.detach().abs().mean().clamp_min(1e-6)
        loss = self.opts.alpha * distill + q_loss
        return loss, {"actor/distill_loss": distill.detach(), "actor/q_loss": q_loss.detach(),
                      "actor/q_mean": q.detach().mean(), "actor/action_abs": mu.detach().abs().mean()}

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Critic TD + BC flow matching of v_θ + the one-step objective (eq. 41 + 43), one summed loss."""
        q_loss, metrics = self.critic_objective(batch, noise["target_z"])
        bc_loss = bc_flow_matching(self.bc_flow, batch, noise["bc_x0"], noise["bc_t"], self.cfg.conventions)
        actor_loss, actor_metrics = self.actor_objective(batch["observations"], noise["z"])
        metrics.update(actor_metrics)
        metrics["actor/bc_loss"] = bc_loss.detach()
        return q_loss + bc_loss + actor_loss, metrics

    def after_step(self, metrics: dict[str, float], step: int) -> None:
        """EMA of the target critic (no other target network in FQL)."""
        soft_update(self.target_critic, self.critic, self.cfg.critic.target_tau)
