"""`trqam demo`: BC → TRQAM on a regenerated OGBench cube-single play dataset, both evaluated in the env.

The pipeline is the paper's (SPEC §6) at laptop scale, run by the shared benchmark runner: regenerate play data
with ogbench's own oracle (cached), flow-matching BC of an MLP prior, TRQAM fine-tuning with H = 5, then the
success of the BC prior and of the fine-tuned policy on the *same* env seeds (a paired comparison), each with its
episode count and 95 % Wilson interval, a plot of path-KL / KL-EMA / λ and the checkpoint. The run folder has
the benchmark layout, so ``trqam aggregate --runs runs/demo`` tabulates it like any sweep.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.io import atomic_write_text
from trqam_sdk.schema import ConfigBase, ranged

DEFAULT_TASK = "cube-single-play-singletask-task1-v0"


@dataclass
class DemoOptions(ConfigBase):
    """What `trqam demo` can change: ``--config demo.yaml``, ``--set key=value`` or the short flags."""

    task: str = DEFAULT_TASK
    """OGBench singletask play name (dataset regenerated offline)"""
    dataset_episodes: int = ranged(100, ge=1)
    """play episodes to regenerate (1000 transitions each at the official length)"""
    data_dir: str | None = None
    """dataset cache folder (None: ~/.cache/trqam/ogbench)"""
    data_seed: int = ranged(0, ge=0)
    """seed of the regenerated dataset"""
    episode_length: int = ranged(1001, ge=2)
    """rows per regenerated episode (OGBench: 1001)"""
    bc_steps: int = ranged(3000, ge=0)
    """BC pretraining steps of the prior"""
    steps: int = ranged(2000, ge=1)
    """TRQAM fine-tuning steps"""
    width: int = ranged(256, ge=1)
    """actor hidden width (the paper uses 512)"""
    critic_width: int = ranged(256, ge=1)
    """critic hidden width (the paper uses 512)"""
    num_critics: int = ranged(4, ge=1)
    """critic ensemble size K (the paper uses 10)"""
    critic_tau: float = ranged(0.005, gt=0, le=1)
    """EMA rate of the target critic"""
    batch_size: int = ranged(256, ge=1)
    """global batch of BC and of fine-tuning"""
    kl_budget: float = ranged(0.5, gt=0)
    """ε, the path-KL budget (SPEC: 0.5 for cube)"""
    flow_steps: int = ranged(10, ge=1)
    """T, Euler steps of the flow"""
    episodes: int = ranged(200, ge=1)
    """evaluation episodes per policy: 200 give 95 % Wilson intervals of about ±7 points at 50 % success"""
    eval_max_steps: int | None = ranged(None, ge=1)
    """episode time limit in evaluation (None: the env's, 200)"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """training seeds; several print mean ± std and the pooled interval"""
    workers: int | None = ranged(None, ge=1)
    """processes for data generation and evaluation (None: all cores)"""
    threads: int = ranged(0, ge=0)
    """torch threads for training (0: all cores, or 1 when the machine is already busy: with other processes on
    the cores, one thread ran a TRQAM step 3-7x faster than two in our measurements)"""
    output_dir: str = "runs/demo"
    """where runs, plots, checkpoints and results.json go"""
    progress: bool = True
    """tqdm bars"""


def pick_threads(requested: int) -> int:
    """All cores on a quiet machine; one thread when the load average says the cores are taken (with other
    processes on the cores, one thread ran a TRQAM step 3-7x faster than two in our measurements)."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cores - 0.5 else cores


def demo_recipe(o: DemoOptions, threads: int = 1) -> Any:
    """The demo as an OGBench recipe (methods bc and trqam, offline only, regenerated play data)."""
    from trqam_sdk.benchmarks.ogbench.generate import split_task_name
    from trqam_sdk.benchmarks.ogbench.recipe import DataConfig, Recipe
    from trqam_sdk.benchmarks.recipes import EvalConfig
    from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig, TrustRegionConfig

    dataset, collect_env, eval_env = split_task_name(o.task)
    if not dataset.endswith("-play-v0"):
        raise ValueError(f"--task {o.task!r}: the demo regenerates play data; use a …-play-singletask-taskN-v0 name")
    m = re.search(r"-task(\d+)-v\d+$", eval_env)
    if m is None:
        raise ValueError(f"--task {o.task!r}: no task number (…-singletask-taskN-v0)")
    domain, task = collect_env.removesuffix("-v0"), int(m.group(1))
    finetune = FinetuneConfig(
        flow_steps=o.flow_steps, policy=PolicyConfig(width=o.width),
        critic=CriticConfig(num_critics=o.num_critics, width=o.critic_width, target_tau=o.critic_tau),
        trust_region=TrustRegionConfig(kl_budget=o.kl_budget), batch_size=o.batch_size, steps=o.steps,
        log_every=max(1, min(50, o.steps // 20)))
    return Recipe(domain=domain, tasks=[task], horizon=5, seeds=list(o.seeds), methods=["bc", "trqam"],
                  kl_budget=o.kl_budget, bc_steps=o.bc_steps, offline_steps=o.steps, online_steps=0,
                  threads=threads, finetune=finetune,
                  eval=EvalConfig(episodes=o.episodes, max_steps=o.eval_max_steps, workers=o.workers or 0),
                  data=DataConfig(source="regenerate", dataset=dataset, dataset_dir=o.data_dir,
                                  episodes=o.dataset_episodes, episode_length=o.episode_length, seed=o.data_seed,
                                  workers=o.workers or 0))


def _success(results: list[dict[str, Any]]) -> str:
    """One seed: rate [95 % Wilson] (n); several: mean ± std over seeds, then the pooled episodes' interval."""
    from trqam_sdk.rollout.stats import format_success

    k, n = sum(r["successes"] for r in results), sum(r["episodes"] for r in results)
    if len(results) == 1:
        return format_success(k, n)
    rates = [100 * r["success"] for r in results]
    return f"{np.mean(rates):.1f}% ± {np.std(rates):.1f} over seeds; pooled {format_success(k, n)}"


def run_demo(o: DemoOptions) -> dict[str, Any]:
    """Data → BC prior → TRQAM → both evaluated, per seed, through the shared runner; writes ``results.json``."""
    from trqam_sdk.benchmarks.plots import plot_metrics
    from trqam_sdk.benchmarks.registry import get_benchmark
    from trqam_sdk.benchmarks.runner import run_dir, run_one

    start = time.perf_counter()
    out = Path(o.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    bench = get_benchmark("ogbench")
    recipe = demo_recipe(o, pick_threads(o.threads))
    task = bench.tasks(recipe)[0]
    train = bench.load_data(recipe, task, o.progress)
    info = bench.data_info(recipe, task)
    print(f"data: {len(train)} transitions, {info['episodes']} episodes from {info['folder']} "
          f"({info['goal_rows']} rows at the task-{task} goal)", flush=True)
    t_data = time.perf_counter() - start
    runs = []
    for seed in o.seeds:
        for method in ("bc", "trqam"):  # a fresh run each time (the prior is reused only if its spec matches)
            (run_dir(out, bench, recipe, task, method, seed) / "result.json").unlink(missing_ok=True)
        bc = run_one(bench, recipe, task, "bc", seed, out, "demo", o.progress)
        print(f"seed {seed}: BC prior success {_success([bc])} (BC {bc['seconds']['prior']:.0f} s, "
              f"eval {bc['seconds']['prior_eval']:.0f} s)", flush=True)
        tr = run_one(bench, recipe, task, "trqam", seed, out, "demo", o.progress)
        rdir = run_dir(out, bench, recipe, task, "trqam", seed)
        plot = plot_metrics(rdir / "metrics.jsonl", rdir / "trqam_curves.png", f"{o.task} seed {seed}")
        print(f"seed {seed}: BC success {_success([bc])}  TRQAM success {_success([tr])}  kl_ema {tr['kl_ema']:.4f} "
              f"(ε = {tr['kl_budget']})  λ {tr['lam']:.4f}  (train {tr['seconds']['train']:.0f} s, eval "
              f"{tr['seconds']['eval']:.0f} s)", flush=True)
        runs.append({"seed": seed, "bc": bc, "trqam": tr, "plot": str(plot), "run_dir": str(rdir)})
    total = time.perf_counter() - start
    summary = {"task": o.task, "episodes": o.episodes, "seeds": list(o.seeds),
               "bc_success": _success([r["bc"] for r in runs]), "trqam_success": _success([r["trqam"] for r in runs]),
               "kl_ema": float(np.mean([r["trqam"]["kl_ema"] for r in runs])),
               "lam": float(np.mean([r["trqam"]["lam"] for r in runs])), "kl_budget": o.kl_budget,
               "data_seconds": t_data, "total_seconds": total, "options": asdict(o), "runs": runs}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=str))
    print(f"RESULT {o.task} over {len(runs)} seed(s), {o.episodes} episodes each: BC {summary['bc_success']}  "
          f"TRQAM {summary['trqam_success']}  final kl_ema {summary['kl_ema']:.4f} vs ε {o.kl_budget}  "
          f"λ {summary['lam']:.4f}")
    print(f"wall time {total / 60:.1f} min; plots and checkpoints under {out}")
    return summary
