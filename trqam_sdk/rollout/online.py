"""Offline-to-online collection: the current policy acts in the env, every transition goes into the replay buffer.

SPEC §6: one environment step per update (UTD 1), chunks executed open-loop through the shared episode loop
(:class:`trqam_sdk.rollout.episode.ChunkStepper`). Rewards are the env's own: a benchmark whose data uses another
reward convention (OGBench's sparse scene/puzzle variant) wraps its online env so that both agree.
"""

from __future__ import annotations

from typing import Any

from trqam_sdk.data.replay import ReplayBuffer
from trqam_sdk.rollout.episode import ActFn, ChunkStepper


class OnlineCollector:
    """Steps one env with ``act_fn`` into ``buffer``: a time limit ends an episode (terminal) but keeps
    bootstrapping (mask 1); a true termination (the goal) sets mask 0."""

    def __init__(self, env: Any, act_fn: ActFn, buffer: ReplayBuffer, seed: int = 0):
        self.buffer, self.seed, self.episodes, self.successes = buffer, seed, 0, 0
        self.stepper = ChunkStepper(env, act_fn)
        self.stepper.reset(seed)  # a seeded sampler (FlowActor): the online phase replays exactly

    @property
    def env(self) -> Any:
        return self.stepper.env

    def step(self, _step: int | None = None) -> None:
        """One env step into the buffer (the Finetuner's ``before_step`` hook passes the update index)."""
        s = self.stepper.step()
        self.buffer.add(s.obs, s.action, s.reward, 1.0 - float(s.terminated), s.done, s.next_obs)
        if s.done:
            self.episodes += 1
            self.successes += int(s.success > 0)
            # later episodes keep the sampler's stream running (it was seeded once, above)
            self.stepper.reset(self.seed * 1_000_003 + self.episodes, reseed_policy=False)
