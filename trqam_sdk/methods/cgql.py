"""CGQL-Linex (QAM paper App. C.1 "CGQL" eqs. 58–62 and "CGQL-MSE/Linex" eqs. 63–72): classifier guidance.

A BC flow v_β (``actor``, the policy saved alone) is trained by flow matching. A noise-level-conditioned critic
ensemble Q_φ(s, a, u) (u = 1 the clean action) is trained with (i) the chunked pessimistic TD loss at u = 1
whose next action is the clipped ODE of the *guided* velocity at s' (eq. 62), and (ii) ϱ times a Linex
regression of Q_φ(s, a^u, u), a^u = (1 − u) z + u a, towards the target network's Q̄(s, a, 1) (eqs. 64, 70, 71),
whose optimum is the soft maximum (1/τ) log E[exp(τ Q̄)] (eq. 66) that guidance needs. The acting and
bootstrapping velocity is (eq. 72)

    v(s, x, u) = v_β(s, x, u) + ϑ ((1 − u) τ ∇_x Q(s, x, u) + x) / u,     Q = mean_k Q_k.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.core.flow import VelocityFn, sample_ode
from trqam_sdk.core.losses import critic_loss, linex_loss, td_target
from trqam_sdk.core.targets import soft_update
from trqam_sdk.methods.base import Agent, AgentActor, FlowActor, Noise
from trqam_sdk.methods.bc import bc_flow_matching
from trqam_sdk.methods.registry import register_method
from trqam_sdk.networks.mlp import QEnsemble
from trqam_sdk.schema import ranged


@dataclass
class CGQLOptions:
    guidance: float = ranged(0.1, ge=0)
    """ϑ, the guidance strength of eq. 72 (0: act and bootstrap with the BC flow alone)"""
    tau: float = ranged(10.0, gt=0)
    """τ, the inverse temperature of π* ∝ exp(τ Q): scales ∇Q in the guidance and the Linex soft maximum"""
    noisy_weight: float = ranged(0.001, ge=0)
    """ϱ, the weight of the noisy-action Linex regression against the TD loss (eq. 71)"""
    linex_clip: float = ranged(5.0, gt=0, le=50)
    """Δ past which the Linex loss continues linearly (eq. 70's guard against exp blow-up); ≤ 50 so that
    exp(Δ) and its gradient stay finite in float32"""
    guidance_critic: Literal["target", "online"] = "target"
    """the ensemble whose ∇_x Q guides: the EMA target (default; stable, as QAM's adjoint and QSM's note) or φ"""
    guidance_start: Literal["t1", "shift"] = "t1"
    """guard of the 1/u singularity at the first Euler time t_0 = 0: "t1" skips the guidance on the first step
    (eq. 72 exactly from t_1 = h on); "shift" evaluates it at u + h on every step (SPEC §3's +h offset)"""


class NoiseLevelQEnsemble(nn.Module):
    """Q_k(s, a, u) for k = 1..K over ``[obs, flattened chunk, u]`` (u ∈ [0, 1], u = 1 the clean action): (K, B)."""

    def __init__(self, obs_dim: int, flat_dim: int, num_critics: int = 10, width: int = 512, depth: int = 4,
                 layer_norm: bool = True, init: Any = "lecun_normal"):
        super().__init__()
        self.q = QEnsemble(obs_dim, flat_dim + 1, num_critics, width, depth, layer_norm, init)

    def forward(self, obs: Tensor, action: Tensor, u: Tensor) -> Tensor:
        return self.q(obs, torch.cat([action.flatten(1), u.to(action.dtype)[:, None]], dim=-1))


def guidance_term(critic: Callable[[Any, Tensor, Tensor], Tensor], obs: Any, x: Tensor, u: Tensor, tau: float,
                  vartheta: float) -> Tensor:
    """ϑ v̂ = ϑ ((1 − u) τ ∇_x mean_k Q_k(s, x, u) + x) / u (eq. 72), (B, D), no gradient to anything; u > 0.

    Noisy points are not clipped: Q(·, ·, u < 1) was trained on unclipped a^u."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(obs, xg, u).mean(dim=0).sum(), xg)
    uu = u.to(x.dtype)[:, None]
    return vartheta * ((1.0 - uu) * tau * grad + x.detach()) / uu


def noisy_regression_loss(q_noisy: Tensor, q_target: Tensor, tau: float, valid: Tensor,
                          clip: float = 5.0) -> Tensor:
    """(2/τ²) · valid-weighted mean of Linex(Δ), Δ = τ (Q̄ − Q_φ(s, a^u, u)) (eqs. 64, 70), over members and rows.

    The 2/τ² makes it (Q̄ − Q)² for small Δ (exp(Δ) − Δ − 1 ≈ Δ²/2), so ϱ weighs it as eq. 71's squared error;
    the minimiser (1/τ) log E[exp(τ Q̄)] (eq. 66) is unchanged by the scale. ``q_target`` is detached."""
    delta = tau * (q_target.detach() - q_noisy)
    return (2.0 / tau**2) * (linex_loss(delta, clip) * valid).mean()


@register_method("cgql_linex")
class CGQLAgent(Agent):
    """Holds v_β (``actor``), the noise-level critic Q_φ(s, a, u) and its EMA target; acts with eq. 72's velocity."""

    Options = CGQLOptions
    progress_keys = ("critic/loss", "critic/noisy_loss", "actor/bc_loss")

    def __init__(self, actor: FlowPolicy, critic: nn.Module, cfg: FinetuneConfig):
        super().__init__()
        self.cfg, self.flow_steps, self.spec = cfg, cfg.flow_steps, actor.spec
        self.opts: CGQLOptions = self.parse_options(cfg.method_options)
        self.actor, self.critic = actor, critic
        self.target_critic = copy.deepcopy(critic).requires_grad_(False)

    @classmethod
    def build(cls, cfg: FinetuneConfig, policy: FlowPolicy, data: Any, critic: nn.Module | None = None) -> Agent:
        """v_β starts as a copy of the prior; the critic is a Q ensemble over [obs, chunk, u] unless given (one
        passed in must take ``(obs, flat chunk, u)`` and return (K, B))."""
        c = cfg.critic
        critic = critic or NoiseLevelQEnsemble(data.obs_dim, policy.spec.flat_dim, c.num_critics, c.width, c.depth,
                                               c.layer_norm, init=cfg.conventions.init)
        return cls(copy.deepcopy(policy), critic, cfg)

    def noise_spec(self, batch: int) -> dict[str, Noise]:
        """The TD target ODE's x0 at s', the noisy regression's z and u, the BC noise and times."""
        d = self.spec.flat_dim
        return {"target_x0": Noise((batch, d)), "noisy_z": Noise((batch, d)), "noisy_u": Noise((batch,), "uniform"),
                "bc_x0": Noise((batch, d)), "bc_t": Noise((batch,), "uniform")}

    # -- the guided velocity ---------------------------------------------------------------------------------
    def guidance_network(self) -> nn.Module:
        return self.target_critic if self.opts.guidance_critic == "target" else self.critic

    def guided_velocity_fn(self, obs: Any, norms: list[Tensor] | None = None) -> VelocityFn:
        """v(x, u) = v_β + ϑ v̂ (eq. 72) at states ``obs``; ϑ = 0 is v_β itself. ``norms`` collects mean ‖ϑ v̂‖."""
        v_beta = self.actor.velocity_fn(self.actor.condition(obs))
        o = self.opts
        if o.guidance == 0:
            return v_beta
        h, critic = 1.0 / self.flow_steps, self.guidance_network()

        def v(x: Tensor, t: Tensor) -> Tensor:
            base = v_beta(x, t)
            if o.guidance_start == "shift":
                u = t + h
            elif float(t.min()) <= 0.0:  # "t1": no guidance where u = 0
                return base
            else:
                u = t
            g = guidance_term(critic, obs, x, u, o.tau, o.guidance)
            if norms is not None:
                norms.append(g.norm(dim=-1).mean())
            return base + g

        return v

    @torch.no_grad()
    def sample_guided(self, obs: Any, x0: Tensor, norms: list[Tensor] | None = None) -> Tensor:
        """clip(ODE(v(s, ·, ·), x0)), flat (B, D): the acting policy π_v and the TD backup's next action."""
        return sample_ode(self.guided_velocity_fn(obs, norms), x0, self.flow_steps).clamp(-1.0, 1.0)

    # -- the losses ---------------------------------------------------------------------------------------------
    def critic_objective(self, batch: dict[str, Any], target_x0: Tensor, z: Tensor,
                         u: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(TD loss at u = 1 with the guided a' at s' (eq. 62), scaled Linex regression at a^u (eqs. 64, 70))."""
        c, o = self.cfg.critic, self.opts
        obs, actions, valid = batch["observations"], batch["actions"], batch["valid"]
        ones = actions.new_ones(actions.shape[0])
        norms: list[Tensor] = []
        with torch.no_grad():
            s_next = batch["next_observations"]
            a_next = self.sample_guided(s_next, target_x0, norms)
            y = td_target(batch["rewards"], batch["masks"], self.target_critic(s_next, a_next, ones),
                          c.discount, c.rho)
            q_bar = self.target_critic(obs, actions, ones)                      # Q̄(s, a, 1), per member
        q = self.critic(obs, actions, ones)
        td = critic_loss(q, y, valid)
        a_u = (1.0 - u[:, None]) * z + u[:, None] * actions.flatten(1)          # a^u = (1 − u) z + u a
        q_u = self.critic(obs, a_u, u)
        noisy = noisy_regression_loss(q_u, q_bar, o.tau, valid, o.linex_clip)
        metrics = {"critic/loss": td.detach(), "critic/q_mean": q.detach().mean(), "critic/target_mean": y.mean(),
                   "critic/noisy_loss": noisy.detach(), "critic/noisy_q_mean": q_u.detach().mean(),
                   "critic/noisy_gap": (q_u.detach() - q_bar).mean(),
                   "actor/action_abs": a_next.abs().mean(),
                   "actor/guidance_norm": torch.stack(norms).mean() if norms else a_next.new_zeros(())}
        return td, noisy, metrics

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """TD + ϱ · Linex on the critic (eq. 71 with eq. 70's Linex) + flow matching of v_β."""
        td, noisy, metrics = self.critic_objective(batch, noise["target_x0"], noise["noisy_z"], noise["noisy_u"])
        bc = bc_flow_matching(self.actor, batch, noise["bc_x0"], noise["bc_t"], self.cfg.conventions)
        metrics["actor/bc_loss"] = bc.detach()
        return td + self.opts.noisy_weight * noisy + bc, metrics

    @torch.no_grad()
    def after_step(self, metrics: dict[str, float], step: int) -> None:
        soft_update(self.target_critic, self.critic, self.cfg.critic.target_tau)

    # -- acting ----------------------------------------------------------------------------------------------
    def act(self, obs: Any, generator: torch.Generator | None = None) -> Tensor:
        """π_v: the guided velocity's clipped Euler ODE from x0 ~ N(0, I) (``FlowPolicy.draw_noise``)."""
        x = self.sample_guided(obs, self.actor.draw_noise(obs, generator))
        return x.view(-1, self.spec.horizon, self.spec.action_dim)

    def make_actor(self, seed: int = 0) -> FlowActor:
        """The agent itself acts (the guidance needs the critic); ``act`` enables grad for ∇_x Q."""
        return AgentActor(self, seed)
