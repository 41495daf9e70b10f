"""Offline-to-online: a replay buffer that starts as the offline dataset and grows with environment steps.

SPEC §6: after the offline phase the policy acts in the environment, every transition goes into one buffer
that already holds the offline data, and batches are drawn uniformly over the union (offline and online
mixed uniformly), one update per environment step (UTD 1). The buffer *is* a :class:`ChunkSampler`, so the
Finetuner samples chunks from it exactly as from offline data, episode ends respected: rows of the episode
still being collected treat the newest row as their end (chunks that reach past it are marked invalid).
The env side (stepping the policy into the buffer) is :class:`trqam_sdk.rollout.online.OnlineCollector`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from trqam_sdk.data.transitions import KEYS, ChunkSampler, Transitions


class ReplayBuffer(ChunkSampler):
    """Offline transitions followed by up to ``capacity`` online ones; ``len`` counts the filled rows."""

    def __init__(self, offline: Transitions, horizon: int, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        n = len(offline)
        full = {}
        for k in KEYS:
            v: Tensor = getattr(offline, k)
            full[k] = torch.cat([v, v.new_zeros((capacity, *v.shape[1:]))])
        self.data, self.horizon = Transitions(**full), horizon
        self.episode_end = torch.cat([ChunkSampler(offline, horizon).episode_end,
                                      torch.zeros(capacity, dtype=torch.long)])
        self.offline_size, self.size, self.capacity, self.episode_start = n, n, n + capacity, n

    def __len__(self) -> int:
        return self.size

    @property
    def online_size(self) -> int:
        return self.size - self.offline_size

    def add(self, obs: Any, action: Any, reward: float, mask: float, terminal: bool, next_obs: Any) -> None:
        """Append one transition; ``terminal`` ends the episode (success or time limit), ``mask`` = 0 only on
        a true termination (no bootstrap)."""
        if self.size >= self.capacity:
            raise IndexError(f"replay buffer full ({self.capacity} rows)")
        i, d = self.size, self.data
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        act_t = torch.as_tensor(np.asarray(action), dtype=torch.float32)
        if obs_t.shape != d.observations.shape[1:] or act_t.shape != d.actions.shape[1:]:
            raise ValueError(f"transition shapes obs {tuple(obs_t.shape)}, action {tuple(act_t.shape)} do not "
                             f"match the buffer's {tuple(d.observations.shape[1:])}, {tuple(d.actions.shape[1:])}")
        d.observations[i], d.actions[i] = obs_t, act_t
        d.next_observations[i] = torch.as_tensor(np.asarray(next_obs), dtype=torch.float32)
        d.rewards[i], d.masks[i], d.terminals[i] = float(reward), float(mask), float(terminal)
        self.size += 1
        self.episode_end[self.episode_start:self.size] = i  # the ongoing episode ends (for now) at row i
        if terminal:
            self.episode_start = self.size
