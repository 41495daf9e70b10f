"""The one episode loop: a chunked policy acting in a gymnasium-API env, each chunk executed open-loop.

Evaluation (:mod:`trqam_sdk.rollout.evaluation`), online collection (:mod:`trqam_sdk.rollout.online`) and video
(:mod:`trqam_sdk.rollout.video`) all step an env through :class:`ChunkStepper`, so the way a chunk is sampled,
checked, clipped to the action box and cut at the episode's end is written once (the paper executes the whole
chunk open-loop and asks the policy again only when it is used up or the episode ends).

Observations are a flat vector (the policy gets a (1, O) float32 batch) or a dict — a VLA's model row from
:class:`trqam_sdk.integrations.lerobot.policy_env.LeRobotPolicyEnv` — which the policy gets as
``{key: tensor with a leading 1}`` with dtypes kept (uint8 images stay uint8, token ids stay integers). Steps
keep the observation as the env gave it (what the online replay buffer stores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

ActFn = Callable[[Any], Tensor]
"""obs (1, O) float32, or a dict of (1, ...) tensors -> action chunk (1, H, A) in [-1, 1]"""

EnvFactory = Callable[[], Any]
"""a picklable zero-argument callable building a gymnasium-API env whose ``info`` reports ``"success"``"""


@dataclass
class Step:
    """One env step taken by :meth:`ChunkStepper.step`."""

    obs: Any
    """the observation the action was taken in (an array, or a dict of arrays), as the env gave it"""
    action: np.ndarray
    """the executed (clipped) action"""
    reward: float
    next_obs: Any
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def success(self) -> float:
        return float(self.info.get("success", 0.0))


def batch_of_one(obs: Any) -> Any:
    """The policy's view of one env observation: (1, O) float32 for a vector, ``{key: (1, ...) tensor}`` with the
    dtype kept for a dict."""
    if isinstance(obs, dict):
        out = {}
        for key, value in obs.items():
            try:
                out[key] = torch.as_tensor(value if isinstance(value, Tensor) else np.asarray(value))[None]
            except (TypeError, RuntimeError) as err:
                raise TypeError(f"observation[{key!r}]: cannot batch a {type(value).__name__} for the policy "
                                f"({err})") from err
        return out
    return torch.as_tensor(np.asarray(obs, dtype=np.float32))[None]


class ChunkStepper:
    """Steps ``env`` one action at a time from chunks of ``act_fn``; a new chunk is sampled when the queue is
    empty, and the queue is dropped at every reset (a chunk never crosses an episode boundary)."""

    def __init__(self, env: Any, act_fn: ActFn):
        self.env, self.act_fn = env, act_fn
        self.obs: Any = None
        self.queue: list[np.ndarray] = []

    def reset(self, seed: int, reseed_policy: bool = True) -> Any:
        """Reset the env with ``seed``; a seeded sampler (``act_fn.reseed``) restarts from ``seed`` too, so an
        episode replays exactly whatever ran before it."""
        if reseed_policy and hasattr(self.act_fn, "reseed"):
            self.act_fn.reseed(seed)
        self.obs, _ = self.env.reset(seed=seed)
        self.queue = []
        return self.obs

    def _chunk(self) -> list[np.ndarray]:
        chunk = self.act_fn(batch_of_one(self.obs))
        chunk = np.asarray(chunk.detach().cpu().numpy() if isinstance(chunk, Tensor) else chunk)
        if chunk.ndim != 3 or chunk.shape[0] != 1 or chunk.shape[1] < 1:
            raise ValueError(f"act_fn must return a (1, H, A) chunk with H >= 1, got shape {chunk.shape}")
        return list(chunk[0])

    def step(self) -> Step:
        """One env step with the next queued action (sampling a chunk first when the queue is empty)."""
        if self.obs is None:
            raise RuntimeError("ChunkStepper.step before reset(seed)")
        if not self.queue:
            self.queue = self._chunk()
        action = np.clip(self.queue.pop(0), -1.0, 1.0)
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        out = Step(self.obs, action, float(reward), next_obs, bool(terminated), bool(truncated), dict(info))
        self.obs = next_obs
        if out.done:
            self.queue = []
        return out


def run_episode(env: Any, act_fn: ActFn, seed: int, on_step: Callable[[Step | None], None] | None = None
                ) -> dict[str, float]:
    """One seeded episode; success is reached if any step reports ``info['success']`` (envs terminate at the
    goal). ``on_step`` is called with ``None`` after the reset, then with every step (video frames)."""
    stepper = ChunkStepper(env, act_fn)
    stepper.reset(seed)
    if on_step is not None:
        on_step(None)
    success, ret, length = 0.0, 0.0, 0
    while True:
        s = stepper.step()
        ret, length = ret + s.reward, length + 1
        success = max(success, s.success)
        if on_step is not None:
            on_step(s)
        if s.done:
            return {"success": success, "return": ret, "length": float(length)}
