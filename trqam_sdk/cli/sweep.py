"""`trqam sweep`: many recipe runs of one benchmark, resumable (finished runs skipped) and shardable."""

from __future__ import annotations

import argparse

from trqam_sdk.cli.args import add_methods_argument, add_recipe_arguments, check_out_dir, int_at_least, recipe_overrides
from trqam_sdk.cli.run import add_benchmark_option, benchmark_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    add_benchmark_option(parser)
    a("--recipes", nargs="+", required=True, help="recipe names or YAML paths ('all': every recipe)")
    a("--profile", default="cpu-small")
    a("--tasks", nargs="*", default=None, help="default: each recipe's tasks")
    add_methods_argument(parser, None, "each recipe's methods (its profile's `methods:`)")
    a("--seeds", type=int_at_least(0), nargs="*", default=None, help="default: each recipe's seeds")
    a("--out", default=None, help="results root (default runs/<benchmark>)")
    a("--shard", default="0/1", help="i/n: run the i-th of n interleaved parts of the (recipe, task, seed) groups")
    add_recipe_arguments(parser)  # --config / --set: overrides applied to every recipe
    a("--keep-going", action="store_true", help="log a failed run and continue with the next")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.sweep import parse_shard, plan, sweep

    bench = benchmark_of(args)
    i, n = parse_shard(args.shard)
    out = args.out or f"runs/{bench.name}"
    check_out_dir(out, "--out")
    overrides = recipe_overrides(args)
    groups = plan(bench, args.recipes, args.profile, overrides, args.tasks, args.methods, args.seeds)[i::n]
    failures = sweep(bench, groups, out, args.profile, overrides, args.keep_going)
    return 1 if failures else 0
