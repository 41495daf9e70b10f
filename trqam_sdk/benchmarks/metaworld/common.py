"""What every stage of ``trqam metaworld`` shares: names, the env settings, the reward source, the two evaluators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trqam_sdk.benchmarks.metaworld.recipe import MetaWorldRecipe

BENCHMARK = "metaworld"


def domain_name(recipe: MetaWorldRecipe, default_reward: str = "sparse") -> str:
    """The result table's column: the task, with the reward source when it is not the default."""
    src = recipe.reward.source
    return recipe.task if src == default_reward else f"{recipe.task}+{src}"


def settings_of(recipe: MetaWorldRecipe) -> Any:
    from trqam_sdk.benchmarks.metaworld.env import EnvSettings

    e = recipe.env
    return EnvSettings(task=recipe.task, image_size=e.image_size, episode_length=e.episode_length,
                       fast_render=e.fast_render, camera=e.camera)


def repo_id(recipe: MetaWorldRecipe) -> str:
    return f"local/metaworld-{recipe.task}"


def reward_options(recipe: MetaWorldRecipe, root: Path) -> dict[str, Any]:
    """The reward source's options; the classifier's checkpoint is the task's ``classifier/`` stage output."""
    opts = dict(recipe.reward.options)
    if recipe.reward.source == "classifier":
        opts.setdefault("folder", str(root / "classifier"))
    return opts


def reward_source(recipe: MetaWorldRecipe, root: Path) -> Any:
    from trqam_sdk.rewards import make_reward

    return make_reward(recipe.reward.source, **reward_options(recipe, root))


def eval_factory(recipe: MetaWorldRecipe, prior_folder: Path) -> Any:
    """The evaluation env: LeRobot's MetaWorld env with the recipe's settings, speaking the VLA's observation
    format and normalised actions (processors from the prior's checkpoint; fine-tuning keeps its statistics)."""
    from trqam_sdk.benchmarks.metaworld.env import EnvFactory
    from trqam_sdk.integrations.lerobot.policy_env import PolicyEnvFactory

    return PolicyEnvFactory(EnvFactory(settings_of(recipe)), str(prior_folder))


def sdk_eval(recipe: MetaWorldRecipe, actor: Any, prior_folder: Path, seed: int, desc: str,
             progress: bool) -> dict[str, Any]:
    from trqam_sdk.rollout.evaluation import evaluate

    e = recipe.eval
    return evaluate(actor, eval_factory(recipe, prior_folder), e.episodes, seed=seed, workers=e.workers or None,
                    progress=progress, desc=desc)


def lerobot_eval(recipe: MetaWorldRecipe, policy_folder: Path, seed: int, out: Path, progress: bool
                 ) -> dict[str, Any] | None:
    """``lerobot-eval`` on ``policy_folder`` in the same env, on the env seeds the SDK's evaluation of ``seed``
    used: lerobot-eval scores episode i after ``reset(seed=start + i)``, the SDK's is ``100000 seed + i``."""
    if not recipe.lerobot_eval.enabled:
        return None
    from trqam_sdk.integrations.lerobot.lerobot_eval import run_lerobot_eval
    from trqam_sdk.rollout.evaluation import episode_seeds

    env_args = settings_of(recipe).to_dict()  # the same settings object as the data and the SDK's evaluation
    start = episode_seeds(seed, 1)[0]
    return run_lerobot_eval(policy_folder, env_args, episodes=recipe.eval.episodes, seed=start,
                            batch_size=recipe.lerobot_eval.batch_size, out_dir=out,
                            tiny_pi=recipe.prior.kind == "pi0", progress=progress)


def load_vla(folder: Path, kind: str) -> Any:
    import contextlib

    from trqam_sdk.adapters.lerobot import from_pretrained
    from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture

    with tiny_pi_architecture() if kind == "pi0" else contextlib.nullcontext():
        return from_pretrained(folder)


def base_result(recipe: MetaWorldRecipe, method: str, seed: int, profile: str) -> dict[str, Any]:
    return {"benchmark": BENCHMARK, "domain": domain_name(recipe), "task": recipe.task, "method": method,
            "seed": seed, "profile": profile, "reward": recipe.reward.source,
            "reward_options": recipe.reward.options, "prior_kind": recipe.prior.kind}
