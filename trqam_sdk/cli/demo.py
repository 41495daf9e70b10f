"""`trqam demo`: the main job (BC → TRQAM on regenerated OGBench cube-single, both evaluated, printed, plotted)."""

from __future__ import annotations

import argparse

from trqam_sdk.benchmarks.ogbench.demo import DemoOptions
from trqam_sdk.cli.args import add_config_arguments, check_out_dir, config_from_args

SHORT_FLAGS = {f"--{name.replace('_', '-')}": name for name in (
    "task", "dataset_episodes", "data_dir", "data_seed", "episode_length", "bc_steps", "steps", "width",
    "critic_width", "num_critics", "critic_tau", "batch_size", "kl_budget", "flow_steps", "episodes",
    "eval_max_steps", "seeds", "workers", "threads", "output_dir")}
"""every option also has its own flag (``--steps 500`` ≡ ``--set steps=500``)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config demo.yaml`` / ``--set`` / short flags for the fields of :class:`DemoOptions`."""
    add_config_arguments(parser, DemoOptions, SHORT_FLAGS)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (same as --set progress=false)")
    parser.set_defaults(func=run)


def options(args: argparse.Namespace) -> DemoOptions:
    """The parsed command line as :class:`DemoOptions`, typed and range-checked (errors name the field)."""
    o = config_from_args(args, DemoOptions)
    if args.no_progress:
        o.progress = False
    return o


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.ogbench.demo import run_demo

    o = options(args)
    check_out_dir(o.output_dir, "output_dir")  # a file there would fail only after data generation
    check_out_dir(o.data_dir, "data_dir")
    run_demo(o)
    return 0
