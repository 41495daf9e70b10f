"""OGBench as a registered benchmark: recipes per domain, official or regenerated data, singletask envs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.benchmarks.base import Benchmark, EnvMode
from trqam_sdk.benchmarks.ogbench.recipe import RECIPE_DIR, Recipe
from trqam_sdk.benchmarks.registry import register_benchmark

COLUMNS = {"antmaze-large": "al", "antmaze-giant": "ag", "humanoidmaze-medium": "hm", "humanoidmaze-large": "hl",
           "scene": "scene", "puzzle-3x3": "p33", "puzzle-4x4": "p44", "cube-single": "c1", "cube-double": "c2",
           "cube-triple": "c3", "cube-quadruple": "c4"}
"""the paper's Table 1 column order and labels"""


class SparseReward:
    """Env wrapper: reward = success - 1 (SPEC §6's scene / puzzle variant), as the data with ``reward: sparse``."""

    def __init__(self, env: Any):
        self.env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        ob, _, terminated, truncated, info = self.env.step(action)
        return ob, float(info.get("success", 0.0)) - 1.0, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


@dataclass
class OGBenchEnvFactory:
    """Picklable constructor of an OGBench env for evaluation workers, online collection and video."""

    env_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    """gymnasium.make keyword arguments (max_episode_steps, render_mode)"""
    sparse: bool = False
    """reward = success - 1 (the data's sparse convention, for online collection)"""

    def __call__(self) -> Any:
        import gymnasium
        import ogbench  # noqa: F401  (registers the envs)

        env = gymnasium.make(self.env_name, **self.kwargs)
        return SparseReward(env) if self.sparse else env


@register_benchmark("ogbench")
class OGBench(Benchmark):
    """OGBench singletask domains (manipulation and mazes), the paper's Table 1."""

    recipe_class = Recipe
    columns = COLUMNS

    def __init__(self) -> None:
        self._data: dict[tuple, tuple[Any, str | None]] = {}

    def recipe_folder(self) -> Path:
        return RECIPE_DIR

    def domain(self, recipe: Any) -> str:
        return self.expect_recipe(recipe).domain

    def tasks(self, recipe: Any) -> list[str]:
        return [str(t) for t in self.expect_recipe(recipe).tasks]

    def _key(self, recipe: Recipe, task: str) -> tuple:
        d = recipe.data
        return (recipe.domain, task, d.source, d.dataset, d.dataset_dir, d.num_files, d.reward, d.episodes,
                d.episode_length, d.seed)

    def load_data(self, recipe: Any, task: str, progress: bool = False) -> Any:
        """Train transitions of the recipe's data (regenerated play data when asked); the last one is kept."""
        from trqam_sdk.benchmarks.ogbench.official import eval_env_name, load_singletask

        recipe = self.expect_recipe(recipe)
        eval_env_name(recipe.domain, int(task))  # tasks are 1..5: a clear error otherwise
        key = self._key(recipe, task)
        if key not in self._data:
            d = recipe.data
            if not d.dataset:
                raise ValueError(f"recipe {recipe.domain}: data.dataset (the file stem) is empty")
            folder = d.dataset_dir
            if d.source == "regenerate":
                from trqam_sdk.benchmarks.ogbench.generate import generate_dataset

                folder = str(generate_dataset(f"{recipe.domain}-play-singletask-task{task}-v0", episodes=d.episodes,
                                              seed=d.seed, dataset_dir=d.dataset_dir, workers=d.workers or None,
                                              episode_length=d.episode_length, progress=progress))
            env, train, _ = load_singletask(recipe.domain, int(task), d.dataset, folder, d.num_files, d.reward)
            env.close()
            self._data = {key: (train, folder)}  # one dataset held at a time: a sweep goes group by group
        return self._data[key][0]

    def data_info(self, recipe: Any, task: str) -> dict[str, Any]:
        train, folder = self._data.get(self._key(self.expect_recipe(recipe), task), (None, None))
        if train is None:
            return {}
        return {"folder": folder, "episodes": int(train.terminals.sum()),
                "goal_rows": int(np.sum(train.masks.numpy() < 0.5))}

    def env_factory(self, recipe: Any, task: str, mode: EnvMode = "eval") -> OGBenchEnvFactory:
        from trqam_sdk.benchmarks.ogbench.official import eval_env_name

        recipe = self.expect_recipe(recipe)
        name = eval_env_name(recipe.domain, int(task))
        if mode == "online":  # the env's own episodes; rewards as in the data
            return OGBenchEnvFactory(name, {}, sparse=recipe.data.reward == "sparse")
        kwargs: dict[str, Any] = {"max_episode_steps": recipe.eval.max_steps} if recipe.eval.max_steps else {}
        if mode == "video":
            kwargs["render_mode"] = "rgb_array"
        elif mode != "eval":
            raise ValueError(f"env mode must be eval, online or video, got {mode!r}")
        return OGBenchEnvFactory(name, kwargs)
