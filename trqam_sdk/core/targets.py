"""Target-network updates (pure tensor ops on modules' parameters): EMA / Polyak averaging."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target ← (1 - τ) target + τ source, over parameters and floating buffers.

    Tensors the two modules share (a VLA copy's frozen VLM) are skipped — lerp of a tensor with itself is the
    identity, so the values are the same without a pass over the backbone — and a module without tensors (a
    fixed critic in a test) is a no-op."""
    pairs = [(t, s) for t, s in zip([*target.parameters(), *target.buffers()],
                                    [*source.parameters(), *source.buffers()], strict=True)
             if t is not s and t.is_floating_point()]
    if pairs:
        torch._foreach_lerp_([t for t, _ in pairs], [s.detach() for _, s in pairs], tau)
