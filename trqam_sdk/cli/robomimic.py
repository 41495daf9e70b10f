"""`trqam robomimic {generate,run,stress,plot}`: scripted robomimic-format data, a recipe's seeds × methods through
the shared runner, and the QAM-vs-TRQAM stress test (docs/robomimic.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trqam_sdk.cli.args import (
    add_recipe_arguments,
    check_in_file,
    check_out_dir,
    check_out_file,
    int_at_least,
    recipe_overrides,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trqam_sdk.benchmarks.robomimic.generate import TASK_ENVS

    sub = parser.add_subparsers(dest="action", required=True)
    g = sub.add_parser("generate", help="write a scripted robomimic-format hdf5")
    g.add_argument("--task", default="lift", choices=sorted(TASK_ENVS))
    g.add_argument("--output", required=True, help="hdf5 file to write")
    g.add_argument("--demos", type=int_at_least(0), nargs=3, default=[30, 30, 30], metavar=("BETTER", "OKAY", "WORSE"))
    g.add_argument("--max-steps", type=int_at_least(1), default=200)
    g.add_argument("--successful-only", action="store_true", help="drop failed demos (robomimic MH keeps only "
                   "successes)")
    g.add_argument("--seed", type=int_at_least(0), default=0)
    g.add_argument("--no-progress", action="store_true")
    for name, help_ in (("run", "a recipe's seeds × methods (the BC prior included): BC → methods → success"),
                        ("stress", "QAM vs TRQAM from one prior with periodic evals and a loss/success plot")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("recipe", help="lift, can, square or a YAML path")
        p.add_argument("--profile", default="cpu-small", help="paper, cpu-small or stress-cpu")
        p.add_argument("--data", default=None, help="robomimic hdf5 (e.g. the MH low_dim file); default: scripted")
        add_recipe_arguments(p)
        p.add_argument("--output-dir", default=None, help="default runs/robomimic/<task>[-stress]")
        p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("plot", help="stress-test plot from a finished stress output folder")
    p.add_argument("output_dir")
    p.add_argument("--png", required=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.robomimic.stress import plot_stress, stress_overrides, summarize

    if args.action == "generate":
        from trqam_sdk.benchmarks.robomimic.generate import GenerateConfig, generate

        if not sum(args.demos):
            raise ValueError("--demos: all three counts are 0, so the file would hold no demo")
        check_out_file(args.output, "--output")
        cfg = GenerateConfig(task=args.task, demos_per_level=dict(zip(("better", "okay", "worse"), args.demos,
                                                                      strict=True)),
                             max_steps=args.max_steps, keep_failures=not args.successful_only, seed=args.seed)
        print(json.dumps(generate(cfg, args.output, progress=not args.no_progress), indent=1))
        return 0
    if args.action == "plot":
        print(json.dumps(summarize(args.output_dir), indent=1))
        plot_stress(args.output_dir, args.png)
        return 0
    from trqam_sdk.benchmarks.recipes import PRIOR
    from trqam_sdk.benchmarks.registry import get_benchmark
    from trqam_sdk.benchmarks.sweep import Group, describe, sweep
    from trqam_sdk.strict_yaml import deep_merge

    bench = get_benchmark("robomimic")
    check_in_file(args.data, "--data", "robomimic hdf5 file")
    overrides = recipe_overrides(args)
    if args.data:
        overrides = deep_merge(overrides, {"data": {"path": args.data}})
    if args.action == "stress":
        overrides = deep_merge(stress_overrides(), overrides)
    recipe = bench.load_recipe(args.recipe, args.profile, overrides)
    out = Path(args.output_dir or f"runs/robomimic/{recipe.task}{'-stress' if args.action == 'stress' else ''}")
    check_out_dir(out, "--output-dir")
    methods = tuple(dict.fromkeys([PRIOR, *recipe.methods]))  # the prior first: every method is compared to it
    groups = [Group(str(args.recipe), recipe.task, seed, methods) for seed in recipe.seeds]
    if sweep(bench, groups, out, args.profile, overrides):
        return 1
    info = bench.data_info(recipe, recipe.task)
    results = [json.loads((out / bench.run_path(recipe, recipe.task) / m / f"seed{s}" / "result.json").read_text())
               for s in recipe.seeds for m in methods]
    (out / "results.json").write_text(json.dumps({**info, "task": recipe.task, "runs": results}, indent=2))
    if args.action == "stress":
        plot_stress(out, out / "stress.png")
        print(json.dumps(summarize(out), indent=1))
    for m in methods:
        mine = [r for r in results if r["method"] == m]
        print(f"RESULT [{info['label']}] {recipe.task} {m}: " + "  ".join(f"seed {r['seed']} {describe(r)}"
                                                                          for r in mine))
    return 0
