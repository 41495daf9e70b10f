"""The MetaWorld VLA recipe: every setting of the data → prior → offline → online → evaluation pipeline.

One YAML (``recipes/metaworld/<name>.yaml``) holds the shared values and ``profiles`` (``cpu``: what fits two CPU
cores; ``gpu``: a larger prior, batch and step counts; ``test``: seconds). The same strict loader as every other
benchmark's recipes (:func:`trqam_sdk.benchmarks.recipes.load_profiled`) builds it: unknown keys and wrong types are
errors naming the key. The env settings are one object used by the data, the online phase, the SDK evaluation and
``lerobot-eval`` alike, so all of them render the same images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trqam_sdk.benchmarks.recipes import RecipeBase, load_profiled, recipe_dir, resolve_recipe


@dataclass
class EnvSection:
    image_size: int = 64
    """square camera image, pixels (data, online and every evaluation)"""
    episode_length: int = 150
    """time limit of every episode (truncation); success terminates earlier"""
    fast_render: bool = True
    """shadows, reflections, skybox and offscreen multisampling off: 3–6× faster software rendering"""
    camera: str = "corner2"


@dataclass
class DataSection:
    """Scripted-expert demonstrations (MetaWorld's own policies) with Gaussian action noise per level."""

    levels: dict[str, float] = field(default_factory=lambda: {"better": 0.1, "okay": 0.5, "worse": 1.0})
    episodes_per_level: dict[str, int] = field(default_factory=lambda: {"better": 10, "okay": 10, "worse": 10})
    seed: int = 0
    workers: int = 2
    post_success_steps: int = 10
    """expert steps recorded after the first success: success-state images for the reward classifier"""


@dataclass
class PriorSection:
    """The VLA prior, trained by ``lerobot-train`` on the demonstrations."""

    kind: str = "smolvla"
    """smolvla or pi0 (lerobot policy type)"""
    size: str = "cpu"
    """the random-init backbone size (trqam_sdk.integrations.lerobot.prior): tiny, cpu"""
    steps: int = 3000
    batch_size: int = 32
    lr: float | None = None
    """None: the policy's own default"""
    seed: int = 0
    """one prior per task, shared by every method and seed (a paired comparison from the same start)"""


@dataclass
class ClassifierSection:
    """LeRobot's reward classifier, trained on the dataset's success labels (reward source ``classifier``)."""

    steps: int = 600
    batch_size: int = 32
    held_out_episodes: float = 0.2
    """fraction of episodes held out to measure the detector's accuracy"""
    backbone: str = "tiny"
    """image encoder: ``tiny`` (a random-init ResNet built locally), a local folder or a Hub id
    (LeRobot's default ``lerobot/resnet10``, where the Hub is reachable)"""


@dataclass
class RewardSection:
    source: str = "sparse"
    """a registered reward source (trqam_sdk.rewards): env, sparse, classifier, or a user's"""
    options: dict[str, Any] = field(default_factory=dict)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)


@dataclass
class LeRobotEvalSection:
    enabled: bool = True
    """also evaluate the final checkpoint with ``lerobot-eval`` (LeRobot's evaluator), same env and seeds"""
    batch_size: int = 1


@dataclass(kw_only=True)
class MetaWorldRecipe(RecipeBase):
    """A MetaWorld task fine-tuned from a LeRobot VLA prior. ``horizon`` is the VLA's chunk size (the prior is
    trained with it), ``online_steps`` the environment steps of the online phase."""

    task: str = "push-v3"
    env: EnvSection = field(default_factory=EnvSection)
    data: DataSection = field(default_factory=DataSection)
    prior: PriorSection = field(default_factory=PriorSection)
    reward: RewardSection = field(default_factory=RewardSection)
    lerobot_eval: LeRobotEvalSection = field(default_factory=LeRobotEvalSection)
    utd: float = 1.0
    """updates per online environment step (k ≥ 1, or 1/m: one update every m env steps)"""


def metaworld_recipe(name_or_path: str | Path = "metaworld", profile: str = "cpu",
                     overrides: dict[str, Any] | None = None) -> MetaWorldRecipe:
    """A shipped recipe by name (``recipes/metaworld/<name>.yaml``) or a YAML path, with a profile and overrides."""
    path = resolve_recipe(name_or_path, recipe_dir("metaworld"), "metaworld recipe")
    recipe = load_profiled(MetaWorldRecipe, path, profile, overrides)
    if recipe.horizon < 1:
        raise ValueError(f"{path}: horizon must be >= 1, got {recipe.horizon}")
    from trqam_sdk.rollout.online import parse_utd

    parse_utd(recipe.utd)  # a clear error for utd values that are neither k nor 1/m
    from trqam_sdk.benchmarks.metaworld.env import check_task

    check_task(recipe.task)  # an unknown task name fails here, with the close names, before any work
    if recipe.prior.kind not in ("smolvla", "pi0"):
        raise ValueError(f"{path}: prior.kind must be smolvla or pi0, got {recipe.prior.kind!r}")
    return recipe
