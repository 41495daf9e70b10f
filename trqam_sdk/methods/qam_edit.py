"""QAM-E (QAM paper §4 eq. 30, App. C.1 "FEdit"; SPEC §4): QAM plus a residual tanh-Gaussian edit policy.

The flow v_θ is fine-tuned exactly as by QAM (fixed Λ = 1/τ, τ = ``qam_tau``). On top, an edit policy
π_ω(Δa | s, ã), Δa ∈ [−1, 1]^D, refines the flow's clipped ODE sample ã: the action is clip(ã + σ_a Δa), so
the edit stays within ±σ_a. π_ω is trained by entropy-regularised SAC against the critic,
E[α log π_ω(Δa | s, ã) − Q(s, clip(ã + σ_a Δa))], with α tuned towards a target entropy; the critic's target
uses the edited action at s' (eq. 79's analog). σ_a = 0 *is* QAM (Table 5): no edit network, no α, no extra
noise or metrics, so a σ_a = 0 run equals a ``qam`` run bit for bit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.core.squashed import gaussian_params, tanh_gaussian_sample, temperature_loss
from trqam_sdk.methods.base import AgentActor, FlowActor, Noise
from trqam_sdk.methods.critics import build_critic, frozen_call
from trqam_sdk.methods.registry import register_method
from trqam_sdk.methods.trqam import QAMAgent
from trqam_sdk.networks.mlp import MLP, QEnsemble
from trqam_sdk.schema import ranged


@dataclass
class QAMEditOptions:
    sigma_a: float = ranged(0.1, ge=0)
    """σ_a, the edit's L∞ radius: a = clip(ã + σ_a Δa), Δa ∈ [−1, 1] (QAM Table 4 "QAM-Edit (τ, σ_a)"; its τ is
    ``qam_tau``); 0 is plain QAM"""
    target_entropy: float | None = ranged(None)
    """H̄, the SAC target entropy of Δa (in [−1, 1]^D units, independent of σ_a), any finite value; None: −0.5 · D
    (D = H·A)"""
    init_alpha: float = ranged(1.0, gt=0)
    """α at the start (the SAC temperature, tuned towards ``target_entropy`` through log α)"""
    act_sample: bool = True
    """act with a sampled edit Δa ~ π_ω (the paper's acting rule, and the same actor collects online data, where
    the exploration counts); False: the deterministic tanh(mean)"""
    edit_width: int | None = ranged(None, ge=1)
    """hidden width of π_ω's MLP; None: the policy's (``policy.width``)"""
    edit_depth: int | None = ranged(None, ge=1)
    """hidden layers of π_ω's MLP; None: the policy's (``policy.depth``)"""


class EditPolicy(nn.Module):
    """π_ω(Δa | s, ã): a tanh-squashed Gaussian over the D flat chunk dims, from an MLP over [obs, ã]."""

    def __init__(self, obs_dim: int, flat_dim: int, width: int, depth: int, layer_norm: bool, init: Any):
        super().__init__()
        self.net = MLP(obs_dim + flat_dim, 2 * flat_dim, width, depth, layer_norm, init)

    def params(self, obs: Tensor, a_tilde: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and bounded log σ of the pre-tanh Gaussian."""
        return gaussian_params(self.net(torch.cat([obs, a_tilde], dim=-1)))

    def sample(self, obs: Tensor, a_tilde: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised Δa = tanh(μ + σ ε) ∈ [−1, 1]^D and log π_ω(Δa | s, ã) per row."""
        mean, log_std = self.params(obs, a_tilde)
        return tanh_gaussian_sample(mean, log_std, eps)

    def mode(self, obs: Tensor, a_tilde: Tensor) -> Tensor:
        """The deterministic edit tanh(μ)."""
        return torch.tanh(self.params(obs, a_tilde)[0])


@register_method("qam_edit")
class QAMEditAgent(QAMAgent):
    """QAM's agent (``actor`` = v_θ, the policy saved alone) plus ``edit`` (π_ω) and ``log_alpha`` when σ_a > 0."""

    Options = QAMEditOptions
    progress_keys = ("critic/loss", "actor/adj_loss", "actor/edit_abs", "actor/alpha")

    def __init__(self, actor: FlowPolicy, base: FlowPolicy, critic: QEnsemble | nn.Module, cfg: FinetuneConfig,
                 obs_dim: int | None = None):
        super().__init__(actor, base, critic, cfg)
        self.opts: QAMEditOptions = self.parse_options(cfg.method_options)
        self.sigma_a = float(self.opts.sigma_a)
        self.edit: EditPolicy | None = None
        if self.sigma_a > 0:  # σ_a = 0 is QAM itself: build nothing more
            if obs_dim is None:
                raise ValueError("qam_edit with sigma_a > 0 needs flat observations (obs_dim) for its edit policy")
            p, d = cfg.policy, self.spec.flat_dim
            self.edit = EditPolicy(obs_dim, d, self.opts.edit_width or p.width, self.opts.edit_depth or p.depth,
                                   p.layer_norm, cfg.conventions.init)
            self.log_alpha = nn.Parameter(torch.tensor(math.log(self.opts.init_alpha)))
            te = self.opts.target_entropy
            self.target_entropy = -0.5 * d if te is None else float(te)

    @classmethod
    def build(cls, cfg: FinetuneConfig, policy: FlowPolicy, data: Any, critic: nn.Module | None = None) -> QAMEditAgent:
        """QAM's networks (built in QAM's order, so σ_a = 0 draws the same initial weights), then π_ω."""
        critic = build_critic(cfg, data, policy.spec.flat_dim, critic)
        sigma_a = cls.parse_options(cfg.method_options).sigma_a
        obs_dim = data.obs_dim if sigma_a > 0 else None
        return cls(copy.deepcopy(policy), copy.deepcopy(policy), critic, cfg, obs_dim)

    # -- randomness ---------------------------------------------------------------------------------------
    def noise_spec(self, batch: int) -> dict[str, Noise]:
        """QAM's noise, then (σ_a > 0) the flow noise of ã at s, the edit's ε at s and the target edit's ε at s'."""
        spec = super().noise_spec(batch)
        if self.edit is not None:
            d = self.spec.flat_dim
            spec.update({"edit_x0": Noise((batch, d)), "edit_eps": Noise((batch, d)),
                         "target_edit_eps": Noise((batch, d))})
        return spec

    # -- ã, the edit and the edited action ------------------------------------------------------------------
    # ã = self.flow_action(obs, x0) (TRQAMAgent's): clip(ODE(v_θ(s, ·, ·), x0)), detached, so the edit never
    # trains v_θ

    def edited(self, a_tilde: Tensor, delta: Tensor) -> Tensor:
        """clip(ã + σ_a Δa, −1, 1)."""
        return (a_tilde + self.sigma_a * delta).clamp(-1.0, 1.0)

    def target_action(self, s_next: Any, target_x0: Tensor, noise: dict[str, Tensor] | None = None) -> Tensor:
        """eq. 79: a' = clip(ã' + σ_a Δa'), ã' = clip(ODE(v_θ, z) at s'), Δa' ~ π_ω(· | s', ã') (sampled)."""
        a_tilde = self.flow_action(s_next, target_x0)
        if self.edit is None:
            return a_tilde
        if noise is None or "target_edit_eps" not in noise:
            raise ValueError("qam_edit's target action needs the update's noise['target_edit_eps']")
        with torch.no_grad():
            delta, _ = self.edit.sample(s_next, a_tilde, noise["target_edit_eps"])
        return self.edited(a_tilde, delta)

    # -- the edit's SAC objective ----------------------------------------------------------------------------
    def edit_objective(self, obs: Tensor, a_tilde: Tensor, eps: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """E[α log π_ω(Δa|s,ã) − mean_k Q_k(s, clip(ã + σ_a Δa))] + SAC's temperature loss.

        The critic is evaluated with detached parameters (no gradient into it), ã is detached (none into v_θ),
        α is detached in the actor term, and the temperature loss moves log α only."""
        assert self.edit is not None
        delta, log_prob = self.edit.sample(obs, a_tilde.detach(), eps)
        action = self.edited(a_tilde.detach(), delta)
        q = frozen_call(self.critic, obs, action.view(action.shape[0], self.spec.horizon, -1)).mean(dim=0)
        alpha = self.log_alpha.exp()
        edit_loss = (alpha.detach() * log_prob - q).mean()
        alpha_loss = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
        metrics = {"actor/edit_loss": edit_loss.detach(), "actor/edit_q": q.detach().mean(),
                   "actor/edit_abs": (self.sigma_a * delta).detach().abs().mean(),
                   "actor/alpha": alpha.detach(), "actor/alpha_loss": alpha_loss.detach(),
                   "actor/entropy": -log_prob.detach().mean()}
        return edit_loss + alpha_loss, metrics

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """QAM's loss (critic on the edited a', BC of the base, adjoint matching of v_θ) plus the edit's SAC."""
        total, metrics = super().loss(batch, noise)
        if self.edit is None:
            return total, metrics
        obs = batch["observations"]
        edit_total, edit_metrics = self.edit_objective(obs, self.flow_action(obs, noise["edit_x0"]),
                                                       noise["edit_eps"])
        metrics.update(edit_metrics)
        return total + edit_total, metrics

    # -- acting ------------------------------------------------------------------------------------------------
    def act(self, obs: Any, generator: torch.Generator | None = None) -> Tensor:
        """ã from v_θ's clipped ODE, then clip(ã + σ_a Δa), Δa sampled (``act_sample``) or tanh(μ)."""
        if self.edit is None:
            return super().act(obs, generator)
        a_tilde = self.flow_action(obs, self.actor.draw_noise(obs, generator))
        b = a_tilde.shape[0]
        with torch.no_grad():
            if self.opts.act_sample:
                delta, _ = self.edit.sample(obs, a_tilde, self.actor.draw_noise(obs, generator))
            else:
                delta = self.edit.mode(obs, a_tilde)
        return self.edited(a_tilde, delta).view(b, self.spec.horizon, self.spec.action_dim)

    def make_actor(self, seed: int = 0) -> FlowActor:
        """σ_a > 0: the agent (the edit needs π_ω); σ_a = 0: QAM's flow actor."""
        return AgentActor(self, seed) if self.edit is not None else super().make_actor(seed)
