"""The benchmark contract: what the shared runner, sweep and aggregate need to know of a benchmark.

A benchmark declares its recipes (names, loading with a profile and overrides), its tasks, its data loader
(recipe, task → :class:`Transitions`), an env factory (recipe, task → a picklable zero-argument callable that
builds a gymnasium-API env reporting ``info["success"]``) and its result-table columns. Everything else (BC
prior, offline and online phases, evaluation, ``result.json``, tables, curves) is the same code for every
benchmark (:mod:`trqam_sdk.benchmarks.runner`). Register an implementation with
:func:`trqam_sdk.benchmarks.registry.register_benchmark`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from trqam_sdk.benchmarks.recipes import RecipeBase, load_profiled, resolve_recipe

if TYPE_CHECKING:
    from trqam_sdk.data.transitions import Transitions
    from trqam_sdk.rollout.episode import EnvFactory

EnvMode = Literal["eval", "online", "video"]
"""what an env is for: evaluation (the recipe's time limit), online collection (the env's own episodes and the
data's reward convention), video (evaluation with ``render_mode="rgb_array"``)"""


class Benchmark(ABC):
    """One benchmark. Subclasses set :attr:`recipe_class` and implement the abstract methods; recipes are YAML
    files in :meth:`recipe_folder` unless :meth:`recipe_names` / :meth:`load_recipe` are overridden."""

    name: ClassVar[str] = ""
    """set by ``register_benchmark``"""
    recipe_class: ClassVar[type[RecipeBase]] = RecipeBase
    """the strict recipe dataclass (a :class:`RecipeBase` subclass with the benchmark's data section)"""
    columns: ClassVar[dict[str, str]] = {}
    """domain → short column label of the result table, in the table's order (other domains follow, sorted)"""

    # -- recipes ----------------------------------------------------------------------------------------
    def expect_recipe(self, recipe: Any) -> Any:
        """``recipe`` if it is this benchmark's recipe class; a clear error (not an AttributeError later) if not."""
        if not isinstance(recipe, self.recipe_class):
            raise TypeError(f"the {self.name} benchmark needs a {self.recipe_class.__name__}, "
                            f"got {type(recipe).__name__}")
        return recipe

    def recipe_folder(self) -> Path:
        """Where the benchmark's ``<name>.yaml`` recipes live."""
        raise NotImplementedError(f"benchmark {self.name!r} has no recipe folder: override recipe_folder() or "
                                  "recipe_names() and load_recipe()")

    def recipe_names(self) -> list[str]:
        return sorted(f.stem for f in self.recipe_folder().glob("*.yaml"))

    def load_recipe(self, name_or_path: str | Path, profile: str = "cpu-small",
                    overrides: dict[str, Any] | None = None) -> RecipeBase:
        """A recipe by name (in :meth:`recipe_folder`) or YAML path, with ``profile`` and ``overrides`` merged."""
        path = resolve_recipe(name_or_path, self.recipe_folder(), f"{self.name} recipe")
        return load_profiled(self.recipe_class, path, profile, overrides)

    # -- what a run needs ---------------------------------------------------------------------------------
    @abstractmethod
    def domain(self, recipe: RecipeBase) -> str:
        """The recipe's result-table column key (an OGBench domain, a robomimic task)."""

    @abstractmethod
    def tasks(self, recipe: RecipeBase) -> list[str]:
        """The recipe's tasks, as the strings ``trqam run --task`` takes; results average over them per seed."""

    @abstractmethod
    def load_data(self, recipe: RecipeBase, task: str, progress: bool = False) -> Transitions:
        """The offline training transitions of ``task`` (regenerated or cached as the recipe says)."""

    @abstractmethod
    def env_factory(self, recipe: RecipeBase, task: str, mode: EnvMode = "eval") -> EnvFactory:
        """A picklable zero-argument callable building ``task``'s env (gymnasium API, ``info["success"]``)."""

    # -- optional hooks -------------------------------------------------------------------------------------
    def run_path(self, recipe: RecipeBase, task: str) -> str:
        """The runs' folder under the results root, relative: ``<domain>/task<k>`` by default."""
        return f"{self.domain(recipe)}/task{task}"

    def data_info(self, recipe: RecipeBase, task: str) -> dict[str, Any]:
        """Provenance of the loaded data for ``result.json`` (folder, file, label); JSON-serialisable."""
        return {}

    def save_policy_extras(self, recipe: RecipeBase, task: str, folder: Path) -> None:
        """Write what a saved policy needs besides its weights (e.g. the observation normaliser); none by default."""
        return None

    def check_task(self, recipe: RecipeBase, task: str) -> str:
        """``task`` as a string if the recipe has it; a clear error naming the recipe's tasks otherwise."""
        known = self.tasks(recipe)
        if str(task) not in known:
            raise ValueError(f"{self.name} recipe {self.domain(recipe)!r} has no task {task!r}; its tasks: {known}")
        return str(task)
