"""OGBench recipes (``recipes/ogbench/<domain>.yaml``): the paper's values per domain, profiles ``paper`` and
``cpu-small``; the data section says where the official-format files come from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trqam_sdk.benchmarks.recipes import SEED_MAX, RecipeBase, load_profiled, recipe_dir, resolve_recipe
from trqam_sdk.schema import ConfigBase, ranged

RECIPE_DIR = recipe_dir("ogbench")


@dataclass
class DataConfig(ConfigBase):
    source: Literal["official", "regenerate"] = "official"
    """official: OGBench files (cache or dataset_dir); regenerate: play data from ogbench's oracles"""
    dataset: str = ""
    """file stem, e.g. cube-double-play-v0, or a multi-file release such as cube-triple-play-100m-v0"""
    dataset_dir: str | None = None
    """official: folder holding the files (default ~/.ogbench/data); regenerate: cache root"""
    num_files: int | None = ranged(None, ge=1)
    """multi-file releases: first N files sorted by name (the paper's 10M sets: 10 of the 100M release); None:
    all (more than the release has fails when the files are listed)"""
    reward: Literal["default", "sparse"] = "default"
    """sparse: -1 unless the whole task is solved (scene, puzzle; SPEC §6)"""
    episodes: int = ranged(100, ge=1)
    """regenerate: play episodes (1000 transitions each at the official length)"""
    episode_length: int = ranged(1001, ge=2)
    """regenerate: rows per episode (OGBench: 1001); at least 2, one transition"""
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    """regenerate: seed of the play oracle and its env"""
    workers: int = ranged(0, ge=0)
    """regeneration processes (0: all cores)"""


@dataclass(kw_only=True)
class Recipe(RecipeBase):
    domain: str
    """OGBench env prefix: cube-double, scene, antmaze-large, ..."""
    tasks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """evaluation task numbers N of ``<domain>-singletask-taskN-v0``, each >= 1"""
    data: DataConfig = field(default_factory=DataConfig)

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        yield from super().cross_checks()
        for i, task in enumerate(self.tasks):
            if task < 1:
                yield f"tasks[{i}]", f"must be >= 1 (OGBench task numbers start at 1), got {task!r}"


def load_recipe(name_or_path: str | Path, profile: str = "cpu-small",
                overrides: dict[str, Any] | None = None) -> Recipe:
    """Load an OGBench recipe (a domain name in recipes/ogbench/ or a YAML path) with a profile."""
    return load_profiled(Recipe, resolve_recipe(name_or_path, RECIPE_DIR, "OGBench recipe"), profile, overrides)


def list_recipes() -> list[str]:
    return sorted(f.stem for f in RECIPE_DIR.glob("*.yaml"))
