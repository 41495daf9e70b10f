"""Ablation of the authors' conventions (trqam_sdk.conventions) on the `trqam demo` setting.

Each run: regenerated OGBench cube-single play data (ogbench's oracle, cached) → BC prior → TRQAM → both
evaluated on the same env seeds, with one conventions profile (``default``, ``reference`` = all differences, or
one difference's name alone). It is built on the library pieces the demo uses (generate_dataset,
load_singletask, pretrain_bc, Finetuner, rollout.evaluation) and reproduces the demo's seeding: torch.manual_seed
(seed) before building the MLP prior, pretrain_bc(seed=seed), FinetuneConfig(seed=seed, log_every=50), evaluation
on env seeds 100000·seed + i. One JSON line per run is appended to ``--out``; ``--table`` prints the table.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/reference_ablation.py --profiles reference --seeds 0 1 2
    .venv/bin/python scripts/reference_ablation.py --table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trqam_sdk.conventions import PROFILES, Conventions
from trqam_sdk.rollout.stats import wilson_interval

TASK = "cube-single-play-singletask-task1-v0"
OUT = Path("runs/reference_ablation")


def load_train(args: argparse.Namespace, conv: Conventions) -> Any:
    """The demo's data: ogbench's oracle play data (cached after the first run), its singletask relabelling,
    actions clipped on load when the profile asks (Transitions.from_numpy(action_clip=...) semantics)."""
    from trqam_sdk.benchmarks.ogbench.generate import generate_dataset
    from trqam_sdk.benchmarks.ogbench.official import load_singletask

    folder = generate_dataset(TASK, episodes=args.dataset_episodes, seed=0, workers=args.workers,
                              episode_length=1001, progress=False)
    env, train, _ = load_singletask("cube-single", 1, "cube-single-play-v0", folder)
    env.close()
    return train.clip_actions(conv.action_clip) if conv.action_clip is not None else train


def success(res: dict[str, float]) -> dict[str, Any]:
    k, n = int(res["successes"]), int(res["episodes"])
    lo, hi = wilson_interval(k, n)
    return {"success": k / n, "successes": k, "episodes": n, "ci95": [lo, hi]}


def run(profile: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig

    from trqam_sdk.benchmarks.ogbench.benchmark import OGBenchEnvFactory
    from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig, TrustRegionConfig
    from trqam_sdk.networks.mlp import reinit_
    from trqam_sdk.rollout.evaluation import FlowActor, evaluate
    from trqam_sdk.training.bc import pretrain_bc
    from trqam_sdk.training.finetuner import Finetuner

    conv = Conventions.profile(profile)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train = load_train(args, conv)
    env = OGBenchEnvFactory("cube-single-singletask-task1-v0",
                            {"max_episode_steps": args.eval_max_steps} if args.eval_max_steps else {})

    def evaluate_policy(policy: Any, desc: str) -> dict[str, Any]:
        return success(evaluate(FlowActor(policy, 10), env, args.episodes, seed=seed, workers=args.workers,
                                desc=desc))

    torch.manual_seed(seed)
    prior = MLPFlowPolicy(MLPPolicyConfig(train.obs_dim, 5, train.action_dim, args.width))
    if conv.init != "lecun_normal":  # the adapter takes no init: re-draw its kernels under the seeded stream
        reinit_(prior, conv.init)
    t1 = time.perf_counter()
    pretrain_bc(prior, train, args.bc_steps, batch_size=256, lr=3e-4, seed=seed, progress=False, conventions=conv)
    t2 = time.perf_counter()
    bc = evaluate_policy(prior, "eval BC")
    t3 = time.perf_counter()
    rdir = OUT / "runs" / f"{profile}-seed{seed}"
    cfg = FinetuneConfig(method="trqam", flow_steps=10, policy=PolicyConfig(width=args.width),
                         critic=CriticConfig(num_critics=4, width=args.width, target_tau=0.005),
                         trust_region=TrustRegionConfig(kl_budget=0.5), batch_size=256, steps=args.steps,
                         seed=seed, log_every=max(1, min(50, args.steps // 20)), output_dir=str(rdir), trackers=[],
                         conventions=conv)
    ft = Finetuner(cfg, prior, train, on_existing="overwrite")  # a rerun replaces the earlier run
    final = ft.train(progress=False)
    t4 = time.perf_counter()
    tr = evaluate_policy(ft.agent.actor, "eval TRQAM")
    t5 = time.perf_counter()
    return {"profile": profile, "seed": seed, "conventions": conv.as_dict(), "differences": conv.differences(),
            "bc": bc, "trqam": tr, "kl_ema": float(ft.agent.kl_ema), "lam": float(ft.agent.lam),
            "final_metrics": final, "settings": {k: v for k, v in vars(args).items() if k not in ("table",)},
            "seconds": {"data": t1 - t0, "bc": t2 - t1, "bc_eval": t3 - t2, "trqam": t4 - t3, "eval": t5 - t4}}


def pct(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{100 * r['success']:5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}] n={r['episodes']}"


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    lines = [f"{'profile':<15} {'seed':>4}  {'BC success':<27} {'TRQAM success':<27} {'kl_ema':>7} {'lam':>7}"]
    for r in rows:
        lines.append(f"{r['profile']:<15} {r['seed']:>4}  {pct(r['bc']):<27} {pct(r['trqam']):<27} "
                     f"{r['kl_ema']:7.4f} {r['lam']:7.4f}")
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["profile"], []).append(r)
    lines.append("")
    lines.append(f"{'profile':<15} {'seeds':>5}  {'BC mean ± std':<16} {'TRQAM mean ± std':<16} pooled TRQAM")
    for name, rs in by.items():
        bc = torch.tensor([100 * r["bc"]["success"] for r in rs])
        trq = torch.tensor([100 * r["trqam"]["success"] for r in rs])
        k, n = sum(r["trqam"]["successes"] for r in rs), sum(r["trqam"]["episodes"] for r in rs)
        lo, hi = wilson_interval(k, n)
        lines.append(f"{name:<15} {len(rs):>5}  {bc.mean():5.1f} ± {bc.std(correction=0):4.1f}     "
                     f"{trq.mean():5.1f} ± {trq.std(correction=0):4.1f}     {100 * k / n:.1f}% "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] n={n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profiles", nargs="+", default=["reference"], choices=PROFILES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--bc-steps", type=int, default=3000)
    p.add_argument("--steps", type=int, default=2000, help="TRQAM steps")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per policy")
    p.add_argument("--eval-max-steps", type=int, default=None)
    p.add_argument("--dataset-episodes", type=int, default=100)
    p.add_argument("--width", type=int, default=256, help="actor and critic width")
    p.add_argument("--workers", type=int, default=2, help="evaluation (and data generation) processes")
    p.add_argument("--out", type=Path, default=OUT / "results.jsonl")
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for profile in args.profiles:
            res = run(profile, seed, args)
            with open(args.out, "a") as f:
                f.write(json.dumps(res, default=str) + "\n")
            print(f"{profile} seed {seed}: BC {pct(res['bc'])}  TRQAM {pct(res['trqam'])}  kl_ema "
                  f"{res['kl_ema']:.4f}  λ {res['lam']:.4f}  ({sum(res['seconds'].values()) / 60:.1f} min)",
                  flush=True)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
