"""OGBench recipes: one YAML per domain with the paper's values and named profiles (``paper``, ``cpu-small``).

A recipe file holds the shared fields at top level and ``profiles: {name: overrides}``; loading a profile
deep-merges its overrides over the shared fields and builds a strict :class:`Recipe` (unknown keys are
errors). ``--set a.b=v`` overrides apply last. The per-run :class:`FinetuneConfig` is derived from the recipe
(method, steps, seed, ε schedule), so the math settings live in one place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from trqam_sdk.config import FinetuneConfig, from_dict


def recipe_dir(benchmark: str) -> Path:
    """The shipped recipes of ``benchmark``: package data of ``trqam_sdk.recipes`` (works from a wheel too)."""
    return Path(str(resources.files("trqam_sdk.recipes") / benchmark))


RECIPE_DIR = recipe_dir("ogbench")
METHODS = ("bc", "qam", "qam_ext_kl", "trqam")
"""bc: the BC prior evaluated as is; the other three fine-tune it (FinetuneConfig.method)"""


@dataclass
class DataConfig:
    source: Literal["official", "regenerate"] = "official"
    """official: OGBench files (cache or dataset_dir); regenerate: play data from ogbench's oracles"""
    dataset: str = ""
    """file stem, e.g. cube-double-play-v0, or a multi-file release such as cube-triple-play-100m-v0"""
    dataset_dir: str | None = None
    """official: folder holding the files (default ~/.ogbench/data); regenerate: cache root"""
    num_files: int | None = None
    """multi-file releases: first N files sorted by name (the paper's 10M sets: 10 of the 100M release)"""
    reward: Literal["default", "sparse"] = "default"
    """sparse: -1 unless the whole task is solved (scene, puzzle; SPEC §6)"""
    episodes: int = 100
    """regenerate: play episodes (1000 transitions each at the official length)"""
    episode_length: int = 1001
    seed: int = 0
    workers: int = 0
    """regeneration processes (0: all cores)"""


@dataclass
class EvalConfig:
    episodes: int = 50
    every: int = 0
    """evaluate every N training steps for the success curve (0: only the prior and the final policy)"""
    max_steps: int | None = None
    """episode time limit override (None: the env's, e.g. 500 for cube-double)"""
    workers: int = 0
    """evaluation processes (0: all cores; 1: in-process)"""
    video: bool = False
    """record one final episode to video.mp4 (MUJOCO_GL=egl; slow on CPU)"""


@dataclass(kw_only=True)
class RecipeBase:
    """What every recipe (OGBench, Robomimic) shares: the method knobs and the FinetuneConfig it derives."""

    ALLOWED_METHODS: ClassVar[tuple[str, ...]] = METHODS
    horizon: int = 5
    """H: 5 for manipulation, 1 for mazes"""
    seeds: list[int] = field(default_factory=lambda: list(range(8)))
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    kl_budget: float = 0.5
    """ε for TRQAM and QAM + External KL (offline)"""
    qam_tau: float = 1.0
    """τ for QAM and QAM + External KL (Λ = 1/τ)"""
    bc_steps: int = 300_000
    offline_steps: int = 1_000_000
    threads: int = 1
    """torch threads of the training process"""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """widths, critic, batch, flow steps...; method/steps/seed/ε are set per run from the fields above"""
    paper: dict[str, Any] = field(default_factory=dict)
    """provenance only: the paper's numbers for this domain (not read by the runner)"""

    def finetune_config(self, method: str, seed: int, output_dir: str) -> FinetuneConfig:
        """The run's FinetuneConfig: the recipe's with method, seed, steps and ε filled in."""
        if method not in self.ALLOWED_METHODS or method == "bc":
            fine = [m for m in self.ALLOWED_METHODS if m != "bc"]
            raise ValueError(f"method {method!r} does not fine-tune; choose one of {fine}")
        cfg = copy.deepcopy(self.finetune)
        cfg.method, cfg.seed, cfg.output_dir, cfg.qam_tau = method, seed, output_dir, self.qam_tau  # type: ignore
        cfg.steps = self.offline_steps
        cfg.trust_region.kl_budget = self.kl_budget
        return cfg

    def bc_prior(self, train: Any, seed: int, folder: Path, progress: bool = False) -> Any:
        """The seed's MLP BC prior, trained once and cached as a policy folder: every method of the seed starts
        from it, so methods are compared from the same policy."""
        import torch

        from trqam_sdk.adapters import load_policy
        from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
        from trqam_sdk.training.finetuner import pretrain_bc

        if (folder / "model.safetensors").is_file():
            return load_policy(folder)
        p = self.finetune.policy
        torch.manual_seed(seed)
        policy = MLPFlowPolicy(MLPPolicyConfig(train.obs_dim, self.horizon, train.action_dim, p.width, p.depth,
                                               p.layer_norm))
        pretrain_bc(policy, train, self.bc_steps, batch_size=self.finetune.batch_size, lr=self.finetune.lr,
                    seed=seed, progress=progress)
        policy.save_pretrained(folder)
        return policy


@dataclass(kw_only=True)
class Recipe(RecipeBase):
    domain: str
    """OGBench env prefix: cube-double, scene, antmaze-large, ..."""
    tasks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    kl_budget_online: float | None = None
    """ε from the start of the online phase (antmaze-giant: 3.0); None keeps ε"""
    online_steps: int = 0
    """environment steps of the offline-to-online phase (UTD 1); 0: offline only"""
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def finetune_config(self, method: str, seed: int, output_dir: str) -> FinetuneConfig:
        """Offline steps, then the online phase with its ε (a KL-budget schedule entry at the switch)."""
        cfg = super().finetune_config(method, seed, output_dir)
        cfg.steps = self.offline_steps + self.online_steps
        if self.online_steps and self.kl_budget_online is not None:
            cfg.trust_region.kl_budget_schedule = [(self.offline_steps, self.kl_budget_online)]
        return cfg


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """['finetune.batch_size=32', 'eval.episodes=2'] -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def recipe_path(name_or_path: str | Path) -> Path:
    """A YAML path, or a domain name resolved in recipes/ogbench/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"recipe file not found: {p}")
        return p
    p = RECIPE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(f.stem for f in RECIPE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name_or_path!r}; known: {known}")
    return p


def load_profiled[R: RecipeBase](cls: type[R], path: Path, profile: str,
                                 overrides: dict[str, Any] | None = None) -> R:
    """Build ``cls`` from a recipe YAML with ``profile``'s overrides (then ``overrides``) merged over it."""
    raw = yaml.safe_load(path.read_text()) or {}
    profiles = raw.pop("profiles", {})
    if profile not in profiles:
        raise KeyError(f"{path}: no profile {profile!r}; it has {sorted(profiles)}")
    merged = deep_merge(deep_merge(raw, profiles[profile] or {}), overrides or {})
    recipe = from_dict(cls, merged, where=f"{path}[{profile}]")
    bad = [m for m in recipe.methods if m not in cls.ALLOWED_METHODS]
    if bad:
        raise ValueError(f"{path}: unknown methods {bad}; choose from {cls.ALLOWED_METHODS}")
    return recipe


def load_recipe(name_or_path: str | Path, profile: str = "cpu-small",
                overrides: dict[str, Any] | None = None) -> Recipe:
    """Load an OGBench recipe (a domain name in recipes/ogbench/ or a YAML path) with a profile."""
    return load_profiled(Recipe, recipe_path(name_or_path), profile, overrides)


def list_recipes() -> list[str]:
    return sorted(f.stem for f in RECIPE_DIR.glob("*.yaml"))
