"""`trqam aggregate`: result files of a benchmark → Table 1 layout (mean ± std over seeds), pooled episodes with
95 % Wilson intervals, the KL-vs-ε table and success / KL / λ curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from trqam_sdk.cli.args import check_out_dir
from trqam_sdk.cli.run import add_benchmark_option, benchmark_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    add_benchmark_option(parser)
    a("--runs", default=None, help="results root written by `trqam run` / `trqam sweep` (default runs/<benchmark>)")
    a("--phase", choices=["offline", "online"], default="offline", help="which success to tabulate")
    a("--plots", default=None, help="folder for <domain>_curves.png (default: <runs>/plots)")
    a("--no-plots", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.aggregate import PIPELINE_BENCHMARKS, aggregate

    if args.benchmark not in PIPELINE_BENCHMARKS:  # metaworld's results come from its pipeline, not a registry entry
        benchmark_of(args)  # an unknown --benchmark is named before any file is read
    runs = args.runs or f"runs/{args.benchmark}"
    if Path(runs).exists() and not Path(runs).is_dir():
        raise NotADirectoryError(f"--runs {runs}: is a file, expected the results folder of `trqam run` / `trqam "
                                 "sweep`")
    if not args.no_plots:
        check_out_dir(args.plots or Path(runs) / "plots", "--plots")
    print(aggregate(runs, args.benchmark, args.phase, args.plots, not args.no_plots))
    return 0
