"""`trqam sweep`: many (domain, task, method, seed) runs of recipes, resumable and shardable.

Finished runs (their ``result.json``) are skipped, so re-running the same command resumes. ``--shard i/n``
splits the (domain, task, seed) groups over n independent processes; all methods of one group stay in one
process because they share that seed's BC prior.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--recipes", nargs="+", required=True, help="domain names or YAML paths ('all': every recipe)")
    a("--profile", default="cpu-small")
    a("--tasks", type=int, nargs="*", default=None, help="default: each recipe's tasks")
    a("--methods", nargs="*", default=None, help="default: each recipe's methods")
    a("--seeds", type=int, nargs="*", default=None, help="default: each recipe's seeds")
    a("--out", default="runs/ogbench")
    a("--shard", default="0/1", help="i/n: run the i-th of n interleaved parts of the (domain, task, seed) groups")
    a("--set", nargs="*", default=[], help="overrides applied to every recipe")
    a("--keep-going", action="store_true", help="log a failed run and continue with the next")
    parser.set_defaults(func=run)


def plan(args: argparse.Namespace) -> list[tuple[str, int, int, list[str]]]:
    """[(recipe name, task, seed, methods)] groups in a fixed order (the same for every shard)."""
    from trqam_sdk.benchmarks.recipes import list_recipes, load_recipe, parse_sets

    names = list_recipes() if args.recipes == ["all"] else args.recipes
    groups = []
    for name in names:
        r = load_recipe(name, args.profile, parse_sets(args.set))
        for task in args.tasks or r.tasks:
            for seed in r.seeds if args.seeds is None else args.seeds:
                groups.append((name, task, seed, list(args.methods or r.methods)))
    return groups


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.ogbench.runner import run_dir, run_one
    from trqam_sdk.benchmarks.recipes import load_recipe, parse_sets

    i, n = (int(x) for x in args.shard.split("/"))
    if not 0 <= i < n:
        raise ValueError(f"--shard {args.shard}: need 0 <= i < n")
    groups = plan(args)[i::n]
    failures = 0
    for name, task, seed, methods in groups:
        recipe = load_recipe(name, args.profile, parse_sets(args.set))
        for method in methods:
            t0 = time.perf_counter()
            if (run_dir(args.out, recipe.domain, task, method, seed) / "result.json").is_file():
                print(f"skip (done) {recipe.domain} task{task} {method} seed {seed}", flush=True)
                continue
            try:
                res = run_one(recipe, task, method, seed, args.out, args.profile)
            except Exception:
                if not args.keep_going:
                    raise
                failures += 1
                log = Path(args.out) / "failures.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a") as f:
                    f.write(f"{recipe.domain} task{task} {method} seed {seed}\n{traceback.format_exc()}\n")
                continue
            extra = {k: res[k] for k in ("kl_ema", "lam", "kl_budget") if k in res}
            print(f"done {recipe.domain} task{task} {method} seed {seed}: success {res['success']:.3f} "
                  f"{json.dumps(extra)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 1 if failures else 0
