"""Small synthetic offline datasets for tests and examples (no downloads)."""

from __future__ import annotations

import numpy as np


def random_episodes(num_episodes: int = 8, length: int = 20, obs_dim: int = 6, action_dim: int = 2,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Episodes whose reward is highest when the action matches a fixed linear function of the state."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(obs_dim, action_dim)) / np.sqrt(obs_dim)
    obs = rng.normal(size=(num_episodes, length + 1, obs_dim)).astype(np.float32)
    act = np.clip(rng.normal(scale=0.5, size=(num_episodes, length, action_dim)), -1, 1).astype(np.float32)
    best = np.tanh(obs[:, :-1] @ w)
    rew = -np.square(act - best).sum(-1).astype(np.float32)
    terminals = np.zeros((num_episodes, length), np.float32)
    terminals[:, -1] = 1.0
    return {"observations": obs[:, :-1].reshape(-1, obs_dim), "actions": act.reshape(-1, action_dim),
            "rewards": rew.reshape(-1), "masks": np.ones(num_episodes * length, np.float32),
            "terminals": terminals.reshape(-1), "next_observations": obs[:, 1:].reshape(-1, obs_dim)}
