"""Offline-to-online: the current policy acts in the env, every transition goes into the replay buffer.

SPEC §6: chunks executed open-loop through the shared episode loop (:class:`trqam_sdk.rollout.episode.ChunkStepper`),
one environment step per update by default. Rewards are the env's own: a benchmark whose data uses another reward
convention (OGBench's sparse scene/puzzle variant, a learned reward) wraps its online env so that both agree.

:class:`OnlineCollector` steps one env into a :class:`ReplayBuffer`; :class:`OnlinePhase` is the whole online loop
of any benchmark — UTD, the Finetuner's updates, and crash-safe resume: every learner checkpoint saves the
buffer's new rows first and records the row count and the collector's counters in its state.json
(docs/online.md). An episode interrupted by a crash is not continued: it is closed as truncated and a fresh one
starts from a reset seeded by the episode counter.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trqam_sdk.data.replay import ReplayBuffer
from trqam_sdk.rollout.episode import ActFn, ChunkStepper, EnvFactory

if TYPE_CHECKING:
    from trqam_sdk.training.finetuner import Finetuner

STATE_KEY = "online"
"""the state.json entry the online phase writes"""


def _rng_state(act_fn: Any) -> str | None:
    """The acting sampler's generator state (base64 of its bytes; None when it has none)."""
    gen = getattr(act_fn, "generator", None)
    if not isinstance(gen, torch.Generator):
        return None
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode()


def _set_rng_state(act_fn: Any, state: str | None) -> None:
    if state is None:
        return
    old = getattr(act_fn, "generator", None)
    gen = torch.Generator(device=old.device) if isinstance(old, torch.Generator) else torch.Generator()
    gen.set_state(torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8))
    act_fn.generator = gen


class OnlineCollector:
    """Steps one env with ``act_fn`` into ``buffer``: a time limit ends an episode (terminal) but keeps
    bootstrapping (mask 1); a true termination (the goal) sets mask 0."""

    def __init__(self, env: Any, act_fn: ActFn, buffer: ReplayBuffer, seed: int = 0):
        self.buffer, self.seed, self.episodes, self.successes = buffer, seed, 0, 0
        self.env_steps, self.interrupted = 0, 0
        self.stepper = ChunkStepper(env, act_fn)
        self.stepper.reset(seed)  # a seeded sampler (FlowActor): the online phase replays exactly

    @property
    def env(self) -> Any:
        return self.stepper.env

    def _next_episode(self) -> None:
        # later episodes keep the sampler's stream running (it was seeded once, above)
        self.stepper.reset(self.seed * 1_000_003 + self.episodes, reseed_policy=False)

    def step(self, _step: int | None = None) -> None:
        """One env step into the buffer (the Finetuner's ``before_step`` hook passes the update index)."""
        s = self.stepper.step()
        self.buffer.add(s.obs, s.action, s.reward, 1.0 - float(s.terminated), s.done, s.next_obs)
        self.env_steps += 1
        if s.done:
            self.episodes += 1
            self.successes += int(s.success > 0)
            self._next_episode()

    def state(self) -> dict[str, Any]:
        """Counters and the sampler's generator: what a checkpoint needs to continue collecting."""
        return {"episodes": self.episodes, "successes": self.successes, "env_steps": self.env_steps,
                "interrupted_episodes": self.interrupted, "actor_rng": _rng_state(self.stepper.act_fn)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` over a buffer restored to the same moment. An episode the buffer shows in
        progress is closed as truncated (counted as an episode, not a success) and a fresh one starts."""
        self.episodes, self.successes = int(state["episodes"]), int(state["successes"])
        self.env_steps, self.interrupted = int(state["env_steps"]), int(state.get("interrupted_episodes", 0))
        closed = self.buffer.close_episode()
        # the checkpoint says whether an episode was open: after a second crash the manifest may already carry
        # the closing mark (close_episode() then finds nothing to close), yet the episode still counts once
        if state.get("episode_open", closed):
            self.episodes += 1
            self.interrupted += 1
        _set_rng_state(self.stepper.act_fn, state.get("actor_rng"))
        self._next_episode()


def parse_utd(utd: float) -> tuple[int, int]:
    """``utd`` (updates per env step) → (updates per env step, env steps per update), one of them 1: k ≥ 1
    means k updates per env step, 1/m (0.5, 0.25, ...) m env steps per update."""
    if utd >= 1 and float(utd).is_integer():
        return int(utd), 1
    if 0 < utd < 1 and abs(1 / utd - round(1 / utd)) < 1e-9:
        return 1, round(1 / utd)
    raise ValueError(f"utd (updates per env step) must be a positive integer or 1/m for an integer m "
                     f"(0.5, 0.25, ...), got {utd!r}")


def env_steps_due(update: int, utd: float) -> int:
    """Env steps taken in all before online update ``update`` (0-based) runs at ``utd``: a pure function of the
    update index, so a resumed phase steps exactly as an uninterrupted one (``env_steps_due(n - 1, utd)`` is what
    ``n`` updates take: the replay buffer's online capacity)."""
    if update < 0:
        return 0
    per_step, per_update = parse_utd(utd)
    return update // per_step + 1 if per_update == 1 else (update + 1) * per_update


class OnlinePhase:
    """The online loop of any benchmark, resumable: ``ft`` trains on ``buffer`` (offline rows + what ``actor``
    collects in ``env_factory()``), ``utd`` updates per env step; checkpoints save the buffer to ``replay_dir``.

    Build it on a Finetuner made with ``on_existing="resume"`` (or "auto"): when its checkpoint was taken in this
    phase, the phase continues from it (``resume=True``): buffer rows up to the recorded count, counters, the
    sampler's generator. Only the main
    process writes the buffer; every process collects the same rows (same policy, same seeds).
    """

    def __init__(self, ft: Finetuner, env_factory: EnvFactory, buffer: ReplayBuffer, actor: ActFn, seed: int,
                 replay_dir: str | Path, utd: float = 1.0, resume: bool = True):
        parse_utd(utd)  # a bad utd fails before the env is built
        self.ft, self.buffer, self.replay_dir, self.utd = ft, buffer, Path(replay_dir), float(utd)
        self.start_step = ft.step
        self.env = env_factory()
        self.collector = OnlineCollector(self.env, actor, buffer, seed)
        self.resumed = False
        ft.sampler = buffer  # uniform over offline + online rows from here on
        ft.checkpoint_hooks.append(self.checkpoint_state)
        if resume:
            self.resume()

    def env_steps_due(self, update: int) -> int:
        """:func:`env_steps_due` at this phase's UTD."""
        return env_steps_due(update, self.utd)

    def checkpoint_state(self) -> dict[str, Any]:
        """The Finetuner's checkpoint hook: save the buffer's new rows, then return what state.json records."""
        self.buffer.save(self.replay_dir)
        return {STATE_KEY: {"start_step": self.start_step, "buffer_rows": self.buffer.online_size,
                            "episode_open": self.buffer.episode_in_progress,
                            "utd": self.utd, "seed": self.collector.seed, **self.collector.state()}}

    def resume(self) -> bool:
        """Continue from the checkpoint the Finetuner resumed from, if it was taken in an online phase."""
        state = (self.ft.resumed_state or {}).get(STATE_KEY)
        if state is None:
            return False
        for key, have in (("utd", self.utd), ("seed", self.collector.seed)):
            if state[key] != have:
                raise ValueError(f"the checkpoint's online phase ran with {key}={state[key]!r}, this one has "
                                 f"{have!r}")
        start, rows = int(state["start_step"]), int(state["buffer_rows"])
        if self.ft.step < start or state["env_steps"] != self.env_steps_due(self.ft.step - start - 1):
            raise ValueError(f"inconsistent checkpoint: step {self.ft.step}, online phase from {start}, "
                             f"{state['env_steps']} env steps recorded")
        acc = self.ft.accelerator  # the main process tidies the folder (it alone saves), then the others read it
        if acc.is_main_process:
            self.buffer.load(self.replay_dir, rows)
        acc.wait_for_everyone()
        if not acc.is_main_process:
            self.buffer.load(self.replay_dir, rows, tidy=False)
        self.collector.restore(state)
        self.start_step, self.resumed = start, True
        return True

    def run(self, steps: int, before_step: Callable[[int], None] | None = None,
            progress: bool = False) -> dict[str, float]:
        """Run the phase to ``steps`` online updates in all (a resumed phase runs what is left); before each
        update the env steps due are taken, then ``before_step(step)`` (periodic evaluation) runs."""
        need = self.env_steps_due(steps - 1) - self.collector.env_steps
        room = self.buffer.online_capacity - self.buffer.online_size
        if need > room:
            raise ValueError(f"{steps} online updates at utd {self.utd} take {need} more env steps; the replay "
                             f"buffer has room for {room}")

        def hook(step: int) -> None:
            due = self.env_steps_due(step - self.start_step)
            while self.collector.env_steps < due:
                self.collector.step(step)
            if before_step is not None:
                before_step(step)

        return self.ft.train(steps=max(0, self.start_step + steps - self.ft.step), progress=progress,
                             before_step=hook)

    def stats(self) -> dict[str, int]:
        """Counters for a result file."""
        c = self.collector
        return {"online_episodes": c.episodes, "online_train_successes": c.successes,
                "online_rows": self.buffer.online_size, "online_env_steps": c.env_steps,
                "online_interrupted_episodes": c.interrupted}

    def close(self) -> None:
        self.env.close()
