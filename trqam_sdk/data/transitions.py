"""Offline transition data and action-chunk sampling that respects episode ends (SPEC §5).

Two chunk semantics (``ChunkSampler(mode=...)``, see trqam_sdk.conventions): ``episode`` (this SDK's default) keeps
every chunk inside its episode; ``reference`` reproduces the authors' sampler (SPEC §5.1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

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
    def from_numpy(cls, arrays: dict[str, np.ndarray], action_bound: float = 1.0,
                   action_clip: float | None = None) -> Transitions:
        """Validate and convert; ``action_clip`` then clips actions to ±action_clip (the authors' 1 - 1e-5, SPEC
        §5.1) — after the bound check, so mis-scaled data is still an error rather than silently clipped."""
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
        out = cls(**t)
        return out.clip_actions(action_clip) if action_clip is not None else out

    def clip_actions(self, bound: float) -> Transitions:
        """A copy (other arrays shared) with actions clipped to ±``bound``; idempotent."""
        if not 0 < bound <= 1:
            raise ValueError(f"action clip must be in (0, 1], got {bound}")
        return replace(self, actions=self.actions.clamp(-bound, bound))

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


ChunkMode = Literal["episode", "reference"]


class ChunkSampler:
    """Sample (s_t, a_{t:t+H}, r_{t:t+H}, s_{t+H}); ``len`` is the number of valid start indices.

    ``mode="episode"`` (default): starts over all N rows; steps past the episode end are clamped to its last step
    and flagged: ``valid_steps`` (B, H) per step, ``valid`` (B,) when the whole chunk lies inside the episode.
    ``masks`` is 0 if any step of the chunk terminated; rewards after a termination are zeroed.

    ``mode="reference"`` (the authors', SPEC §5.1): starts uniform in [0, N - H], so a chunk may run into the next
    episode (its rows unclamped); ``valid_steps[i] = 1 - any episode end among steps 0..i-1``; rewards are kept
    on valid steps even after a task termination (mask 0); ``masks`` = min of the masks over valid steps;
    ``next_observations`` of the last valid step. The losses weight such chunks whole by ``valid`` (the last
    step's validity): see :func:`trqam_sdk.methods.bc.bc_flow_matching` and ``critic_loss``.
    """

    mode: ChunkMode = "episode"  # a class default, so subclasses that skip __init__ (ReplayBuffer) keep it

    def __init__(self, data: Transitions, horizon: int, mode: ChunkMode = "episode"):
        if mode not in ("episode", "reference"):
            raise ValueError(f"chunk sampling mode must be 'episode' or 'reference', got {mode!r}")
        if mode == "reference" and len(data) < horizon:
            raise ValueError(f"reference chunk sampling needs at least H = {horizon} rows, got {len(data)}")
        self.data, self.horizon, self.mode = data, horizon, mode
        ends = torch.nonzero(data.terminals > 0.5).flatten()
        # episode end for each row: the first terminal index >= row
        self.episode_end = ends[torch.searchsorted(ends, torch.arange(len(data)))]

    def __len__(self) -> int:
        return len(self.data) - self.horizon + 1 if self.mode == "reference" else len(self.data)

    def sample(self, idx: Tensor) -> dict[str, Tensor]:
        if self.mode == "reference":
            return self._sample_reference(idx)
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

    def _sample_reference(self, idx: Tensor) -> dict[str, Tensor]:
        """The authors' sequence sampler (SPEC §5.1), vectorised; ``idx`` in [0, N - H]."""
        d, h = self.data, self.horizon
        steps = idx[:, None] + torch.arange(h)[None]
        ended = torch.cummax(d.terminals[steps], dim=1).values  # an episode end at or before step i
        valid_steps = torch.cat([torch.ones_like(ended[:, :1]), 1.0 - ended[:, :-1]], dim=1)
        masks = torch.where(valid_steps > 0, d.masks[steps], torch.ones_like(valid_steps)).amin(dim=1)
        last = steps.gather(1, (valid_steps.sum(dim=1, keepdim=True) - 1).long()).squeeze(1)
        return {
            "observations": tree_map(lambda o: o[idx], d.observations),
            "actions": d.actions[steps],
            "rewards": d.rewards[steps] * valid_steps,
            "masks": masks,
            "valid": valid_steps[:, -1],
            "valid_steps": valid_steps,
            "next_observations": tree_map(lambda o: o[last], d.next_observations),
        }
