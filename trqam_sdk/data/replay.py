"""Offline-to-online: a replay buffer that starts as the offline dataset and grows with environment steps.

SPEC §6: after the offline phase the policy acts in the environment, every transition goes into one buffer
that already holds the offline data, and batches are drawn uniformly over the union (offline and online
mixed uniformly), one update per environment step (UTD 1). The buffer *is* a :class:`ChunkSampler`, so the
Finetuner samples chunks from it exactly as from offline data, episode ends respected: rows of the episode
still being collected treat the newest row as their end (chunks that reach past it are marked invalid).
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


class OnlineCollector:
    """Steps one env with the current policy, executing each sampled chunk open-loop, into a ReplayBuffer.

    ``act_fn`` maps a (1, O) observation to a (1, H, A) chunk; ``sparse``: reward = success - 1 (SPEC §6's
    scene/puzzle variant), else the env's own singletask reward.
    """

    def __init__(self, env: Any, act_fn: Any, buffer: ReplayBuffer, seed: int = 0, sparse: bool = False):
        self.env, self.act_fn, self.buffer, self.sparse = env, act_fn, buffer, sparse
        self.seed, self.episodes, self.successes, self.queue = seed, 0, 0, []
        if hasattr(act_fn, "reseed"):  # a seeded sampler: the online phase replays exactly
            act_fn.reseed(seed)
        self.obs, _ = env.reset(seed=seed)

    def step(self, _step: int | None = None) -> None:
        if not self.queue:
            chunk = self.act_fn(torch.as_tensor(np.asarray(self.obs, dtype=np.float32))[None])
            self.queue = list(np.asarray(chunk.detach().cpu() if isinstance(chunk, Tensor) else chunk)[0])
        action = np.clip(self.queue.pop(0), -1.0, 1.0)
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        success = float(info.get("success", 0.0))
        reward = success - 1.0 if self.sparse else float(reward)
        done = bool(terminated or truncated)
        self.buffer.add(self.obs, action, reward, 1.0 - float(terminated), done, next_obs)
        self.obs = next_obs
        if done:
            self.episodes += 1
            self.successes += int(success > 0)
            self.queue = []
            self.obs, _ = self.env.reset(seed=self.seed * 1_000_003 + self.episodes)
