"""The benchmark contract suite: every benchmark's test file subclasses :class:`BenchmarkContract`.

Like the adapter and method suites (diffusers' ``SchedulerCommonTest`` is the model): the checks live here once, a
subclass names its benchmark, a recipe and the overrides that make it tiny. The contract: registered under its
name; every shipped recipe loads with its profiles; a task outside the recipe is a clear error; the data loader
returns valid transitions whose action dim fits the recipe's chunk; the env factory pickles (evaluation runs it in
worker processes), builds a gymnasium-API env that takes an action in [-1, 1]^A and reports ``info["success"]``;
the shared runner evaluates the BC prior into a ``result.json`` with its episode count and 95 % Wilson interval::

    class TestMyBenchmark(BenchmarkContract):
        benchmark = "my_bench"
        recipe = "easy"
        def overrides(self, tmp_path): return {"bc_steps": 5, "eval": {"episodes": 2}}
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from trqam_sdk.benchmarks.base import Benchmark
from trqam_sdk.benchmarks.recipes import RecipeBase
from trqam_sdk.benchmarks.registry import get_benchmark
from trqam_sdk.data.transitions import Transitions
from trqam_sdk.rollout.stats import wilson_interval


class BenchmarkContract:
    """Subclass and set ``benchmark`` and ``recipe``; override :meth:`overrides` to make the recipe tiny."""

    benchmark: ClassVar[str] = ""
    recipe: ClassVar[str] = ""
    profile: ClassVar[str] = "cpu-small"
    bad_task: ClassVar[str] = "no-such-task"

    def overrides(self, tmp_path: Path) -> dict[str, Any]:
        """Recipe overrides that make data, BC and evaluation tiny (and keep generated data under ``tmp_path``)."""
        return {}

    # -- helpers ---------------------------------------------------------------------------------------------
    def bench(self) -> Benchmark:
        return get_benchmark(self.benchmark)

    def tiny_recipe(self, tmp_path: Path) -> RecipeBase:
        return self.bench().load_recipe(self.recipe, self.profile, self.overrides(tmp_path))

    # -- the contract ------------------------------------------------------------------------------------------
    def test_registered_under_its_name(self) -> None:
        bench = self.bench()
        assert isinstance(bench, Benchmark) and bench.name == self.benchmark
        assert self.recipe in bench.recipe_names()

    def test_every_recipe_loads_with_its_profile(self) -> None:
        bench = self.bench()
        for name in bench.recipe_names():
            recipe = bench.load_recipe(name, self.profile)
            assert isinstance(recipe, bench.recipe_class), name
            assert isinstance(bench.domain(recipe), str) and bench.domain(recipe)
            tasks = bench.tasks(recipe)
            assert tasks and all(isinstance(t, str) for t in tasks), f"{name}: tasks must be non-empty strings"

    def test_unknown_task_is_a_clear_error(self) -> None:
        bench = self.bench()
        recipe = bench.load_recipe(self.recipe, self.profile)
        with pytest.raises(ValueError, match=self.bad_task):
            bench.check_task(recipe, self.bad_task)

    def test_data_env_and_prior_run(self, tmp_path: Path) -> None:
        """One tiny recipe end to end: data → env → the runner's prior evaluation (kept as one test: data cost)."""
        from trqam_sdk.benchmarks.runner import run_dir, run_one

        bench, recipe = self.bench(), self.tiny_recipe(tmp_path)
        task = bench.tasks(recipe)[0]
        data = bench.load_data(recipe, task)
        assert isinstance(data, Transitions) and len(data) > recipe.horizon
        assert float(data.terminals[-1]) == 1.0 and float(data.actions.abs().max()) <= 1.0

        factory = bench.env_factory(recipe, task, "eval")
        env = pickle.loads(pickle.dumps(factory))()  # evaluation ships the factory to spawned workers
        try:
            obs, _ = env.reset(seed=0)
            action = np.zeros(data.action_dim, np.float32)
            _, reward, terminated, truncated, info = env.step(action)
            assert "success" in info and np.isfinite(float(reward))
            assert isinstance(terminated, bool | np.bool_) and isinstance(truncated, bool | np.bool_)
        finally:
            env.close()

        res = run_one(bench, recipe, task, "bc", recipe.seeds[0], tmp_path / "runs")
        rdir = run_dir(tmp_path / "runs", bench, recipe, task, "bc", recipe.seeds[0])
        saved = json.loads((rdir / "result.json").read_text())
        assert saved["benchmark"] == self.benchmark and saved["method"] == "bc" == res["method"]
        n, k = saved["episodes"], saved["successes"]
        assert n == recipe.eval.episodes and 0 <= k <= n and saved["success"] == pytest.approx(k / n)
        assert saved["ci95"] == pytest.approx(list(wilson_interval(k, n)))
