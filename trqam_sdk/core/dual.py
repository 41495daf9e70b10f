"""The trust region: projected dual descent on λ with an EMA of the path-space KL (SPEC §3.7)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DualState:
    """λ (``lam``) and the EMA KL D̄ (``kl_ema``): explicit, checkpointed algorithm state."""

    lam: float = 1.0
    kl_ema: float = 0.0


def dual_update(
    state: DualState,
    kl_hat: float,
    kl_budget: float,
    *,
    lam_lr: float = 0.01,
    ema_rate: float = 0.1,
    kl_clip_mult: float = 2.0,
    lam_min: float = 0.01,
    lam_max: float = 100.0,
) -> DualState:
    """D̄ ← (1-ρ) D̄ + ρ min(D̂, c ε);  λ ← clip(λ + η_λ (D̄ - ε), λ_min, λ_max).

    The min with c ε keeps one outlier batch from kicking λ; the clip is the projection of dual descent.
    """
    kl_ema = (1.0 - ema_rate) * state.kl_ema + ema_rate * min(kl_hat, kl_clip_mult * kl_budget)
    lam = min(max(state.lam + lam_lr * (kl_ema - kl_budget), lam_min), lam_max)
    return DualState(lam=lam, kl_ema=kl_ema)


def budget_at(step: int, kl_budget: float, schedule: list[tuple[int, float]] | None = None) -> float:
    """ε at ``step``: the base budget, replaced by each ``(start_step, value)`` entry once reached.

    Example (antmaze-giant): ``budget_at(step, 0.5, [(1_000_000, 3.0)])`` switches to 3.0 online.
    """
    eps = kl_budget
    for start, value in sorted(schedule or []):
        if step >= start:
            eps = value
    if eps <= 0:
        raise ValueError(f"KL budget must be positive, got {eps} at step {step}")
    return eps
