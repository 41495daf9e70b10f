"""What every critic-based method shares: the Q ensemble over chunks, its chunked pessimistic TD loss, and a call
that keeps an actor term's gradient out of the critic.

The finetuner steps one optimiser over the sum of a method's losses, so a term like −Q(s, μ(s, z)) would also
raise Q itself unless the critic is evaluated with its parameters detached (:func:`frozen_call`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from trqam_sdk.config import CriticConfig, FinetuneConfig
from trqam_sdk.core.losses import critic_loss, td_target
from trqam_sdk.networks.mlp import QEnsemble


def build_critic(cfg: FinetuneConfig, data: Any, flat_dim: int, critic: nn.Module | None = None) -> nn.Module:
    """The Q ensemble of ``cfg.critic`` over [obs, flattened chunk] (SPEC §2), unless one is given (a VLA's, with
    an observation encoder: then ``data.obs_dim``, undefined for dict observations, is never asked for)."""
    if critic is not None:
        return critic
    c = cfg.critic
    return QEnsemble(data.obs_dim, flat_dim, c.num_critics, c.width, c.depth, c.layer_norm, init=cfg.conventions.init)


def frozen_call(module: nn.Module, *args: Any) -> Tensor:
    """``module(*args)`` with its parameters detached: the output is differentiable in ``args`` only, so an actor
    term evaluated through it leaves ``module``'s gradient exactly zero."""
    params = {n: p.detach() for n, p in module.named_parameters()}
    return functional_call(module, params, args)


def chunked_td_loss(critic: nn.Module, target_critic: nn.Module, batch: dict[str, Any], next_chunk: Tensor,
                    c: CriticConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """SPEC §5: y = R + γ^H m (mean − ρ std)_k Q̄_k(s', a') with ``next_chunk`` = a' as (B, H, A); the loss is the
    valid-weighted squared error per member. Returns it with ``critic/{loss,q_mean,target_mean}``."""
    with torch.no_grad():
        y = td_target(batch["rewards"], batch["masks"], target_critic(batch["next_observations"], next_chunk),
                      c.discount, c.rho)
    q = critic(batch["observations"], batch["actions"])
    loss = critic_loss(q, y, batch["valid"])
    return loss, {"critic/loss": loss.detach(), "critic/q_mean": q.detach().mean(), "critic/target_mean": y.mean()}
