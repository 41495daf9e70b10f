"""TRQAM (paper Algorithm 3) and its variants QAM and QAM + External KL, as registered methods.

The agent holds the critic, the concurrently BC-trained base, its EMA reference and the adjoint-matching actor
loss. A variant overrides one hook: :meth:`TRQAMAgent.temperature` (the Λ that enters the SDE),
:meth:`TRQAMAgent.extra_loss` (added to the actor loss) and ``uses_dual`` (whether λ follows the dual).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.core.dual import DualState, budget_at, dual_update
from trqam_sdk.core.flow import (
    lean_adjoint,
    memoryless_g,
    sample_memoryless,
    sample_memoryless_tracked,
    sample_ode,
    time_grid,
)
from trqam_sdk.core.losses import adjoint_matching_loss, path_kl
from trqam_sdk.core.pytree import Cond, repeat_condition
from trqam_sdk.core.targets import soft_update
from trqam_sdk.methods.base import Agent, Noise
from trqam_sdk.methods.bc import bc_flow_matching
from trqam_sdk.methods.critics import build_critic, chunked_td_loss
from trqam_sdk.methods.registry import register_method
from trqam_sdk.networks.mlp import QEnsemble


def terminal_adjoint(critic: nn.Module, obs: Any, x: Tensor, horizon: int) -> Tensor:
    """a_T = -∇_x mean_k Q_k(s, clip(x, -1, 1)): components outside the box get zero gradient (SPEC §3.2)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        chunk = x.clamp(-1.0, 1.0).view(x.shape[0], horizon, -1)
        q = critic(obs, chunk).mean(dim=0).sum()
        (grad,) = torch.autograd.grad(q, x)
    return -grad


class _GivenCondition:
    """``policy`` whose ``condition`` returns one already computed (the BC reuses v_θ's shared frozen prefix)."""

    def __init__(self, policy: FlowPolicy, cond: Cond):
        self.policy, self.cond, self.spec = policy, cond, policy.spec

    def condition(self, obs: Any) -> Cond:
        return self.cond

    def velocity(self, cond: Cond, x: Tensor, t: Tensor) -> Tensor:
        return self.policy.velocity(cond, x, t)


@register_method("trqam")
class TRQAMAgent(Agent):
    """Holds v_θ (``actor``), the BC-trained base, its EMA reference, the critic ensemble and its target.

    ``loss`` returns the summed loss of one update and its metrics, so that the whole update runs inside one
    DDP forward/backward. ``lam`` and ``kl_ema`` are buffers: checkpointed state.
    """

    uses_dual: bool = True
    """λ follows the projected dual descent (TRQAM; λ_ext for QAM + External KL); False freezes it (QAM)"""
    progress_keys = ("dual/kl_ema", "dual/lam", "critic/loss")
    reuse_rollout_velocity: bool = True
    """Keep v_θ(x_i, t_i) from the SDE rollout (with its graph) for the loss instead of re-evaluating it on
    the trajectory, and reuse the rollout's last reference step: identical values, fewer passes."""

    def __init__(self, actor: FlowPolicy, base: FlowPolicy, critic: QEnsemble | nn.Module, cfg: FinetuneConfig):
        super().__init__()
        self.cfg, self.flow_steps = cfg, cfg.flow_steps
        self.spec = actor.spec
        self.actor = actor  # registration order actor, base, critic, ref fixes the parameter order (Adam, grad norm)
        if cfg.reference == "frozen":
            # base and reference never change and are equal: hold ONE frozen network for both. A VLA merges
            # its LoRA away there (freeze_as_reference), so the reference passes pay no adapter branches.
            freeze = getattr(base, "freeze_as_reference", None)
            self.base = freeze() if freeze is not None else base.requires_grad_(False)
            self.ref = self.base
        else:
            self.base = base
        self.critic = critic
        if cfg.reference != "frozen":
            self.ref = copy.deepcopy(base).requires_grad_(False)
        self.target_critic = copy.deepcopy(critic).requires_grad_(False)
        # a VLA whose frozen prefix is shared by v_θ and the reference computes the prefix once for both
        self.share_condition = actor.same_condition_as(self.ref)
        # ... and, with an EMA reference, for the BC of the base too (the base's prefix is frozen as well)
        self.share_base_condition = cfg.reference == "ema" and self.share_condition and \
            actor.same_condition_as(self.base)
        tr = cfg.trust_region
        self.register_buffer("lam", torch.tensor(tr.lam_init, dtype=torch.float64))
        self.register_buffer("kl_ema", torch.tensor(0.0, dtype=torch.float64))

    @classmethod
    def build(cls, cfg: FinetuneConfig, policy: FlowPolicy, data: Any, critic: nn.Module | None = None) -> Agent:
        """v_θ and the base start as copies of the prior; the critic is a Q ensemble over [obs, chunk] unless
        given (a VLA passes one with an observation encoder)."""
        critic = build_critic(cfg, data, policy.spec.flat_dim, critic)
        return cls(copy.deepcopy(policy), copy.deepcopy(policy), critic, cfg)

    # -- the hooks a variant overrides -----------------------------------------------------------------------
    def temperature(self) -> Tensor:
        """Λ of the tilt π_ref · exp(Q / Λ): TRQAM's Λ = lam_scale · λ (SPEC §3.4)."""
        return (self.cfg.trust_region.lam_scale * self.lam).float()

    def extra_loss(self, kl: Tensor) -> Tensor:
        """Added to the adjoint-matching loss (per-row path KL ``kl``); TRQAM adds nothing."""
        return kl.new_zeros(())

    def frozen_prefixes(self) -> tuple[str, ...]:
        """A frozen reference (and its unused base) never changes: the prior rebuilds it on resume."""
        return ("base.", "ref.") if self.cfg.reference == "frozen" else ()

    # -- randomness: drawn by the finetuner from the (seed, step) generator, so runs replay exactly -----
    def noise_spec(self, batch: int) -> dict[str, Noise]:
        """x0 and the SDE increments of the rollout, the target ODE's x0 at s', the BC noise and times."""
        d, t = self.spec.flat_dim, self.cfg.flow_steps
        return {"x0": Noise((batch, d)), "sde": Noise((t - 1, batch, d), batch_dim=1),
                "target_x0": Noise((batch, d)), "bc_x0": Noise((batch, d)), "bc_t": Noise((batch,), "uniform")}

    # -- the three losses --------------------------------------------------------------------------------
    @torch.no_grad()
    def flow_action(self, obs: Any, x0: Tensor) -> Tensor:
        """clip(ODE sample of v_θ at ``obs`` from ``x0``), flat (B, D), detached."""
        return sample_ode(self.actor.velocity_fn(self.actor.condition(obs)), x0, self.cfg.flow_steps).clamp(-1.0, 1.0)

    def target_action(self, s_next: Any, target_x0: Tensor, noise: dict[str, Tensor] | None = None) -> Tensor:
        """a' of the TD target, flat (B, D), no gradient: :meth:`flow_action` at s' (SPEC §5). A variant that acts
        with more than v_θ (QAM-E's edit) overrides it; ``noise`` is the update's noise."""
        return self.flow_action(s_next, target_x0)

    def critic_objective(self, batch: dict[str, Tensor], target_x0: Tensor,
                         noise: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """TD on chunks: y = R + γ^H m (mean - ρ std) of Q̄ at a' = :meth:`target_action` at s' (SPEC §5)."""
        with torch.no_grad():
            a_next = self.target_action(batch["next_observations"], target_x0, noise)
        return chunked_td_loss(self.critic, self.target_critic, batch, a_next.view_as(batch["actions"]),
                               self.cfg.critic)

    def bc_objective(self, batch: dict[str, Tensor], x0: Tensor, t: Tensor, *, cond: Cond = None) -> Tensor:
        """Flow matching of the base on dataset chunks (the BC method's loss), padded steps masked out; ``cond``
        is the base's condition at the batch's observations when already computed (a shared frozen prefix)."""
        base = self.base if cond is None else _GivenCondition(self.base, cond)
        return bc_flow_matching(base, batch, x0, t, self.cfg.conventions)  # type: ignore[arg-type]

    def actor_objective(self, obs: Any, x0: Tensor, sde_noise: Tensor, *,
                        cond: Cond = None) -> tuple[Tensor, Tensor, dict]:
        """Algorithm 3's policy update: SDE rollout (12), lean adjoint (13), adjoint matching (14), KL (15).

        v_θ(x_i, t_i) comes from the rollout (``reuse_rollout_velocity``) rather than a second pass; ``cond`` is
        v_θ's condition at ``obs`` when the caller already computed it."""
        T, B, D = self.cfg.flow_steps, x0.shape[0], self.spec.flat_dim  # obs may be a dict (VLA)
        h = 1.0 / T
        cond_ft = self.actor.condition(obs) if cond is None else cond
        cond_ref = cond_ft if self.share_condition else self.ref.condition(obs)
        v_ft, v_ref = self.actor.velocity_fn(cond_ft), self.ref.velocity_fn(cond_ref)

        ts = time_grid(T, x0.device)
        if self.reuse_rollout_velocity:
            xs, vf, v_last = sample_memoryless_tracked(v_ft, v_ref, x0, sde_noise)     # (12)
        else:
            xs = sample_memoryless(v_ft, v_ref, x0, sde_noise)                         # (12)
        a_T = terminal_adjoint(self.target_critic, obs, xs[-1], self.spec.horizon)
        adj = lean_adjoint(v_ref, xs[:-1], a_T)                                    # (13)

        g = memoryless_g(ts, h)
        sigma = g / torch.sqrt(self.temperature())
        if self.reuse_rollout_velocity:
            with torch.no_grad():
                head = [self.ref.velocity(repeat_condition(cond_ref, T - 1), xs[:T - 1].reshape(-1, D),
                                          ts[:-1].repeat_interleave(B)).view(T - 1, B, D)] if T > 1 else []
                vr = torch.cat([*head, v_last[None]])
        else:
            x_flat, t_flat = xs[:-1].reshape(T * B, D), ts.repeat_interleave(B)
            vf = self.actor.velocity(repeat_condition(cond_ft, T), x_flat, t_flat).view(T, B, D)
            with torch.no_grad():
                vr = self.ref.velocity(repeat_condition(cond_ref, T), x_flat, t_flat).view(T, B, D)
        adj_loss = adjoint_matching_loss(vf, vr, adj, sigma).mean()               # (14)
        kl = path_kl(vf, vr, g, h, self.spec.horizon)                              # (15)
        loss = adj_loss + self.extra_loss(kl)
        metrics = {"actor/adj_loss": adj_loss.detach(), "actor/adjoint_norm": a_T.norm(dim=-1).mean(),
                   "actor/action_abs": xs[-1].abs().mean()}
        return loss, kl.detach().mean(), metrics

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of one update (critic + BC of the base + actor) and its metrics, incl. the batch D̂."""
        q_loss, metrics = self.critic_objective(batch, noise["target_x0"], noise)
        obs = batch["observations"]
        # one prefix at s for v_θ, the reference and the BC of the base when all three share it (a VLA)
        cond = self.actor.condition(obs) if self.share_base_condition else None
        if self.cfg.reference == "ema":
            bc_loss = self.bc_objective(batch, noise["bc_x0"], noise["bc_t"], cond=cond)
        else:
            bc_loss = q_loss.new_zeros(())
        adj_loss, kl, actor_metrics = self.actor_objective(obs, noise["x0"], noise["sde"], cond=cond)
        metrics.update(actor_metrics)
        metrics["actor/bc_loss"] = bc_loss.detach()
        metrics["actor/path_kl"] = kl
        return q_loss + bc_loss + adj_loss, metrics

    # -- after the optimiser step ---------------------------------------------------------------------------
    @torch.no_grad()
    def update_targets(self) -> None:
        soft_update(self.target_critic, self.critic, self.cfg.critic.target_tau)
        if self.cfg.reference == "ema":
            soft_update(self.ref, self.base, self.cfg.reference_tau)

    def kl_budget(self, step: int) -> float:
        tr = self.cfg.trust_region
        return budget_at(step, tr.kl_budget, tr.kl_budget_schedule)

    @torch.no_grad()
    def dual_step(self, kl_hat: float, kl_budget: float) -> None:
        """Projected dual descent on λ after the gradient step (the next update uses the new λ)."""
        tr = self.cfg.trust_region
        state = dual_update(DualState(float(self.lam), float(self.kl_ema)), kl_hat, kl_budget,
                            lam_lr=tr.lam_lr, ema_rate=tr.ema_rate, kl_clip_mult=tr.kl_clip_mult,
                            lam_min=tr.lam_min, lam_max=tr.lam_max)
        self.kl_ema.fill_(state.kl_ema)
        if self.uses_dual:
            self.lam.fill_(state.lam)

    def after_step(self, metrics: dict[str, float], step: int) -> None:
        """EMA targets, then the dual step on this step's process-averaged D̂ (SPEC §3.7–8)."""
        self.update_targets()
        self.dual_step(metrics["actor/path_kl"], self.kl_budget(step))

    def status(self, step: int) -> dict[str, float]:
        return {"dual/kl_ema": float(self.kl_ema), "dual/lam": float(self.lam),
                "dual/kl_budget": self.kl_budget(step)}


@register_method("qam")
class QAMAgent(TRQAMAgent):
    """QAM: fixed Λ = 1/τ (τ = ``qam_tau``, QAM's inverse temperature), λ frozen (SPEC §4)."""

    uses_dual = False

    def temperature(self) -> Tensor:
        return self.lam.new_tensor(1.0 / self.cfg.qam_tau).float()


@register_method("qam_ext_kl")
class QAMExternalKLAgent(QAMAgent):
    """QAM + External KL: fixed Λ = 1/τ, and λ_ext · D̂ added to the loss, λ_ext by the same dual (SPEC §4)."""

    uses_dual = True

    def extra_loss(self, kl: Tensor) -> Tensor:
        return self.lam.float() * kl.mean()
