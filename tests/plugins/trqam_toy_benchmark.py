"""A benchmark defined outside the package (loaded with ``trqam --plugin trqam_toy_benchmark``): a point on a line
steered to a goal. Small enough that a whole BC → TRQAM → online → evaluation run takes about a second, so the
tests can check that the shared runner, sweep and aggregate treat a plugin benchmark like a built-in one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.benchmarks.base import Benchmark, EnvMode
from trqam_sdk.benchmarks.recipes import RecipeBase
from trqam_sdk.benchmarks.registry import register_benchmark
from trqam_sdk.data.transitions import Transitions

GOALS = {"1": 0.5, "2": -0.5}
"""task → goal position"""


class LineEnv:
    """x ∈ [-1, 1], obs (x, goal), x += 0.2 a; success (and termination) within 0.1 of the goal."""

    def __init__(self, goal: float, max_steps: int):
        self.goal, self.max_steps, self.x, self.t = goal, max_steps, 0.0, 0

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.x, self.t = float(np.random.default_rng(seed).uniform(-1, 1)), 0
        return self._obs(), {"success": 0.0}

    def _obs(self) -> np.ndarray:
        return np.array([self.x, self.goal], np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.x = float(np.clip(self.x + 0.2 * float(np.asarray(action).reshape(-1)[0]), -1, 1))
        self.t += 1
        success = abs(self.x - self.goal) < 0.1
        return self._obs(), float(success) - 1.0, success, self.t >= self.max_steps, {"success": float(success)}

    def close(self) -> None:
        pass


@dataclass
class LineEnvFactory:
    goal: float
    max_steps: int = 20

    def __call__(self) -> LineEnv:
        return LineEnv(self.goal, self.max_steps)


@dataclass
class LineData:
    episodes: int = 10
    noise: float = 0.3
    seed: int = 0


@dataclass(kw_only=True)
class LineRecipe(RecipeBase):
    name: str
    tasks: list[str] = field(default_factory=lambda: ["1"])
    data: LineData = field(default_factory=LineData)


def demonstrations(goal: float, d: LineData, max_steps: int) -> Transitions:
    """Noisy proportional-controller episodes (reward success - 1, mask 0 at success)."""
    rng, rows = np.random.default_rng(d.seed), []
    for ep in range(d.episodes):
        env = LineEnv(goal, max_steps)
        ob, _ = env.reset(seed=1000 + ep)
        while True:
            a = np.clip([(goal - env.x) / 0.2 + d.noise * rng.standard_normal()], -1, 1).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(a)
            rows.append((ob, a, r, 1.0 - term, float(term or trunc), nxt))
            ob = nxt
            if term or trunc:
                break
    cols = list(zip(*rows, strict=True))
    return Transitions.from_numpy({k: np.asarray(v, np.float32) for k, v in zip(
        ("observations", "actions", "rewards", "masks", "terminals", "next_observations"), cols, strict=True)})


@register_benchmark("toy-line")
class ToyLine(Benchmark):
    recipe_class = LineRecipe
    columns = {"line": "L"}

    def recipe_folder(self) -> Path:
        return Path(__file__).parent / "toy_recipes"

    def domain(self, recipe: Any) -> str:
        return recipe.name

    def tasks(self, recipe: Any) -> list[str]:
        return list(recipe.tasks)

    def load_data(self, recipe: Any, task: str, progress: bool = False) -> Transitions:
        return demonstrations(GOALS[task], recipe.data, recipe.eval.max_steps or 20)

    def env_factory(self, recipe: Any, task: str, mode: EnvMode = "eval") -> LineEnvFactory:
        return LineEnvFactory(GOALS[task], recipe.eval.max_steps or 20)
