"""IFQL (FQL paper's flow counterpart of IDQL; QAM paper App. C.1 eqs. 84–86): IQL value learning and
best-of-N acting from a BC flow.

One update (``IFQLAgent.loss``):
  (84) critic: Q_φ(s, a) → y = R + γ^H m V_ξ(s') (chunk reward, SPEC §5's γ^H and mask). The bootstrap is
       *implicit*: V(s') replaces Q̄(s', a'), so no next action is sampled and the critic never sees the policy;
  (85) value: f_κ(Q̄(s, a) − V_ξ(s)), f_κ(u) = |κ − 1[u < 0]| u² (``core.losses.expectile_loss``), with
       Q̄ = mean_k − ρ std_k of the TARGET ensemble at the dataset chunk (the pessimism of SPEC §5 moves here);
  BC: flow matching of the policy v_θ on dataset chunks — the only thing that trains it.
Acting (86): N clipped ODE samples of v_θ per state, the one with the highest Q kept (``IFQLAgent.act``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.core.flow import sample_ode
from trqam_sdk.core.losses import chunk_return, critic_loss, expectile_loss, pessimistic_value
from trqam_sdk.core.pytree import repeat_condition
from trqam_sdk.core.targets import soft_update
from trqam_sdk.methods.base import Agent, AgentActor, Noise
from trqam_sdk.methods.bc import bc_flow_matching
from trqam_sdk.methods.critics import build_critic
from trqam_sdk.methods.registry import register_method
from trqam_sdk.networks.mlp import MLP
from trqam_sdk.schema import ranged


@dataclass
class IFQLOptions:
    """IFQL's hyper-parameters (``FinetuneConfig.method_options``)."""

    expectile: float = ranged(0.9, gt=0, lt=1)
    """κ of the expectile regression of V (QAM Table 4 "IFQL τ", Table 5's κ: 0.7–0.95 per domain); 0.5 is a
    plain mean, κ → 1 the maximum over in-support actions"""
    num_samples: int = ranged(32, ge=1)
    """N, candidates per state for best-of-N acting (32: the FQL paper's IFQL value)"""
    select_with: Literal["mean", "pessimistic"] = "mean"
    """how the online ensemble scores the N candidates: its mean, or mean − ρ std (critic.rho)"""


class ValueNet(nn.Module):
    """V_ξ(s): an MLP over the (flat) observation, cfg.critic's width/depth/LayerNorm, a scalar out."""

    def __init__(self, obs_dim: int, width: int, depth: int, layer_norm: bool, init: Any = "lecun_normal"):
        super().__init__()
        self.net = MLP(obs_dim, 1, width, depth, layer_norm, init)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


@register_method("ifql")
class IFQLAgent(Agent):
    """Holds the BC flow (``actor``, the policy), the critic ensemble, its EMA target and V_ξ (``value``)."""

    Options = IFQLOptions
    progress_keys = ("critic/loss", "critic/value_loss", "actor/bc_loss")

    def __init__(self, actor: FlowPolicy, critic: nn.Module, value: nn.Module, cfg: FinetuneConfig):
        super().__init__()
        self.cfg, self.flow_steps = cfg, cfg.flow_steps
        self.opts: IFQLOptions = self.parse_options(cfg.method_options)
        self.spec = actor.spec
        self.actor, self.critic, self.value = actor, critic, value
        self.target_critic = copy.deepcopy(critic).requires_grad_(False)

    @classmethod
    def build(cls, cfg: FinetuneConfig, policy: FlowPolicy, data: Any, critic: nn.Module | None = None) -> Agent:
        """The policy is a copy of the prior; critic and V are fresh (V over flat observations only)."""
        c = cfg.critic
        value = ValueNet(data.obs_dim, c.width, c.depth, c.layer_norm, cfg.conventions.init)
        return cls(copy.deepcopy(policy), build_critic(cfg, data, policy.spec.flat_dim, critic), value, cfg)

    def noise_spec(self, batch: int) -> dict[str, Noise]:
        """Only the BC flow matching draws noise: the implicit backup needs no next action."""
        return {"bc_x0": Noise((batch, self.spec.flat_dim)), "bc_t": Noise((batch,), "uniform")}

    # -- the three losses --------------------------------------------------------------------------------
    def critic_objective(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 84 on chunks: y = R + γ^H m V_ξ(s'), V detached; valid-weighted squared error per member."""
        c = self.cfg.critic
        with torch.no_grad():
            horizon = batch["rewards"].shape[-1]
            y = (chunk_return(batch["rewards"], c.discount)
                 + c.discount**horizon * batch["masks"] * self.value(batch["next_observations"]))
        q = self.critic(batch["observations"], batch["actions"])
        loss = critic_loss(q, y, batch["valid"])
        return loss, {"critic/loss": loss.detach(), "critic/q_mean": q.detach().mean(), "critic/target_mean": y.mean()}

    def value_objective(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 85: valid-weighted f_κ(Q̄(s, a) − V(s)), Q̄ the pessimistic target-ensemble value at the data chunk."""
        with torch.no_grad():
            q_bar = pessimistic_value(self.target_critic(batch["observations"], batch["actions"]), self.cfg.critic.rho)
        v = self.value(batch["observations"])
        loss = (expectile_loss(q_bar - v, self.opts.expectile) * batch["valid"]).mean()
        return loss, {"critic/value_loss": loss.detach(), "critic/v_mean": v.detach().mean(),
                      "critic/q_bar_mean": q_bar.mean()}

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Critic TD (84) + expectile value (85) + BC flow matching of the policy, one summed loss."""
        q_loss, metrics = self.critic_objective(batch)
        v_loss, v_metrics = self.value_objective(batch)
        bc_loss = bc_flow_matching(self.actor, batch, noise["bc_x0"], noise["bc_t"], self.cfg.conventions)
        metrics.update(v_metrics)
        metrics["actor/bc_loss"] = bc_loss.detach()
        return q_loss + v_loss + bc_loss, metrics

    def after_step(self, metrics: dict[str, float], step: int) -> None:
        """EMA of the target critic (V has no target: it is regressed, and bootstrapped from, directly)."""
        soft_update(self.target_critic, self.critic, self.cfg.critic.target_tau)

    # -- acting: best-of-N (eq. 86) ----------------------------------------------------------------------------
    def candidates(self, obs: Any, generator: torch.Generator | None = None) -> Tensor:
        """N clipped ODE samples of v_θ per state, (N, B, H·A): x0 drawn as ``randn(N, B, H·A)``, candidate j of
        state b from x0[j, b]."""
        n, d = self.opts.num_samples, self.spec.flat_dim
        x0 = self.actor.draw_noise(obs, generator, n)
        b = x0.shape[1]
        cond = repeat_condition(self.actor.condition(obs), n)  # block order: row j·B + b is (candidate j, state b)
        x = sample_ode(self.actor.velocity_fn(cond), x0.view(n * b, d), self.flow_steps)
        return x.clamp(self.spec.low, self.spec.high).view(n, b, d)

    @torch.no_grad()
    def score(self, obs: Any, cand: Tensor) -> Tensor:
        """Q of each candidate (N, B) under the online ensemble: its mean, or mean − ρ std (``select_with``)."""
        n, b, _ = cand.shape
        q = self.critic(repeat_condition(obs, n), cand.view(n * b, self.spec.horizon, self.spec.action_dim))
        agg = q.mean(dim=0) if self.opts.select_with == "mean" else pessimistic_value(q, self.cfg.critic.rho)
        return agg.view(n, b)

    @torch.no_grad()
    def act(self, obs: Any, generator: torch.Generator | None = None) -> Tensor:
        """a* = argmax_{a_1..a_N ~ π_vθ} Q(s, a_i) (eq. 86), as (B, H, A) chunks in the box."""
        cand = self.candidates(obs, generator)
        best = self.score(obs, cand).argmax(dim=0)
        chosen = cand[best, torch.arange(cand.shape[1], device=cand.device)]
        return chosen.view(-1, self.spec.horizon, self.spec.action_dim)

    def make_actor(self, seed: int = 0) -> AgentActor:
        """Best-of-N needs the critic: act through the agent (AgentActor ships it to the workers)."""
        return AgentActor(self, seed)
