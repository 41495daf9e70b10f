"""Robomimic recipes (``recipes/robomimic/<task>.yaml``: lift, can, square) and where their data comes from.

``data.path`` points at a real robomimic file (e.g. the MH ``low_dim_v141.hdf5``); when it is empty a *scripted*
file is generated (:mod:`trqam_sdk.benchmarks.robomimic.generate`) and cached, and every output is labelled
``scripted``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trqam_sdk.benchmarks.recipes import EvalConfig, RecipeBase, load_profiled, recipe_dir, resolve_recipe
from trqam_sdk.benchmarks.robomimic.env import LOW_DIM_KEYS
from trqam_sdk.benchmarks.robomimic.generate import GenerateConfig
from trqam_sdk.config import to_dict
from trqam_sdk.schema import ConfigBase, ranged

RECIPE_DIR = recipe_dir("robomimic")
CACHE = Path(os.environ.get("TRQAM_CACHE", "~/.cache/trqam")).expanduser() / "robomimic"


@dataclass
class RobomimicDataConfig(ConfigBase):
    path: str = ""
    """robomimic hdf5 (real MH file); empty: generate scripted data with ``scripted`` into the cache"""
    filter_keys: list[str] = field(default_factory=list)
    """mask/ filter keys to union (MH: better, okay, worse, okay_better, ...); empty: all demos"""
    obs_keys: list[str] = field(default_factory=lambda: list(LOW_DIM_KEYS))
    scripted: GenerateConfig = field(default_factory=GenerateConfig)
    """the scripted generator's settings (used when ``path`` is empty)"""


@dataclass
class RobomimicEvalConfig(EvalConfig):
    max_steps: int | None = ranged(300, ge=1)
    """episode time limit (paper text: 500; the authors' code: 300 lift, 300 can, 400 square); None: 300"""
    workers: int = ranged(1, ge=0)
    """evaluation processes (1: in-process, one env kept for the run; 0: all cores)"""


@dataclass(kw_only=True)
class RobomimicRecipe(RecipeBase):
    task: str
    """lift, can or square"""
    methods: list[str] = field(default_factory=lambda: ["trqam"])
    kl_budget: float = ranged(0.1, gt=0)
    """ε for TRQAM and QAM + External KL"""
    data: RobomimicDataConfig = field(default_factory=RobomimicDataConfig)
    eval: RobomimicEvalConfig = field(default_factory=RobomimicEvalConfig)


def load_recipe(name_or_path: str | Path, profile: str = "cpu-small",
                overrides: dict[str, Any] | None = None) -> RobomimicRecipe:
    """``lift`` / ``can`` / ``square`` (recipes/robomimic/) or a YAML path, with a profile merged in."""
    return load_profiled(RobomimicRecipe, resolve_recipe(name_or_path, RECIPE_DIR, "robomimic recipe"), profile,
                         overrides)


def dataset_path(recipe: RobomimicRecipe, progress: bool = True) -> tuple[Path, str]:
    """(hdf5 path, label): the user's file ("robomimic"), or a cached scripted file ("scripted")."""
    d = recipe.data
    if d.path:
        path = Path(d.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"robomimic dataset not found: {path} (set data.path to the MH low_dim hdf5)")
        return path, "robomimic"
    from trqam_sdk.benchmarks.robomimic.generate import TASK_ENVS, generate

    if recipe.task not in TASK_ENVS:
        raise ValueError(f"{recipe.task}: no scripted controller (scripted tasks: {sorted(TASK_ENVS)}); "
                         f"set data.path / --data to the robomimic MH low-dim hdf5")
    gen = copy.deepcopy(d.scripted)
    gen.task = recipe.task
    key = hashlib.sha1(json.dumps(to_dict(gen), sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE / f"scripted-{recipe.task}-{key}.hdf5"
    if not path.is_file():
        stats = generate(gen, path, progress=progress)
        print(f"scripted {recipe.task} data → {path}: {json.dumps(stats)}", flush=True)
    return path, "scripted"
