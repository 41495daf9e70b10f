"""Offline transition data and action-chunk sampling that respects episode ends (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trqam_sdk.adapters.base import tree_map

KEYS = ("observations", "actions", "rewards", "masks", "terminals", "next_observations")


@dataclass
class Transitions:
    """Flat arrays over N steps of concatenated episodes.

    ``terminals[i] = 1`` marks the last step of an episode (end of data for that episode); ``masks[i] = 0``
    marks a true termination (no bootstrapping past it), e.g. task success in OGBench singletask.
    Observations may be a dict of (N, ...) tensors (a VLA's images, tokens, state; see lerobot_data.py).
    """

    observations: Tensor | dict[str, Tensor]
    actions: Tensor
    rewards: Tensor
    masks: Tensor
    terminals: Tensor
    next_observations: Tensor | dict[str, Tensor]

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray], action_bound: float = 1.0) -> Transitions:
        missing = [k for k in KEYS if k not in arrays]
        if missing:
            raise KeyError(f"transition data lacks {missing}; has {sorted(arrays)}")
        t = {k: torch.as_tensor(np.asarray(arrays[k]), dtype=torch.float32) for k in KEYS}
        n = t["observations"].shape[0]
        for k, v in t.items():
            if v.shape[0] != n:
                raise ValueError(f"{k} has {v.shape[0]} rows but observations has {n}")
            if v.ndim == 1 or k in ("observations", "actions", "next_observations"):
                bad = ~torch.isfinite(v.reshape(n, -1)).all(dim=1)
                if bad.any():
                    first = int(bad.nonzero()[0])
                    raise ValueError(f"{k}: {int(bad.sum())} rows contain NaN/inf (first at row {first})")
        if t["observations"].ndim != 2 or t["actions"].ndim != 2:
            raise ValueError("observations and actions must be 2-D (N, dim)")
        amax = float(t["actions"].abs().max())
        if amax > action_bound + 1e-6:
            raise ValueError(f"actions reach |a| = {amax:.4g} > {action_bound}: rescale them into the action box")
        if n and t["terminals"][-1] != 1:
            t["terminals"][-1] = 1.0  # the data ends an episode
        return cls(**t)

    def __len__(self) -> int:
        return self.actions.shape[0]

    @property
    def obs_dim(self) -> int:
        if isinstance(self.observations, dict):
            raise TypeError(f"dict observations ({sorted(self.observations)}) have no single obs_dim: "
                            "give the Finetuner a critic with an observation encoder (trqam_sdk.networks.encoders)")
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]


class ChunkSampler:
    """Sample (s_t, a_{t:t+H}, r_{t:t+H}, s_{t+H}) from within one episode.

    Steps past the episode end are clamped to its last step and flagged: ``valid_steps`` (B, H) per step,
    ``valid`` (B,) when the whole chunk lies inside the episode. ``masks`` is 0 if any step of the chunk
    terminated; rewards after a termination are zeroed.
    """

    def __init__(self, data: Transitions, horizon: int):
        self.data, self.horizon = data, horizon
        ends = torch.nonzero(data.terminals > 0.5).flatten()
        # episode end for each row: the first terminal index >= row
        self.episode_end = ends[torch.searchsorted(ends, torch.arange(len(data)))]

    def __len__(self) -> int:
        return len(self.data)

    def sample(self, idx: Tensor) -> dict[str, Tensor]:
        d, h = self.data, self.horizon
        steps = idx[:, None] + torch.arange(h)[None]
        end = self.episode_end[idx][:, None]
        valid_steps = (steps <= end).float()
        steps = torch.minimum(steps, end)
        alive = torch.cumprod(d.masks[steps], dim=1)  # 0 from the first terminated step on
        alive_before = torch.cat([torch.ones_like(alive[:, :1]), alive[:, :-1]], dim=1)
        return {
            "observations": tree_map(lambda o: o[idx], d.observations),
            "actions": d.actions[steps],
            "rewards": d.rewards[steps] * alive_before * valid_steps,
            "masks": alive[:, -1],
            "valid": valid_steps[:, -1],
            "valid_steps": valid_steps,
            "next_observations": tree_map(lambda o: o[steps[:, -1]], d.next_observations),
        }
