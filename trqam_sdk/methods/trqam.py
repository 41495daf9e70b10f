"""The TRQAM agent: critic, concurrent BC reference, and the adjoint-matching actor loss (paper Algorithm 3).

A method is a :class:`Method`: the temperature Λ that enters the SDE and an optional extra loss. QAM and
QAM + External KL reuse every other piece unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trqam_sdk.adapters.base import FlowPolicy, repeat_condition
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.core.dual import DualState, dual_update
from trqam_sdk.core.flow import (
    lean_adjoint,
    memoryless_g,
    sample_memoryless,
    sample_memoryless_tracked,
    sample_ode,
    time_grid,
)
from trqam_sdk.core.losses import adjoint_matching_loss, critic_loss, flow_matching_loss, path_kl, td_target
from trqam_sdk.networks.mlp import QEnsemble


@dataclass(frozen=True)
class Method:
    """TRQAM (default): Λ = lam_scale · λ inside the SDE, λ by dual descent, no extra loss."""

    lam_scale: float = 3.0
    uses_dual: bool = True

    def temperature(self, lam: Tensor) -> Tensor:
        return self.lam_scale * lam

    def extra_loss(self, kl: Tensor, lam: Tensor) -> Tensor:
        return kl.new_zeros(())


@dataclass(frozen=True)
class QAM(Method):
    """QAM: fixed Λ = 1/τ, λ frozen (SPEC §4)."""

    tau: float = 1.0
    uses_dual: bool = False

    def temperature(self, lam: Tensor) -> Tensor:
        return lam.new_tensor(1.0 / self.tau)


@dataclass(frozen=True)
class QAMExternalKL(QAM):
    """QAM + External KL: fixed Λ = 1/τ, and λ_ext · D̂ added to the loss with λ_ext by the same dual."""

    uses_dual: bool = True

    def extra_loss(self, kl: Tensor, lam: Tensor) -> Tensor:
        return lam * kl.mean()


def make_method(cfg: FinetuneConfig) -> Method:
    if cfg.method == "trqam":
        return Method(lam_scale=cfg.trust_region.lam_scale)
    if cfg.method == "qam":
        return QAM(tau=cfg.qam_tau)
    if cfg.method == "qam_ext_kl":
        return QAMExternalKL(tau=cfg.qam_tau)
    raise ValueError(f"unknown method {cfg.method!r}; choose trqam, qam or qam_ext_kl")


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target ← (1 - τ) target + τ source, over parameters and floating buffers."""
    t = [p for p in target.parameters()] + [b for b in target.buffers() if b.is_floating_point()]
    s = [p.detach() for p in source.parameters()] + [b for b in source.buffers() if b.is_floating_point()]
    torch._foreach_lerp_(t, s, tau)


def terminal_adjoint(critic: nn.Module, obs: Any, x: Tensor, horizon: int) -> Tensor:
    """a_T = -∇_x mean_k Q_k(s, clip(x, -1, 1)): components outside the box get zero gradient (SPEC §3.2)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        chunk = x.clamp(-1.0, 1.0).view(x.shape[0], horizon, -1)
        q = critic(obs, chunk).mean(dim=0).sum()
        (grad,) = torch.autograd.grad(q, x)
    return -grad


class TRQAMAgent(nn.Module):
    """Holds v_θ (``actor``), the BC-trained base, its EMA reference, the critic ensemble and its target.

    ``forward`` returns the summed loss of one update and its metrics, so that the whole update runs
    inside one DDP forward/backward. ``lam`` and ``kl_ema`` are buffers: checkpointed state.
    """

    reuse_rollout_velocity: bool = True
    """Keep v_θ(x_i, t_i) from the SDE rollout (with its graph) for the loss instead of re-evaluating it on
    the trajectory, and reuse the rollout's last reference step: identical values, fewer passes."""

    def __init__(self, actor: FlowPolicy, base: FlowPolicy, critic: QEnsemble | nn.Module, cfg: FinetuneConfig):
        super().__init__()
        self.cfg, self.method = cfg, make_method(cfg)
        self.spec = actor.spec
        self.actor, self.base, self.critic = actor, base, critic
        self.ref = copy.deepcopy(base).requires_grad_(False)
        self.target_critic = copy.deepcopy(critic).requires_grad_(False)
        # a VLA whose frozen prefix is shared by v_θ and the reference computes the prefix once for both
        self.share_condition = actor.same_condition_as(self.ref)
        if cfg.reference == "frozen":
            self.base.requires_grad_(False)
        tr = cfg.trust_region
        self.register_buffer("lam", torch.tensor(tr.lam_init, dtype=torch.float64))
        self.register_buffer("kl_ema", torch.tensor(0.0, dtype=torch.float64))

    # -- randomness: drawn by the caller from a (seed, step) generator, so runs replay exactly ---------
    def noise_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        d, t = self.spec.flat_dim, self.cfg.flow_steps
        return {"x0": (batch, d), "sde": (t - 1, batch, d), "target_x0": (batch, d), "bc_x0": (batch, d),
                "bc_t": (batch,)}

    # -- the three losses --------------------------------------------------------------------------------
    def critic_objective(self, batch: dict[str, Tensor],
                         target_x0: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """TD on chunks: y = R + γ^H m (mean - ρ std) of Q̄ at a' = clip(ODE sample of v_θ at s') (SPEC §5)."""
        c = self.cfg.critic
        with torch.no_grad():
            s_next = batch["next_observations"]
            a_next = sample_ode(self.actor.velocity_fn(self.actor.condition(s_next)), target_x0,
                                self.cfg.flow_steps).clamp(-1.0, 1.0)
            y = td_target(batch["rewards"], batch["masks"], self.target_critic(s_next, a_next.view_as(
                batch["actions"])), c.discount, c.rho)
        q = self.critic(batch["observations"], batch["actions"])
        loss = critic_loss(q, y, batch["valid"])
        return loss, {"critic/critic_loss": loss.detach(), "critic/q_mean": q.detach().mean(),
                      "critic/target_mean": y.mean()}

    def bc_objective(self, batch: dict[str, Tensor], x0: Tensor, t: Tensor) -> Tensor:
        """Flow matching of the base on dataset chunks, padded steps masked out."""
        x1 = batch["actions"].flatten(1)
        xt = (1.0 - t[:, None]) * x0 + t[:, None] * x1
        v = self.base.velocity(self.base.condition(batch["observations"]), xt, t)
        weight = batch["valid_steps"].repeat_interleave(self.spec.action_dim, dim=1)
        return flow_matching_loss(v, x0, x1, weight)

    def actor_objective(self, obs: Any, x0: Tensor, sde_noise: Tensor) -> tuple[Tensor, Tensor, dict]:
        """Algorithm 3's policy update: SDE rollout (12), lean adjoint (13), adjoint matching (14), KL (15).

        v_θ(x_i, t_i) comes from the rollout (``reuse_rollout_velocity``) rather than a second pass."""
        T, B, D = self.cfg.flow_steps, x0.shape[0], self.spec.flat_dim  # obs may be a dict (VLA)
        h = 1.0 / T
        cond_ft = self.actor.condition(obs)
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
        sigma = g / torch.sqrt(self.method.temperature(self.lam).float())
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
        loss = adj_loss + self.method.extra_loss(kl, self.lam.float())
        metrics = {"actor/adj_loss": adj_loss.detach(), "actor/adjoint_norm": a_T.norm(dim=-1).mean(),
                   "actor/action_abs": xs[-1].abs().mean()}
        return loss, kl.detach().mean(), metrics

    def forward(self, batch: dict[str, Tensor], noise: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict]:
        """Total loss of one update, the batch path-KL D̂ (for the dual), and metrics."""
        q_loss, metrics = self.critic_objective(batch, noise["target_x0"])
        if self.cfg.reference == "ema":
            bc_loss = self.bc_objective(batch, noise["bc_x0"], noise["bc_t"])
        else:
            bc_loss = q_loss.new_zeros(())
        adj_loss, kl, actor_metrics = self.actor_objective(batch["observations"], noise["x0"], noise["sde"])
        metrics.update(actor_metrics)
        metrics["actor/bc_loss"] = bc_loss.detach()
        return q_loss + bc_loss + adj_loss, kl, metrics

    # -- after the optimiser step ---------------------------------------------------------------------------
    @torch.no_grad()
    def update_targets(self) -> None:
        soft_update(self.target_critic, self.critic, self.cfg.critic.target_tau)
        if self.cfg.reference == "ema":
            soft_update(self.ref, self.base, self.cfg.reference_tau)

    @torch.no_grad()
    def dual_step(self, kl_hat: float, kl_budget: float) -> None:
        """Projected dual descent on λ after the gradient step (the next update uses the new λ)."""
        tr = self.cfg.trust_region
        state = dual_update(DualState(float(self.lam), float(self.kl_ema)), kl_hat, kl_budget,
                            lam_lr=tr.lam_lr, ema_rate=tr.ema_rate, kl_clip_mult=tr.kl_clip_mult,
                            lam_min=tr.lam_min, lam_max=tr.lam_max)
        self.kl_ema.fill_(state.kl_ema)
        if self.method.uses_dual:
            self.lam.fill_(state.lam)

    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Evaluation policy: ODE sample of v_θ, clipped to the box, as (B, H, A) chunks."""
        return self.actor.sample(obs, self.cfg.flow_steps, generator)
