"""The one source of randomness of an update: a pure function of (seed, step).

The finetuner, BC pretraining, the benchmarks and the profilers all draw an update's batch indices and noise
here, so a run replays exactly on resume and gives the same global batch on 1 or N processes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trqam_sdk.methods.base import Noise

BC_SEED_OFFSET = 7919
"""BC pretraining of a seed draws from ``seed + BC_SEED_OFFSET``, apart from that seed's fine-tuning stream"""


def step_generator(seed: int, step: int) -> torch.Generator:
    """All randomness of an update is a pure function of (seed, step): exact resume, 1 vs N processes."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def draw_noise(spec: dict[str, Noise], generator: torch.Generator) -> dict[str, Tensor]:
    """Draw every tensor of ``spec`` in its order (normal: N(0, I), uniform: U[0, 1))."""
    out = {}
    for name, n in spec.items():
        out[name] = (torch.rand if n.kind == "uniform" else torch.randn)(n.shape, generator=generator)
    return out


def draw_step(seed: int, step: int, num_rows: int, batch: int,
              spec: dict[str, Noise]) -> tuple[Tensor, dict[str, Tensor]]:
    """The global batch of ``step``: ``batch`` row indices in [0, num_rows), then the noise of ``spec``."""
    g = step_generator(seed, step)
    idx = torch.randint(num_rows, (batch,), generator=g)
    return idx, draw_noise(spec, g)


def shard_noise(noise: dict[str, Tensor], spec: dict[str, Noise], start: int, rows: int) -> dict[str, Tensor]:
    """This process's ``rows`` of every noise tensor, along each one's batch axis."""
    return {k: v.narrow(spec[k].batch_dim, start, rows) for k, v in noise.items()}
