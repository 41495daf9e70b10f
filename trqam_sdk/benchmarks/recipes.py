"""Recipes shared by every benchmark: one YAML per domain/task with the paper's values and named profiles.

A recipe file holds the shared fields at top level and ``profiles: {name: overrides}``; loading a profile
deep-merges its overrides over the shared fields and builds a strict recipe dataclass (unknown keys are
errors). ``--set a.b=v`` overrides apply last. The per-run :class:`FinetuneConfig` is derived from the recipe
(method, steps, seed, ε schedule), so the math settings live in one place. Each benchmark subclasses
:class:`RecipeBase` with its own data section (``benchmarks/<name>/recipe.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from trqam_sdk.config import FinetuneConfig, from_dict, to_dict
from trqam_sdk.methods.registry import FINETUNING, get_method, method_names
from trqam_sdk.schema import ConfigBase, ranged
from trqam_sdk.strict_yaml import deep_merge, load_yaml_mapping


def recipe_dir(benchmark: str) -> Path:
    """The shipped recipes of ``benchmark``: package data of ``trqam_sdk.recipes`` (works from a wheel too)."""
    return Path(str(resources.files("trqam_sdk.recipes") / benchmark))


SEED_MAX = 2**32 - 1
"""the largest seed (numpy's legacy seeding and FinetuneConfig.seed take 32 bits)"""

PRIOR = "bc"
"""the method name that evaluates the BC prior as is (every other registered method fine-tunes it)"""


def finetuning_methods() -> list[str]:
    """Registered methods that fine-tune the prior (built-in and plugins): every name but ``bc``, the built-in
    ones in Table 1's order, then the others."""
    names = method_names()
    return [m for m in FINETUNING if m in names] + [m for m in names if m not in FINETUNING and m != PRIOR]


@dataclass
class EvalConfig(ConfigBase):
    """How a benchmark's policies are evaluated (every benchmark's recipe has one)."""

    episodes: int = ranged(50, ge=1)
    """episodes per evaluation (the success rate is reported with this count and a 95 % Wilson interval)"""
    every: int = ranged(0, ge=0)
    """evaluate every N training steps for the success curve (0: only the prior and the final policy)"""
    max_steps: int | None = ranged(None, ge=1)
    """episode time limit override (None: the env's, e.g. 500 for cube-double)"""
    workers: int = ranged(0, ge=0)
    """evaluation processes (0: all cores; 1: in-process)"""
    video: bool = False
    """record one final episode to video.mp4 (MUJOCO_GL=egl; slow on CPU)"""


@dataclass(kw_only=True)
class RecipeBase(ConfigBase):
    """What every recipe shares: the method knobs, the phases, evaluation and the FinetuneConfig it derives.

    Validated when built (in code or from YAML; call ``validate()`` again after mutating one): every number
    against its declared range, ``seeds`` each in [0, 2^32 - 1]."""

    horizon: int = ranged(5, ge=1)
    """H: 5 for manipulation, 1 for mazes"""
    seeds: list[int] = field(default_factory=lambda: list(range(8)))
    """training seeds, each in [0, 2^32 - 1] (one run per method and seed)"""
    methods: list[str] = field(default_factory=lambda: ["bc", "qam", "qam_ext_kl", "trqam"])
    """registered method names; ``bc`` evaluates the prior itself"""
    kl_budget: float = ranged(0.5, gt=0)
    """ε for TRQAM and QAM + External KL (offline)"""
    kl_budget_online: float | None = ranged(None, gt=0)
    """ε from the start of the online phase (antmaze-giant: 3.0); None keeps ε"""
    qam_tau: float = ranged(1.0, gt=0)
    """τ for QAM and QAM + External KL (Λ = 1/τ)"""
    bc_steps: int = ranged(300_000, ge=0)
    """BC pretraining steps of the prior (0: the prior stays at its initialisation)"""
    offline_steps: int = ranged(1_000_000, ge=0)
    """offline fine-tuning steps"""
    online_steps: int = ranged(0, ge=0)
    """environment steps of the offline-to-online phase (UTD 1); 0: offline only"""
    threads: int = ranged(1, ge=1)
    """torch threads of the training process (torch.set_num_threads needs >= 1)"""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """widths, critic, batch, flow steps...; method/steps/seed/ε are set per run from the fields above"""
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    """method name → overrides of ``finetune`` for that method only (its ``method_options``, a τ or a grad clip
    of its own: QAM Table 4's per-domain values), deep-merged last"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    paper: dict[str, Any] = field(default_factory=dict)
    """provenance only: the paper's numbers for this domain (not read by the runner)"""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        for i, seed in enumerate(self.seeds):
            if not 0 <= seed <= SEED_MAX:
                yield f"seeds[{i}]", f"must be in [0, {SEED_MAX}], got {seed!r}"

    def finetune_config(self, method: str, seed: int, output_dir: str) -> FinetuneConfig:
        """The run's FinetuneConfig: the recipe's with method, seed, steps (offline + online) and ε filled in;
        ε switches to ``kl_budget_online`` when the online phase starts."""
        if method == PRIOR or method not in method_names():
            raise ValueError(f"method {method!r} does not fine-tune; choose one of {finetuning_methods()}")
        cfg = copy.deepcopy(self.finetune)
        cfg.qam_tau = self.qam_tau
        if method in self.per_method:
            cfg = from_dict(FinetuneConfig, deep_merge(to_dict(cfg), self.per_method[method]),
                            where=f"per_method.{method}")
        cfg.method, cfg.seed, cfg.output_dir = method, seed, output_dir
        cfg.steps = self.offline_steps + self.online_steps
        cfg.trust_region.kl_budget = self.kl_budget
        if self.online_steps and self.kl_budget_online is not None:
            cfg.trust_region.kl_budget_schedule = [(self.offline_steps, self.kl_budget_online)]
        get_method(method).parse_options(cfg.method_options)  # a bad option fails before data or BC
        return cfg


def resolve_recipe(name_or_path: str | Path, folder: Path, what: str = "recipe") -> Path:
    """A YAML path, or a recipe name resolved in ``folder``; a clear error listing the known names otherwise."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"{what} file not found: {p}")
        return p
    p = folder / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(f.stem for f in folder.glob("*.yaml"))
        raise FileNotFoundError(f"no {what} {str(name_or_path)!r} in {folder}; known: {known}")
    return p


def load_profiled[R: RecipeBase](cls: type[R], path: Path, profile: str,
                                 overrides: dict[str, Any] | None = None) -> R:
    """Build ``cls`` from a recipe YAML with ``profile``'s overrides (then ``overrides``) merged over it."""
    raw = load_yaml_mapping(path)  # strict: duplicate keys are errors naming the line
    profiles = raw.pop("profiles", {}) or {}
    if profile not in profiles:
        raise KeyError(f"{path}: no profile {profile!r}; it has {sorted(profiles)}")
    merged = deep_merge(deep_merge(raw, profiles[profile] or {}), overrides or {})
    recipe = from_dict(cls, merged, where=f"{path}[{profile}]")
    bad = [m for m in recipe.methods if m not in method_names()]
    if bad:
        raise ValueError(f"{path}: unknown methods {bad}; known methods: {method_names()}")
    bad = [m for m in recipe.per_method if m not in method_names()]
    if bad:
        raise ValueError(f"{path}: per_method names unknown methods {bad}; known methods: {method_names()}")
    return recipe
