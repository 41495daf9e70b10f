"""DSRL (Wagenmaker et al., 2025) as the QAM paper ran it (App. C.1, eqs 80–83): RL in the noise space of a BC flow.

A tanh-squashed Gaussian π_ω(z | s), z ∈ [−σ_z, σ_z]^D over the flow's whole flattened chunk (D = H·A), is trained
by SAC with entropy tuning against a *distilled noise-space critic* Q^z_ψ(s, z) ≈ Q_φ(s, clip(ODE(v_θ̃, z))). The
BC flow v_θ keeps training by flow matching (the QAM paper's modification), and every action — acting, the TD
target's a', the distillation target — decodes the noise through its EMA target v_θ̃, the paper's "one important
implementation detail for stability". ``policy/`` holds v_θ; acting needs π_ω and v_θ̃ too (``make_actor``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.core.flow import sample_ode
from trqam_sdk.core.pytree import Cond, repeat_condition
from trqam_sdk.core.squashed import gaussian_params, tanh_gaussian_sample, temperature_loss
from trqam_sdk.core.targets import soft_update
from trqam_sdk.methods.base import Agent, AgentActor, FlowActor, Noise
from trqam_sdk.methods.bc import bc_flow_matching
from trqam_sdk.methods.critics import build_critic, chunked_td_loss, frozen_call
from trqam_sdk.methods.registry import register_method
from trqam_sdk.networks.encoders import EncodedQEnsemble
from trqam_sdk.networks.mlp import MLP, QEnsemble
from trqam_sdk.schema import ConfigBase, ranged


@dataclass
class DSRLOptions(ConfigBase):
    """``method_options`` of ``dsrl`` (docs/methods/dsrl.md explains each choice)."""

    sigma_z: float = ranged(1.0, gt=0)
    """σ_z: the noise policy's box [−σ_z, σ_z]^D (QAM Table 4: 0.4 scene … 1.4 cube-triple/quadruple)"""
    target_flow_tau: float = ranged(0.005, gt=0, le=1)
    """EMA rate of the target BC flow v_θ̃ that decodes every noise into an action"""
    target_entropy: float | None = ranged(None)
    """H̄ of the entropy constraint (80), in nats of the unit-box noise z/σ_z, any finite value; None:
    −target_entropy_scale · D"""
    target_entropy_scale: float = ranged(0.5, ge=0)
    """the default H̄ = −scale · D (D = H·A, the noise dims)"""
    init_alpha: float = ranged(1.0, gt=0)
    """the SAC temperature α at step 0 (log α is the trained parameter)"""
    distill_noise: Literal["normal", "policy", "both"] = "normal"
    """z of the distillation (82): N(0, I) as the paper writes it, the policy's own z (detached), or both"""
    distill_flow: Literal["target", "online"] = "target"
    """the flow decoding z in the distillation target: v_θ̃ (what acting uses) or the online v_θ"""
    distill_critic: Literal["online", "target"] = "online"
    """the ensemble whose mean is the distillation target Q_φ: the online critic or its EMA target"""
    eval_noise: Literal["sample", "mean"] = "sample"
    """acting: z ~ π_ω (the paper; it is also the online collector's exploration) or σ_z · tanh(mean)"""
    train_flow: bool = True
    """fine-tune v_θ by flow matching (the QAM paper's DSRL); False: the original DSRL's frozen BC flow"""


class NoisePolicy(nn.Module):
    """π_ω(z | s): observation features → MLP → (μ, log σ) of the pre-tanh Gaussian over the D noise dims.

    ``encoder`` maps dict observations (a VLA's images + state) to features; None for flat observations."""

    def __init__(self, encoder: nn.Module | None, feature_dim: int, noise_dim: int, width: int, depth: int,
                 layer_norm: bool = False, init: Any = "lecun_normal"):
        super().__init__()
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.net = MLP(feature_dim, 2 * noise_dim, width, depth, layer_norm, init)

    def forward(self, obs: Any) -> tuple[Tensor, Tensor]:
        return gaussian_params(self.net(self.encoder(obs)))


@register_method("dsrl")
class DSRLAgent(Agent):
    """Holds v_θ (``actor``, the saved policy), its EMA v_θ̃ (``target_actor``), π_ω (``noise_actor``),
    Q^z_ψ (``noise_critic``), Q_φ (``critic``) and its target, and log α."""

    Options = DSRLOptions
    progress_keys = ("critic/loss", "actor/noise_q", "actor/alpha")

    def __init__(self, actor: FlowPolicy, critic: nn.Module, noise_actor: NoisePolicy, noise_critic: nn.Module,
                 cfg: FinetuneConfig):
        super().__init__()
        self.cfg, self.flow_steps, self.spec = cfg, cfg.flow_steps, actor.spec
        self.opts: DSRLOptions = self.parse_options(cfg.method_options)
        self.actor, self.critic = actor, critic
        self.target_actor = copy.deepcopy(actor).requires_grad_(False)
        self.target_critic = copy.deepcopy(critic).requires_grad_(False)
        self.noise_actor, self.noise_critic = noise_actor, noise_critic
        if not self.opts.train_flow:
            self.actor.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(self.opts.init_alpha)))
        d = self.spec.flat_dim
        o = self.opts
        self.target_entropy = o.target_entropy if o.target_entropy is not None else -o.target_entropy_scale * d

    @classmethod
    def build(cls, cfg: FinetuneConfig, policy: FlowPolicy, data: Any, critic: nn.Module | None = None) -> Agent:
        """v_θ starts as a copy of the prior. π_ω and Q^z_ψ see the observations as the critic does: flat vectors,
        or (a VLA critic, ``EncodedQEnsemble``) through their own trainable copies of the critic's encoder."""
        c, d = cfg.critic, policy.spec.flat_dim
        encoder = getattr(critic, "encoder", None)
        init = cfg.conventions.init
        if encoder is not None:
            feat = int(encoder.feature_dim)
            noise_actor = NoisePolicy(copy.deepcopy(encoder), feat, d, c.width, c.depth, cfg.policy.layer_norm, init)
            noise_critic: nn.Module = EncodedQEnsemble(copy.deepcopy(encoder), feat, d, c.num_critics, c.width,
                                                       c.depth, c.layer_norm)
        elif isinstance(data.observations, dict):
            raise ValueError("dsrl with dict observations needs a critic with an `encoder` (e.g. "
                             "trqam_sdk.networks.encoders.vla_critic): its noise policy and noise critic copy it")
        else:
            critic = build_critic(cfg, data, d, critic)
            noise_actor = NoisePolicy(None, data.obs_dim, d, c.width, c.depth, cfg.policy.layer_norm, init)
            noise_critic = QEnsemble(data.obs_dim, d, c.num_critics, c.width, c.depth, c.layer_norm, init=init)
        return cls(copy.deepcopy(policy), critic, noise_actor, noise_critic, cfg)

    # -- the two maps every term uses -------------------------------------------------------------------------
    def noise(self, obs: Any, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised z = σ_z tanh(μ + σ ε) ~ π_ω(· | s) and log π of the unit-box noise z / σ_z.

        ``tanh_gaussian_sample`` gives the density of z itself; adding D log σ_z measures it on z / σ_z, so the
        entropy target means the same for every σ_z (the gradient in ω is unchanged: a constant)."""
        mean, log_std = self.noise_actor(obs)
        z, log_prob = tanh_gaussian_sample(mean, log_std, eps, bound=self.opts.sigma_z)
        return z, log_prob + self.spec.flat_dim * math.log(self.opts.sigma_z)

    @torch.no_grad()
    def decode(self, obs: Any, z: Tensor, flow: FlowPolicy | None = None, cond: Cond = None) -> Tensor:
        """a = clip(ODE(v(s, ·, ·), z)) as (B, H, A) chunks; ``flow`` defaults to the target flow v_θ̃."""
        flow = self.target_actor if flow is None else flow
        cond = flow.condition(obs) if cond is None else cond
        a = sample_ode(flow.velocity_fn(cond), z, self.flow_steps).clamp(self.spec.low, self.spec.high)
        return a.view(-1, self.spec.horizon, self.spec.action_dim)

    # -- randomness: drawn by the finetuner from (seed, step) ------------------------------------------------
    def noise_spec(self, batch: int) -> dict[str, Noise]:
        """BC noise and times; the ε of z' ~ π_ω(s'), of the actor's z ~ π_ω(s); the distillation's z ~ N(0, I)."""
        d = self.spec.flat_dim
        return {"bc_x0": Noise((batch, d)), "bc_t": Noise((batch,), "uniform"), "next_eps": Noise((batch, d)),
                "actor_eps": Noise((batch, d)), "distill_z": Noise((batch, d))}

    # -- the losses -------------------------------------------------------------------------------------------
    def critic_objective(self, batch: dict[str, Any], next_eps: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(83) with (26): y = R + γ^H m (mean − ρ std) Q̄(s', a'), a' = clip(ODE(v_θ̃(s'), z')), z' ~ π_ω(s')."""
        with torch.no_grad():
            s_next = batch["next_observations"]
            z_next, _ = self.noise(s_next, next_eps)
            a_next = self.decode(s_next, z_next)
        return chunked_td_loss(self.critic, self.target_critic, batch, a_next.view_as(batch["actions"]),
                               self.cfg.critic)

    def distill_objective(self, obs: Any, z_normal: Tensor, z_policy: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(82): every member of Q^z_ψ(s, z) regressed to mean_k Q_φ,k(s, clip(ODE(v, z))), the target detached."""
        o = self.opts
        z = {"normal": z_normal, "policy": z_policy.detach(),
             "both": torch.cat([z_normal, z_policy.detach()])}[o.distill_noise]
        reps = z.shape[0] // z_normal.shape[0]
        flow = self.target_actor if o.distill_flow == "target" else self.actor
        q_net = self.critic if o.distill_critic == "online" else self.target_critic
        obs_z = repeat_condition(obs, reps) if reps > 1 else obs
        with torch.no_grad():
            cond = flow.condition(obs)
            a = self.decode(obs, z, flow, repeat_condition(cond, reps) if reps > 1 else cond)
            target = q_net(obs_z, a).mean(dim=0)
        qz = self.noise_critic(obs_z, z)
        loss = (qz - target.detach()).square().mean()
        return loss, {"critic/noise_critic_loss": loss.detach(), "critic/noise_q_mean": qz.detach().mean(),
                      "critic/distill_target_mean": target.mean()}

    def noise_policy_objective(self, obs: Any, eps: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
        """(81) with SAC's entropy term: E_z[α log π_ω(z|s) − Q^z_ψ(s, z)] (gradient into ω only: α and Q^z_ψ's
        weights detached), and the temperature loss (80) on log α alone. Returns (actor loss, α loss, metrics, z)."""
        z, log_prob = self.noise(obs, eps)
        alpha = self.log_alpha.exp()
        q_z = frozen_call(self.noise_critic, obs, z).mean(dim=0)
        loss = (alpha.detach() * log_prob - q_z).mean()
        alpha_loss = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
        metrics = {"actor/loss": loss.detach(), "actor/noise_q": q_z.detach().mean(),
                   "actor/entropy": -log_prob.detach().mean(), "actor/alpha": alpha.detach(),
                   "actor/alpha_loss": alpha_loss.detach(), "actor/z_abs": z.detach().abs().mean()}
        return loss, alpha_loss, metrics, z

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Critic TD + flow-matching BC of v_θ + noise policy + temperature + noise-critic distillation."""
        obs = batch["observations"]
        q_loss, metrics = self.critic_objective(batch, noise["next_eps"])
        if self.opts.train_flow:
            bc_loss = bc_flow_matching(self.actor, batch, noise["bc_x0"], noise["bc_t"], self.cfg.conventions)
        else:
            bc_loss = q_loss.new_zeros(())
        pi_loss, alpha_loss, actor_metrics, z_policy = self.noise_policy_objective(obs, noise["actor_eps"])
        distill_loss, distill_metrics = self.distill_objective(obs, noise["distill_z"], z_policy)
        metrics.update(actor_metrics)
        metrics.update(distill_metrics)
        metrics["actor/bc_loss"] = bc_loss.detach()
        return q_loss + bc_loss + pi_loss + alpha_loss + distill_loss, metrics

    # -- after the optimiser step -----------------------------------------------------------------------------
    def after_step(self, metrics: dict[str, float], step: int) -> None:
        """EMA of the action critic (cfg.critic.target_tau) and of the BC flow (target_flow_tau)."""
        soft_update(self.target_critic, self.critic, self.cfg.critic.target_tau)
        if self.opts.train_flow:
            soft_update(self.target_actor, self.actor, self.opts.target_flow_tau)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """With a frozen BC flow its target copy never changes: rebuilt from the prior on resume."""
        return () if self.opts.train_flow else ("target_actor.",)

    # -- acting -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Any, generator: torch.Generator | None = None) -> Tensor:
        """z from π_ω (sampled with ``generator``, or σ_z tanh(μ) with ``eval_noise: mean``), then
        a = clip(ODE(v_θ̃(s, ·, ·), z)): (B, H, A) chunks in the box."""
        if self.opts.eval_noise == "mean":
            mean, _ = self.noise_actor(obs)
            z = self.opts.sigma_z * torch.tanh(mean)
        else:
            z, _ = self.noise(obs, self.actor.draw_noise(obs, generator))
        return self.decode(obs, z)

    def make_actor(self, seed: int = 0) -> FlowActor:
        """Actions need π_ω and v_θ̃, not the saved v_θ alone."""
        return AgentActor(self, seed)
