"""The tanh-squashed Gaussian of SAC (Haarnoja et al., 2018) and its temperature loss, as pure tensor functions.

DSRL's noise-space policy (z ∈ [-σ_z, σ_z]) and QAM-E's edit policy (Δa ∈ [-σ_a, σ_a]) are both one: u ~ N(μ, σ²),
y = bound · tanh(u); the log-density of y includes the tanh Jacobian, so entropy tuning sees the squashed policy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
"""the range log σ is squashed into (SAC implementations' usual bounds)"""


def gaussian_params(out: Tensor) -> tuple[Tensor, Tensor]:
    """Split a head's output (…, 2D) into the mean and a log σ bounded smoothly to [LOG_STD_MIN, LOG_STD_MAX]."""
    mean, raw = out.chunk(2, dim=-1)
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
    return mean, log_std


def tanh_gaussian_sample(mean: Tensor, log_std: Tensor, eps: Tensor, bound: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reparameterised sample y = bound · tanh(μ + σ ε) and its log-density per row (summed over the last axis).

    log p(y) = log N(u; μ, σ) − Σ log(bound · (1 − tanh(u)²)), with the stable form
    log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)). ``bound`` must be > 0 (a zero bound has no density)."""
    if not bound > 0:
        raise ValueError(f"bound must be > 0, got {bound!r}")
    u = mean + log_std.exp() * eps
    log_normal = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
    log_det = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u)) + math.log(bound)).sum(dim=-1)
    return bound * torch.tanh(u), log_normal - log_det


def temperature_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> Tensor:
    """SAC's temperature objective −α (log π + H̄): raises α when the entropy −log π is below the target H̄."""
    return -(log_alpha.exp() * (log_prob.detach() + target_entropy)).mean()
