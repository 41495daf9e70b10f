"""Robomimic as a registered benchmark: one recipe per task (lift, can, square), robosuite 1.5 envs built from the
dataset's ``env_args`` with the training data's observation normaliser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trqam_sdk.benchmarks.base import Benchmark, EnvMode
from trqam_sdk.benchmarks.registry import register_benchmark
from trqam_sdk.benchmarks.robomimic.recipe import RECIPE_DIR, RobomimicRecipe, dataset_path
from trqam_sdk.io import atomic_write_text


@register_benchmark("robomimic")
class Robomimic(Benchmark):
    """Robomimic lift / can / square (MH files or scripted robomimic-format data)."""

    recipe_class = RobomimicRecipe
    columns = {"lift": "lift", "can": "can", "square": "square"}

    def __init__(self) -> None:
        self._data: dict[tuple, tuple[Any, Path, str]] = {}

    def recipe_folder(self) -> Path:
        return RECIPE_DIR

    def domain(self, recipe: Any) -> str:
        return self.expect_recipe(recipe).task

    def tasks(self, recipe: Any) -> list[str]:
        return [self.expect_recipe(recipe).task]

    def run_path(self, recipe: Any, task: str) -> str:
        return self.expect_recipe(recipe).task

    def _load(self, recipe: RobomimicRecipe, progress: bool = False) -> tuple[Any, Path, str]:
        from trqam_sdk.benchmarks.robomimic.data import load_robomimic

        d = recipe.data
        key = (recipe.task, d.path, tuple(d.filter_keys), tuple(d.obs_keys), json.dumps(vars(d.scripted),
                                                                                       sort_keys=True))
        if key not in self._data:
            path, label = dataset_path(recipe, progress)
            data = load_robomimic(path, d.filter_keys or None, d.obs_keys)
            label = "scripted" if data.scripted is not None else label  # a generated file passed as --data
            self._data = {key: (data, path, label)}  # one dataset held at a time
        return self._data[key]

    def load_data(self, recipe: Any, task: str, progress: bool = False) -> Any:
        return self._load(self.expect_recipe(recipe), progress)[0].transitions

    def data_info(self, recipe: Any, task: str) -> dict[str, Any]:
        data, path, label = self._load(self.expect_recipe(recipe))
        return {"label": label, "path": str(path), "demos": len(data.demos)}

    def save_policy_extras(self, recipe: Any, task: str, folder: Path) -> None:
        """The policy's input scaling: a robomimic policy is only usable with the data's normaliser."""
        folder.mkdir(parents=True, exist_ok=True)
        normalizer = self._load(self.expect_recipe(recipe))[0].normalizer
        atomic_write_text(folder / "obs_normalizer.json", normalizer.to_json())

    def env_factory(self, recipe: Any, task: str, mode: EnvMode = "eval") -> Any:
        from trqam_sdk.benchmarks.robomimic.env import RobomimicEnvFactory

        recipe = self.expect_recipe(recipe)
        if mode == "video":
            raise ValueError("robomimic: evaluation video is not supported (set eval.video: false)")
        if mode not in ("eval", "online"):
            raise ValueError(f"env mode must be eval, online or video, got {mode!r}")
        data = self._load(recipe)[0]
        return RobomimicEnvFactory(json.dumps(data.env_args), recipe.eval.max_steps or 300,
                                   tuple(recipe.data.obs_keys), data.normalizer)
