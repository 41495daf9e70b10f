"""Losses as pure tensor functions: adjoint matching, path-space KL, flow-matching BC and the chunked TD target.

Shapes: T flow steps, B states, D = H*A flattened chunk dims, K critics.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor


def adjoint_matching_loss(v_ft: Tensor, v_ref: Tensor, adjoint: Tensor, sigma: Tensor) -> Tensor:
    """Per-state adjoint-matching loss Σ_i ||2 (v_ft - v_ref) / σ_i + σ_i a_i||² (SPEC §3.5), shape (B,).

    ``v_ft``, ``v_ref``, ``adjoint``: (T, B, D); ``sigma``: (T,). Its optimum is the tilt π_ref·exp(Q/Λ)
    when σ_i = g_i / sqrt(Λ). Only ``v_ft`` should carry gradient.
    """
    s = sigma.view(-1, 1, 1)
    resid = 2.0 * (v_ft - v_ref) / s + s * adjoint
    return resid.square().sum(dim=(0, 2))


def path_kl(v_ft: Tensor, v_ref: Tensor, g: Tensor, h: float, horizon: int) -> Tensor:
    """Closed-form Euler path-space KL per state, Σ_i (2h / g_i²) ||v_ft - v_ref||² / H (SPEC §3.6), (B,).

    Each Euler step of the controlled and reference chains is a Gaussian with the same covariance
    h g_i² I, so the per-step KL is exact; dividing by the chunk length H makes budgets comparable.
    """
    w = (2.0 * h / g.square()).view(-1, 1)
    return (w * (v_ft - v_ref).square().sum(dim=2)).sum(dim=0) / horizon


def flow_matching_loss(v_pred: Tensor, x0: Tensor, x1: Tensor, weight: Tensor | None = None,
                       reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """BC flow matching: ||v(x_t, t) - (x1 - x0)||² summed over dims, averaged over rows.

    ``weight`` (same shape as x1, or (B, 1) for whole-row weights) masks padded chunk steps out of the sum.
    ``reduction="mean"`` divides by the D dims (the authors' ``mean`` over H·A, SPEC §3 step 8) — exactly the
    ``sum`` loss / D, masked dims still counted in D, as theirs.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    err = (v_pred - (x1 - x0)).square()
    if weight is not None:
        err = err * weight
    loss = err.sum(dim=-1).mean()
    return loss / err.shape[-1] if reduction == "mean" else loss


def chunk_return(rewards: Tensor, discount: float) -> Tensor:
    """R = Σ_{k<H} γ^k r_{t+k} for rewards of shape (B, H)."""
    powers = discount ** torch.arange(rewards.shape[-1], dtype=rewards.dtype, device=rewards.device)
    return (rewards * powers).sum(dim=-1)


def pessimistic_value(q: Tensor, rho: float) -> Tensor:
    """mean_k Q_k - ρ std_k Q_k over the ensemble axis 0, population std (ddof = 0, SPEC §5)."""
    return q.mean(dim=0) - rho * q.std(dim=0, correction=0)


def td_target(rewards: Tensor, mask: Tensor, next_q: Tensor, discount: float, rho: float) -> Tensor:
    """y = R + γ^H m (mean_k Q̄_k(s', a') - ρ std_k Q̄_k(s', a')) for chunk rewards (B, H), next_q (K, B)."""
    horizon = rewards.shape[-1]
    return chunk_return(rewards, discount) + (discount**horizon) * mask * pessimistic_value(next_q, rho)


def critic_loss(q: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean over members and states of valid-weighted squared TD error; q (K, B), target/valid (B,)."""
    return ((q - target.detach()).square() * valid).mean()


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """IQL's asymmetric square |κ − 1[u < 0]| u² elementwise on u = ``diff`` (target − prediction); κ = 0.5 is
    half the squared error, κ → 1 fits an upper expectile (the max over in-support actions)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.square()


def linex_loss(delta: Tensor, clip: float = 5.0) -> Tensor:
    """Linex exp(Δ) − Δ − 1 elementwise on Δ = τ (target − prediction), continued linearly (value and slope
    matched) past ``clip`` so a large Δ cannot blow up (the Huber-style guard of QAM Appendix C.1, eq. 70).

    Minimised in the prediction q̂ with Δ = τ (y − q̂), its optimum is q̂ = (1/τ) log E[exp(τ y)] (eq. 66): the
    soft maximum that classifier guidance needs. ``−Δ − 1`` only shifts the paper's exp(Δ) + τ q̂ by a
    constant in q̂ (both have the same gradient); it makes the loss 0 at Δ = 0."""
    if not 0 < clip <= 50:
        raise ValueError(f"clip must be in (0, 50] (exp(clip) must stay finite in float32), got {clip!r}")
    c = torch.as_tensor(clip, dtype=delta.dtype, device=delta.device)
    d = torch.minimum(delta, c)
    return torch.exp(d) - d - 1.0 + (math.exp(clip) - 1.0) * torch.relu(delta - c)
