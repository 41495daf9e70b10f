"""Robomimic recipes (lift, can, square): data → BC prior → QAM / TRQAM offline → success, and the stress test.

A recipe (``recipes/robomimic/<task>.yaml``) has shared fields and ``profiles`` (``paper``, ``cpu-small``)
merged over them, like the OGBench recipes. ``data.path`` points at a real robomimic file (e.g. the MH
``low_dim_v141.hdf5``); when it is empty a *scripted* file is generated (robomimic_gen) and cached, and every
output is labelled ``scripted``. Per seed the BC prior is trained once and shared by every method, and all
policies are evaluated on the same env seeds (a paired comparison). ``eval.every`` adds periodic evaluations
(``evals.jsonl``) next to the training log (``metrics.jsonl``, which holds the adjoint-matching loss): the
stability stress test is a recipe run with methods [qam, trqam] and a plot of both files.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from trqam_sdk.benchmarks.recipes import RecipeBase, deep_merge, load_profiled, parse_sets, recipe_dir
from trqam_sdk.benchmarks.robomimic.env import LOW_DIM_KEYS
from trqam_sdk.benchmarks.robomimic.generate import GenerateConfig
from trqam_sdk.config import to_dict
from trqam_sdk.io import atomic_write_text

RECIPE_DIR = recipe_dir("robomimic")
CACHE = Path(os.environ.get("TRQAM_CACHE", "~/.cache/trqam")).expanduser() / "robomimic"
METHODS = ("qam", "qam_ext_kl", "trqam")


@dataclass
class RobomimicDataConfig:
    path: str = ""
    """robomimic hdf5 (real MH file); empty: generate scripted data with ``scripted`` into the cache"""
    filter_keys: list[str] = field(default_factory=list)
    """mask/ filter keys to union (MH: better, okay, worse, okay_better, ...); empty: all demos"""
    obs_keys: list[str] = field(default_factory=lambda: list(LOW_DIM_KEYS))
    scripted: GenerateConfig = field(default_factory=GenerateConfig)


@dataclass
class RobomimicEvalConfig:
    episodes: int = 50
    max_steps: int = 300
    """episode time limit (paper text: 500; the authors' code: 300 lift, 300 can, 400 square)"""
    every: int = 0
    """evaluate every N fine-tuning steps (success curve); 0: prior and final policy only"""
    workers: int = 1
    """evaluation processes (1: in-process, one env kept for the run)"""


@dataclass(kw_only=True)
class RobomimicRecipe(RecipeBase):
    ALLOWED_METHODS: ClassVar[tuple[str, ...]] = METHODS
    task: str
    """lift, can or square"""
    methods: list[str] = field(default_factory=lambda: ["trqam"])
    kl_budget: float = 0.1
    """ε for TRQAM and QAM + External KL"""
    data: RobomimicDataConfig = field(default_factory=RobomimicDataConfig)
    eval: RobomimicEvalConfig = field(default_factory=RobomimicEvalConfig)


def load_recipe(name_or_path: str | Path, profile: str = "cpu-small",
                overrides: dict[str, Any] | None = None) -> RobomimicRecipe:
    """``lift`` / ``can`` / ``square`` (recipes/robomimic/) or a YAML path, with a profile merged in."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = RECIPE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(f.stem for f in RECIPE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no robomimic recipe {str(name_or_path)!r} ({p}); known: {known}")
    return load_profiled(RobomimicRecipe, p, profile, overrides)


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


class Evaluator:
    """Success of a flow policy in the dataset's env, same env seeds for every policy of a seed."""

    def __init__(self, recipe: RobomimicRecipe, data: Any):
        from trqam_sdk.benchmarks.robomimic.env import RobomimicEnvFactory

        self.recipe = recipe
        self.factory = RobomimicEnvFactory(json.dumps(data.env_args), recipe.eval.max_steps,
                                           tuple(recipe.data.obs_keys), data.normalizer)

    def __call__(self, policy: Any, seed: int, episodes: int | None = None) -> dict[str, float]:
        from trqam_sdk.rollout.evaluation import FlowActor, evaluate

        r = self.recipe
        return evaluate(FlowActor(policy, r.finetune.flow_steps), f"robomimic-{r.task}", episodes or r.eval.episodes,
                        seed=seed, workers=r.eval.workers, env_factory=self.factory)


def run_method(recipe: RobomimicRecipe, method: str, seed: int, prior: Any, data: Any, evaluator: Evaluator,
               out: Path, progress: bool, prior_eval: dict[str, float] | None = None) -> dict[str, Any]:
    """Fine-tune the prior with ``method``; evaluations (step 0: ``prior_eval``, then every ``eval.every``
    steps, then the final policy) go to evals.jsonl next to metrics.jsonl."""
    from trqam_sdk.training.finetuner import Finetuner

    rdir = out / method / f"seed{seed}"
    rdir.mkdir(parents=True, exist_ok=True)
    for f in ("metrics.jsonl", "evals.jsonl"):
        (rdir / f).unlink(missing_ok=True)  # a fresh run
    ft = Finetuner(recipe.finetune_config(method, seed, str(rdir)), prior, data.transitions)
    if prior_eval is not None:
        (rdir / "evals.jsonl").write_text(json.dumps({"step": 0, **prior_eval}) + "\n")
    t0 = time.perf_counter()

    def log_eval(step: int) -> dict[str, float]:
        res = evaluator(ft.agent.actor, seed)
        with open(rdir / "evals.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **res}) + "\n")
        ft.agent.actor.train()
        return res

    def periodic(step: int) -> None:
        if recipe.eval.every and step and step % recipe.eval.every == 0:
            log_eval(step)

    final = ft.train(progress=progress, before_step=periodic)
    ft.save_policy(rdir / "policy")
    (rdir / "policy" / "obs_normalizer.json").write_text(data.normalizer.to_json())  # the policy's input scaling
    ft.end()
    t_train = time.perf_counter() - t0
    res = log_eval(ft.step)
    result = {"method": method, "seed": seed, "success": res["success_rate"], "train_seconds": t_train,
              "kl_ema": float(ft.agent.kl_ema), "lam": float(ft.agent.lam), "final_metrics": final}
    atomic_write_text(rdir / "result.json", json.dumps(result, indent=2, default=str))
    return result


def run_recipe(recipe: RobomimicRecipe, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Every seed × method of the recipe; writes results.json (with the data label) under ``out``."""
    from trqam_sdk.benchmarks.robomimic.data import load_robomimic

    torch.set_num_threads(recipe.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, label = dataset_path(recipe, progress)
    data = load_robomimic(path, recipe.data.filter_keys or None, recipe.data.obs_keys)
    label = "scripted" if data.scripted is not None else label  # a generated file passed as --data stays scripted
    (out / "obs_normalizer.json").write_text(data.normalizer.to_json())
    evaluator = Evaluator(recipe, data)
    n = len(data.transitions)
    print(f"[{label}] {recipe.task}: {len(data.demos)} demos, {n} transitions from {path}", flush=True)
    runs: list[dict[str, Any]] = []
    for seed in recipe.seeds:
        t0 = time.perf_counter()
        folder = out / "bc_prior" / f"seed{seed}"
        prior = recipe.bc_prior(data.transitions, seed, folder, progress)
        (folder / "obs_normalizer.json").write_text(data.normalizer.to_json())  # the prior's input scaling
        bc = evaluator(prior, seed)
        runs.append({"method": "bc", "seed": seed, "success": bc["success_rate"],
                     "train_seconds": time.perf_counter() - t0})
        print(f"[{label}] {recipe.task} seed {seed}: BC prior success {100 * bc['success_rate']:.0f}%", flush=True)
        for method in recipe.methods:
            r = run_method(recipe, method, seed, prior, data, evaluator, out, progress, prior_eval=bc)
            runs.append(r)
            print(f"[{label}] {recipe.task} seed {seed}: {method} success {100 * r['success']:.0f}% "
                  f"(kl_ema {r['kl_ema']:.3f}, λ {r['lam']:.3f}, {r['train_seconds']:.0f} s)", flush=True)
    previous = out / "results.json"  # seeds run by other processes into the same folder are kept
    if previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("label") == label and old.get("task") == recipe.task:
            runs = [r for r in old["runs"] if r["seed"] not in recipe.seeds] + runs
    summary = {"label": label, "task": recipe.task, "data": str(path), "transitions": n,
               "demos": len(data.demos), "recipe": to_dict(recipe), "runs": runs}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=str))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`trqam robomimic {generate,run,stress,plot}`."""
    sub = parser.add_subparsers(dest="action", required=True)
    from trqam_sdk.benchmarks.robomimic import generate as robomimic_gen

    robomimic_gen.add_arguments(sub.add_parser("generate", help="write a scripted robomimic-format hdf5"))
    for name, help_ in (("run", "a recipe: BC prior → methods → success"),
                        ("stress", "QAM vs TRQAM with periodic evals and a loss/success plot")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("recipe", help="lift, can, square or a YAML path")
        p.add_argument("--profile", default="cpu-small", help="paper or cpu-small")
        p.add_argument("--data", default=None, help="robomimic hdf5 (e.g. the MH low_dim file); default: scripted")
        p.add_argument("--set", dest="sets", action="append", help="override, e.g. eval.episodes=5 (repeatable)")
        p.add_argument("--output-dir", default=None, help="default runs/robomimic/<task>[-stress]")
        p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("plot", help="stress-test plot from a finished stress output folder")
    p.add_argument("output_dir")
    p.add_argument("--png", required=True)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.robomimic.stress import plot_stress, stress_overrides, summarize

    if args.action == "generate":
        from trqam_sdk.benchmarks.robomimic.generate import generate

        cfg = GenerateConfig(task=args.task, demos_per_level=dict(zip(("better", "okay", "worse"), args.demos,
                                                                      strict=True)),
                             max_steps=args.max_steps, keep_failures=not args.successful_only, seed=args.seed)
        print(json.dumps(generate(cfg, args.output, progress=not args.no_progress), indent=1))
        return 0
    if args.action == "plot":
        print(json.dumps(summarize(args.output_dir), indent=1))
        plot_stress(args.output_dir, args.png)
        return 0
    overrides = parse_sets(args.sets)
    if args.data:
        overrides = deep_merge(overrides, {"data": {"path": args.data}})
    if args.action == "stress":
        overrides = deep_merge(stress_overrides(), overrides)
    recipe = load_recipe(args.recipe, args.profile, overrides)
    out = Path(args.output_dir or f"runs/robomimic/{recipe.task}{'-stress' if args.action == 'stress' else ''}")
    summary = run_recipe(recipe, out, progress=not args.no_progress)
    if args.action == "stress":
        plot_stress(out, out / "stress.png")
        print(json.dumps(summarize(out), indent=1))
    means = {m: [r["success"] for r in summary["runs"] if r["method"] == m] for m in ["bc", *recipe.methods]}
    print(f"RESULT [{summary['label']}] {recipe.task}: " + "  ".join(
        f"{m} {100 * sum(v) / len(v):.0f}% (n={len(v)})" for m, v in means.items() if v))
    return 0
