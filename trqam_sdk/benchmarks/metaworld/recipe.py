"""The MetaWorld VLA recipe: every setting of the data → prior → offline → online → evaluation pipeline.

One YAML (``recipes/metaworld/<name>.yaml``) holds the shared values and ``profiles`` (``cpu``: what fits two CPU
cores; ``gpu``: a larger prior, batch and step counts; ``test``: seconds). The same strict loader as every other
benchmark's recipes (:func:`trqam_sdk.benchmarks.recipes.load_profiled`) builds it: unknown keys and wrong types are
errors naming the key. The env settings are one object used by the data, the online phase, the SDK evaluation and
``lerobot-eval`` alike, so all of them render the same images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trqam_sdk.benchmarks.recipes import SEED_MAX, RecipeBase, load_profiled, recipe_dir, resolve_recipe
from trqam_sdk.schema import ConfigBase, ranged

IMAGE_MULTIPLE = 16
"""image sides must be multiples of this: the VLAs' vision patch (8 px) × SmolVLM's pixel shuffle (2)"""
MAX_EPISODE_LENGTH = 500
"""MetaWorld's own time limit (``metaworld.env.MAX_PATH_LENGTH``; EnvSettings refuses longer)"""
PRIOR_KINDS = ("smolvla", "pi0")


@dataclass
class EnvSection(ConfigBase):
    image_size: int = ranged(64, ge=IMAGE_MULTIPLE, le=480)
    """square camera image, pixels (data, online and every evaluation): a multiple of 16 (the VLA's patch 8 ×
    pixel shuffle 2), at most MetaWorld's native 480"""
    episode_length: int = ranged(150, ge=1, le=MAX_EPISODE_LENGTH)
    """time limit of every episode (truncation), at most MetaWorld's 500; success terminates earlier"""
    fast_render: bool = True
    """shadows, reflections, skybox and offscreen multisampling off: 3–6× faster software rendering"""
    camera: str = "corner2"

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.image_size % IMAGE_MULTIPLE:
            yield "image_size", (f"must be a multiple of {IMAGE_MULTIPLE} (the VLA's vision patch 8 × pixel "
                                 f"shuffle 2), got {self.image_size}")


@dataclass
class DataSection(ConfigBase):
    """Scripted-expert demonstrations (MetaWorld's own policies) with Gaussian action noise per level."""

    levels: dict[str, float] = field(default_factory=lambda: {"better": 0.1, "okay": 0.5, "worse": 1.0})
    """level name → Gaussian action-noise scale, finite and >= 0 (at least one level)"""
    episodes_per_level: dict[str, int] = field(default_factory=lambda: {"better": 10, "okay": 10, "worse": 10})
    """level name → scripted episodes, each in [1, 9999]; the same names as ``levels``"""
    seed: int = ranged(0, ge=0, lt=2000)
    """data seed, < 2000 (the per-episode seed scheme of benchmarks/metaworld/generate.py)"""
    workers: int = ranged(2, ge=1)
    """data-generation processes (1: in-process)"""
    post_success_steps: int = ranged(10, ge=0)
    """expert steps recorded after the first success: success-state images for the reward classifier"""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if not self.levels:
            yield "levels", "must name at least one noise level, e.g. {better: 0.1}"
        for name, noise in self.levels.items():
            if not math.isfinite(noise) or noise < 0:
                yield f"levels.{name}", f"must be finite and >= 0, got {noise!r}"
        if set(self.levels) != set(self.episodes_per_level):
            yield "episodes_per_level", (f"must name the same levels as levels {sorted(self.levels)}, got "
                                         f"{sorted(self.episodes_per_level)}")
        for name, n in self.episodes_per_level.items():
            if not 1 <= n <= 9999:
                yield f"episodes_per_level.{name}", f"must be in [1, 9999], got {n!r}"


@dataclass
class PriorSection(ConfigBase):
    """The VLA prior, trained by ``lerobot-train`` on the demonstrations."""

    kind: str = "smolvla"
    """smolvla or pi0 (lerobot policy type)"""
    size: str = "cpu"
    """the random-init backbone size (trqam_sdk.integrations.lerobot.prior): tiny, cpu"""
    steps: int = ranged(3000, ge=1)
    """lerobot-train steps"""
    batch_size: int = ranged(32, ge=1)
    """lerobot-train batch"""
    lr: float | None = ranged(None, gt=0)
    """None: the policy's own default"""
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    """one prior per task, shared by every method and seed (a paired comparison from the same start)"""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.kind not in PRIOR_KINDS:
            yield "kind", f"must be one of {list(PRIOR_KINDS)}, got {self.kind!r}"


@dataclass
class ClassifierSection(ConfigBase):
    """LeRobot's reward classifier, trained on the dataset's success labels (reward source ``classifier``)."""

    steps: int = ranged(600, ge=1)
    """training steps"""
    batch_size: int = ranged(32, ge=2)
    """class-balanced batch (half success frames), so at least 2"""
    held_out_episodes: float = ranged(0.2, gt=0, lt=1)
    """fraction of episodes held out to measure the detector's accuracy"""
    backbone: str = "tiny"
    """image encoder: ``tiny`` (a random-init ResNet built locally), a local folder or a Hub id
    (LeRobot's default ``lerobot/resnet10``, where the Hub is reachable)"""


@dataclass
class RewardSection(ConfigBase):
    source: str = "sparse"
    """a registered reward source (trqam_sdk.rewards): env, sparse, classifier, or a user's (register it before
    the recipe is loaded)"""
    options: dict[str, Any] = field(default_factory=dict)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        from trqam_sdk.rewards import reward_names  # lazy: the built-ins register on import

        if self.source not in reward_names():  # else found only after the data and prior stages
            yield "source", (f"unknown reward source {self.source!r}; known: {reward_names()} (register your own "
                             "with trqam_sdk.rewards.register_reward)")


@dataclass
class LeRobotEvalSection(ConfigBase):
    enabled: bool = True
    """also evaluate the final checkpoint with ``lerobot-eval`` (LeRobot's evaluator), same env and seeds"""
    batch_size: int = ranged(1, ge=1)
    """lerobot-eval's vectorised envs"""


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
    utd: float = ranged(1.0, gt=0)
    """updates per online environment step (k ≥ 1, or 1/m: one update every m env steps)"""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        from trqam_sdk.rollout.online import parse_utd

        yield from super().cross_checks()
        try:
            parse_utd(self.utd)
        except ValueError:
            yield "utd", f"must be a positive integer k or 1/m for an integer m (0.5, 0.25, ...), got {self.utd!r}"


def metaworld_recipe(name_or_path: str | Path = "metaworld", profile: str = "cpu",
                     overrides: dict[str, Any] | None = None) -> MetaWorldRecipe:
    """A shipped recipe by name (``recipes/metaworld/<name>.yaml``) or a YAML path, with a profile and overrides."""
    path = resolve_recipe(name_or_path, recipe_dir("metaworld"), "metaworld recipe")
    recipe = load_profiled(MetaWorldRecipe, path, profile, overrides)  # ranges, utd, prior.kind, reward.source
    from trqam_sdk.benchmarks.metaworld.env import check_task

    check_task(recipe.task)  # an unknown task name fails here, with the close names, before any work
    return recipe
