"""The online phase of ``trqam metaworld``: the VLA acts in LeRobot's MetaWorld env (chunks open-loop), every step
goes into a replay buffer that starts as the offline dataset, and the learner trains on the union (SPEC §6).

The env the learner collects in speaks the VLA's observation format and normalised actions
(:class:`~trqam_sdk.integrations.lerobot.policy_env.PolicyEnvFactory`), and its reward and termination come from
the recipe's reward source (:class:`~trqam_sdk.rewards.RewardWrapper`), so online rows carry the same reward as the
relabelled offline ones. The buffer is checkpointed with the learner, incrementally (docs/online.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trqam_sdk.benchmarks.metaworld import common as C
from trqam_sdk.benchmarks.metaworld.recipe import MetaWorldRecipe


@dataclass(frozen=True)
class RewardEnvFactory:
    """Picklable: the MetaWorld env with its reward and termination replaced by a registered reward source."""

    env_factory: Any
    source: str
    options: tuple[tuple[str, Any], ...] = ()

    def __call__(self) -> Any:
        from trqam_sdk.rewards import RewardWrapper, make_reward

        return RewardWrapper(self.env_factory(), make_reward(self.source, **dict(self.options)))


def online_updates(recipe: MetaWorldRecipe) -> int:
    """Online updates for ``online_steps`` env steps at ``utd`` updates per env step."""
    return max(1, round(recipe.online_steps * recipe.utd))


def online_phase(recipe: MetaWorldRecipe, ft: Any, data: Any, root: Path, rdir: Path, prior_folder: Path,
                 seed: int, progress: bool) -> dict[str, Any]:
    """Run (or resume) the online phase to its end; returns its counters and the buffer's memory report."""
    from trqam_sdk.benchmarks.metaworld.env import EnvFactory
    from trqam_sdk.data.replay import ReplayBuffer
    from trqam_sdk.integrations.lerobot.policy_env import PolicyEnvFactory
    from trqam_sdk.rollout.online import OnlinePhase, env_steps_due

    if ft.step < recipe.offline_steps:  # before the phase opens an env or hooks into the learner's checkpoints
        raise RuntimeError(f"online phase started at step {ft.step}, before the offline phase's end "
                           f"({recipe.offline_steps})")
    updates = online_updates(recipe)
    buffer = ReplayBuffer(data, recipe.horizon, env_steps_due(updates - 1, recipe.utd))
    opts = tuple(sorted(C.reward_options(recipe, root).items()))
    tokens = data.observations.get("observation.language.tokens") if isinstance(data.observations, dict) else None
    env = PolicyEnvFactory(RewardEnvFactory(EnvFactory(C.settings_of(recipe)), recipe.reward.source, opts),
                           str(prior_folder), token_length=None if tokens is None else int(tokens.shape[1]))
    phase = OnlinePhase(ft, env, buffer, ft.agent.make_actor(seed + 77), seed + 77, rdir / "replay",
                        utd=recipe.utd)
    try:
        phase.run(updates, progress=progress)
    finally:
        phase.close()
    return {**phase.stats(), "replay_memory": buffer.memory_report(), "online_updates": updates}
