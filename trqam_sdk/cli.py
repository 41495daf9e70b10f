"""`trqam` command line. Each subcommand's module is imported only when it runs, so `trqam train`
does not pay for OGBench/MuJoCo imports."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("trqam_sdk.demo", "BC → TRQAM on regenerated OGBench cube-single, evaluated (the main job)"),
    "train": ("trqam_sdk.train", "fine-tune a policy on a transitions .npz with a YAML config"),
    "bench": ("trqam_sdk.bench", "time one full update: FLOPs, GFLOP/s and GEMM utilisation"),
    "lerobot-bench": ("trqam_sdk.lerobot_bench", "TRQAM update vs chunk-sampling time, tiny pi0/pi0.5/SmolVLA"),
    "lerobot-train": ("trqam_sdk.lerobot_train", "TRQAM fine-tune of a LeRobot pi0/pi0.5/SmolVLA on a LeRobotDataset"),
    "robomimic": ("trqam_sdk.robomimic_run", "robomimic lift/can/square: scripted data, recipes, stress test"),
    "data": ("trqam_sdk.ogbench_data", "regenerate OGBench play datasets (all manipulation domains), resumable"),
    "run": ("trqam_sdk.runner", "one (domain, task, method, seed) of an OGBench recipe: BC → offline → online → eval"),
    "sweep": ("trqam_sdk.sweep", "many recipe runs, resumable and shardable over processes"),
    "aggregate": ("trqam_sdk.aggregate", "result files → Table 1 layout (mean ± std over seeds) and curves"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="trqam", description="Trust Region Q-Adjoint Matching SDK")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = [a for a in argv if a in COMMANDS][:1] or list(COMMANDS)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name in wanted:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
