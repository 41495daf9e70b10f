"""Target-network updates (pure tensor ops on modules' parameters): EMA / Polyak averaging."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target ← (1 - τ) target + τ source, over parameters and floating buffers."""
    t = [p for p in target.parameters()] + [b for b in target.buffers() if b.is_floating_point()]
    s = [p.detach() for p in source.parameters()] + [b for b in source.buffers() if b.is_floating_point()]
    torch._foreach_lerp_(t, s, tau)
