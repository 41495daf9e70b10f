"""`trqam demo`: BC → TRQAM on a regenerated OGBench cube-single play dataset, both evaluated in the env.

The pipeline is the paper's (SPEC §6) at laptop scale: regenerate play data with ogbench's own oracle
(cached), flow-matching BC of an MLP prior, TRQAM fine-tuning with H = 5, then success rates of the BC
prior and of the fine-tuned policy on the *same* env seeds, a plot of path-KL / KL-EMA / λ and the
checkpoint. The defaults finished in about 20 minutes on two (shared) CPU cores; the options scale it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trqam_sdk.io import read_jsonl

DEFAULT_TASK = "cube-single-play-singletask-task1-v0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `trqam demo`; sets ``func=run``."""
    a = parser.add_argument
    a("--task", default=DEFAULT_TASK, help="OGBench singletask play name (dataset regenerated offline)")
    a("--dataset-episodes", type=int, default=100, help="play episodes to regenerate (1000 transitions each)")
    a("--data-dir", default=None, help="dataset cache folder (default ~/.cache/trqam/ogbench)")
    a("--data-seed", type=int, default=0, help="seed of the regenerated dataset")
    a("--episode-length", type=int, default=1001, help="rows per regenerated episode (OGBench: 1001)")
    a("--bc-steps", type=int, default=3000, help="BC pretraining steps of the prior")
    a("--steps", type=int, default=2000, help="TRQAM fine-tuning steps")
    a("--width", type=int, default=256, help="actor hidden width (the paper uses 512)")
    a("--critic-width", type=int, default=256, help="critic hidden width (the paper uses 512)")
    a("--num-critics", type=int, default=4, help="critic ensemble size K (the paper uses 10)")
    a("--critic-tau", type=float, default=0.005, help="EMA rate of the target critic")
    a("--batch-size", type=int, default=256)
    a("--kl-budget", type=float, default=0.5, help="ε, the path-KL budget (SPEC: 0.5 for cube)")
    a("--flow-steps", type=int, default=10, help="T, Euler steps of the flow")
    a("--episodes", type=int, default=50, help="evaluation episodes per policy")
    a("--eval-max-steps", type=int, default=None, help="episode time limit in evaluation (env default: 200)")
    a("--seeds", type=int, nargs="+", default=[0], help="training seeds; several print mean ± std")
    a(
        "--workers",
        type=int,
        default=None,
        help="processes for data generation and evaluation (default: cores)",
    )
    a(
        "--threads",
        type=int,
        default=0,
        help="torch threads for training (0: all cores, or 1 when the machine is already busy: with other "
        "processes on the cores, one thread ran a TRQAM step 3-7x faster than two in our measurements)",
    )
    a("--output-dir", default="runs/demo")
    a("--no-progress", action="store_true", help="no tqdm bars")
    parser.set_defaults(func=run)


def plot_metrics(metrics_path: Path, out_path: Path, title: str = "") -> Path:
    """path_kl and kl_ema against ε, and λ, over steps, from a run's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics_path, missing_ok=False)
    step = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax1.plot(step, [r["path_kl"] for r in rows], alpha=0.5, label="path KL D̂ (batch)")
    ax1.plot(step, [r["kl_ema"] for r in rows], label="KL EMA D̄")
    ax1.plot(step, [r["kl_budget"] for r in rows], "k--", label="budget ε")
    ax1.set_ylabel("path-space KL")
    ax1.legend()
    ax1.set_title(title)
    ax2.plot(step, [r["lam"] for r in rows], color="C3")
    ax2.set_ylabel("λ")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def run_seed(args: argparse.Namespace, seed: int, train: Any, eval_env: str, out: Path) -> dict[str, Any]:
    """BC prior → eval → TRQAM → eval for one seed; the two evals share env seeds (a paired comparison)."""
    from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
    from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig, TrustRegionConfig
    from trqam_sdk.rollout.evaluation import FlowActor, evaluate
    from trqam_sdk.training.finetuner import Finetuner, pretrain_bc

    progress = not args.no_progress
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    policy = MLPFlowPolicy(MLPPolicyConfig(train.obs_dim, 5, train.action_dim, width=args.width))
    pretrain_bc(policy, train, args.bc_steps, batch_size=args.batch_size, seed=seed, progress=progress)
    policy.save_pretrained(out / "bc_policy")
    t_bc = time.perf_counter()
    env_kwargs = {"max_episode_steps": args.eval_max_steps} if args.eval_max_steps else None

    def success(actor: Any) -> dict[str, float]:  # same env seeds for BC and TRQAM: a paired comparison
        return evaluate(FlowActor(actor, args.flow_steps), eval_env, args.episodes, seed=seed,
                        workers=args.workers, progress=progress, env_kwargs=env_kwargs)

    bc = success(policy)
    t_bc_eval = time.perf_counter()
    print(
        f"seed {seed}: BC prior success {100 * bc['success_rate']:.1f}% over {args.episodes} episodes "
        f"(BC {t_bc - t0:.0f} s, eval {t_bc_eval - t_bc:.0f} s)",
        flush=True,
    )
    cfg = FinetuneConfig(
        flow_steps=args.flow_steps,
        policy=PolicyConfig(width=args.width),
        critic=CriticConfig(num_critics=args.num_critics, width=args.critic_width, target_tau=args.critic_tau),
        trust_region=TrustRegionConfig(kl_budget=args.kl_budget),
        batch_size=args.batch_size,
        steps=args.steps,
        seed=seed,
        log_every=max(1, min(50, args.steps // 20)),
        output_dir=str(out),
    )
    log = out / "metrics.jsonl"
    if log.is_file():
        log.unlink()  # a fresh run, not an append to an earlier one
    ft = Finetuner(cfg, policy, train)
    final = ft.train(progress=progress)
    ft.save_policy(out / "trqam_policy")
    t_ft = time.perf_counter()
    ft.end()
    tr = success(ft.agent.actor)
    t_end = time.perf_counter()
    plot = plot_metrics(log, out / "trqam_curves.png", f"{args.task} seed {seed}")
    return {
        "seed": seed,
        "bc_success": bc["success_rate"],
        "trqam_success": tr["success_rate"],
        "kl_ema": float(ft.agent.kl_ema),
        "lam": float(ft.agent.lam),
        "kl_budget": args.kl_budget,
        "critic_loss": final.get("critic_loss"),
        "q_mean": final.get("q_mean"),
        "plot": str(plot),
        "checkpoint": str(out),
        "seconds": {
            "bc": t_bc - t0,
            "bc_eval": t_bc_eval - t_bc,
            "trqam": t_ft - t_bc_eval,
            "trqam_eval": t_end - t_ft,
        },
    }


def _mean_std(xs: list[float]) -> str:
    m = float(np.mean(xs))
    s = float(np.std(xs)) if len(xs) > 1 else math.nan
    return f"{100 * m:.1f}%" + (f" ± {100 * s:.1f}" if len(xs) > 1 else "")


def pick_threads(requested: int) -> int:
    """All cores on a quiet machine; one thread when the load average says the cores are taken."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cores - 0.5 else cores


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.ogbench.generate import generate_dataset, load_ogbench, split_task_name

    start = time.perf_counter()
    out_root = Path(args.output_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    _, _, eval_env = split_task_name(args.task)
    data_dir = generate_dataset(
        args.task,
        episodes=args.dataset_episodes,
        seed=args.data_seed,
        episode_length=args.episode_length,
        dataset_dir=args.data_dir,
        workers=args.workers,
        progress=not args.no_progress,
    )
    env, train, _ = load_ogbench(args.task, data_dir)
    env.close()
    torch.set_num_threads(pick_threads(args.threads))
    n_ep, n_succ = int(train.terminals.sum()), int((train.masks < 0.5).sum())
    print(
        f"data: {len(train)} transitions, {n_ep} episodes from {data_dir} "
        f"({n_succ} rows at the task-{args.task.split('task')[-1][0]} goal)",
        flush=True,
    )
    t_data = time.perf_counter() - start
    results = []
    for seed in args.seeds:
        r = run_seed(args, seed, train, eval_env, out_root / f"seed{seed}")
        results.append(r)
        print(
            f"seed {seed}: BC success {100 * r['bc_success']:.1f}%  "
            f"TRQAM success {100 * r['trqam_success']:.1f}%"
            f"  kl_ema {r['kl_ema']:.4f} (ε = {r['kl_budget']})  λ {r['lam']:.4f}",
            flush=True,
        )
    total = time.perf_counter() - start
    summary = {
        "task": args.task,
        "eval_env": eval_env,
        "episodes": args.episodes,
        "seeds": args.seeds,
        "bc_success": _mean_std([r["bc_success"] for r in results]),
        "trqam_success": _mean_std([r["trqam_success"] for r in results]),
        "data_seconds": t_data,
        "total_seconds": total,
        "args": vars(args) | {"func": None},
        "runs": results,
    }
    (out_root / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    print(
        f"RESULT {args.task} over {len(results)} seed(s), {args.episodes} episodes each: "
        f"BC {summary['bc_success']}  TRQAM {summary['trqam_success']}  "
        f"final kl_ema {np.mean([r['kl_ema'] for r in results]):.4f} vs ε {args.kl_budget}  "
        f"λ {np.mean([r['lam'] for r in results]):.4f}"
    )
    print(f"wall time {total / 60:.1f} min; plots and checkpoints under {out_root}")
    return 0
