"""`trqam run`: one (recipe, task, method, seed) of any registered benchmark: BC → offline → online → evaluation."""

from __future__ import annotations

import argparse
from typing import Any

from trqam_sdk.cli.args import add_recipe_arguments, check_out_dir, int_at_least, recipe_overrides


def add_benchmark_option(parser: argparse.ArgumentParser) -> None:
    """``--benchmark NAME`` (ogbench by default; plugins' benchmarks are known once ``--plugin`` imported them)."""
    parser.add_argument("--benchmark", default="ogbench",
                        help="a registered benchmark: ogbench, robomimic or one a --plugin module registers")


def benchmark_of(args: argparse.Namespace) -> Any:
    from trqam_sdk.benchmarks.registry import get_benchmark

    return get_benchmark(args.benchmark)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trqam_sdk.benchmarks.sweep import all_methods

    a = parser.add_argument
    add_benchmark_option(parser)
    a("--recipe", required=True, help="a recipe name of the benchmark (e.g. cube-double, lift) or a YAML path")
    a("--profile", default="cpu-small", help="recipe profile: paper or cpu-small")
    a("--task", default=None, help="one of the recipe's tasks (OGBench: 1..5; default: the recipe's first)")
    a("--method", default="trqam", help="bc (evaluate the BC prior) or a registered fine-tuning method: "
                                        f"{', '.join(all_methods(prior=False))} (or one a --plugin registers)")
    a("--seed", type=int_at_least(0), default=None, help="default: the recipe's first seed")
    a("--out", default=None, help="results root (default runs/<benchmark>)")
    add_recipe_arguments(parser)
    a("--progress", action="store_true", help="tqdm bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.runner import run_one
    from trqam_sdk.benchmarks.sweep import describe

    bench = benchmark_of(args)
    out = args.out or f"runs/{bench.name}"
    check_out_dir(out, "--out")
    recipe = bench.load_recipe(args.recipe, args.profile, recipe_overrides(args))
    task = bench.tasks(recipe)[0] if args.task is None else bench.check_task(recipe, args.task)
    seed = recipe.seeds[0] if args.seed is None else args.seed
    res = run_one(bench, recipe, task, args.method, seed, out, args.profile, args.progress)
    kl = f"  kl_ema {res['kl_ema']:.4f} (ε {res['kl_budget']})  λ {res['lam']:.4f}" if "kl_ema" in res else ""
    print(f"RESULT {bench.name} {bench.domain(recipe)} task {task} {args.method} seed {seed}: {describe(res)}{kl}")
    return 0
