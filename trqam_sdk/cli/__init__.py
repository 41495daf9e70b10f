"""`trqam` command line. Each subcommand's module is imported only when it runs, so `trqam train`
does not pay for OGBench/MuJoCo imports."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "demo": ("trqam_sdk.benchmarks.ogbench.demo",
             "BC → TRQAM on regenerated OGBench cube-single, evaluated (the main job)"),
    "train": ("trqam_sdk.cli.train", "fine-tune a policy on a transitions .npz with a YAML config"),
    "bench": ("trqam_sdk.profiling.bench", "time one full update: FLOPs, GFLOP/s and GEMM utilisation"),
    "lerobot-bench": ("trqam_sdk.profiling.lerobot_bench",
                      "TRQAM update vs chunk-sampling time, tiny pi0/pi0.5/SmolVLA"),
    "lerobot-train": ("trqam_sdk.integrations.lerobot.train",
                      "TRQAM fine-tune of a LeRobot pi0/pi0.5/SmolVLA on a LeRobotDataset"),
    "robomimic": ("trqam_sdk.benchmarks.robomimic.run",
                  "robomimic lift/can/square: scripted data, recipes, stress test"),
    "data": ("trqam_sdk.benchmarks.ogbench.generate",
             "regenerate OGBench play datasets (all manipulation domains), resumable"),
    "run": ("trqam_sdk.benchmarks.ogbench.runner",
            "one (domain, task, method, seed) of an OGBench recipe: BC → offline → online → eval"),
    "sweep": ("trqam_sdk.benchmarks.sweep", "many recipe runs, resumable and shardable over processes"),
    "aggregate": ("trqam_sdk.benchmarks.aggregate", "result files → Table 1 layout (mean ± std over seeds) and curves"),
}


PLUGINS_ENV = "TRQAM_PLUGINS"
"""comma-separated modules imported before a command runs (they register methods, adapters, benchmarks)"""


def load_plugins(modules: list[str] | None = None) -> list[str]:
    """Import plugin modules so what they register (``register_method``, ``register_benchmark``, adapters with a
    ``type_name``) is known to every command: from ``--plugin`` flags, ``$TRQAM_PLUGINS`` and the
    ``trqam_sdk.plugins`` entry-point group of installed packages."""
    from importlib.metadata import entry_points

    names = [m for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()] + list(modules or [])
    loaded = []
    for ep in entry_points(group="trqam_sdk.plugins"):
        ep.load()
        loaded.append(ep.value)
    for name in names:
        try:
            importlib.import_module(name.strip())
        except ImportError as e:
            raise SystemExit(f"trqam: cannot import plugin module {name.strip()!r}: {e}") from e
        loaded.append(name.strip())
    return loaded


def _split_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take ``--plugin MODULE`` (repeatable, anywhere before the command's own flags) out of argv."""
    plugins, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--plugin" and i + 1 < len(argv):
            plugins.append(argv[i + 1])
            i += 2
        elif argv[i].startswith("--plugin="):
            plugins.append(argv[i].split("=", 1)[1])
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    return plugins, rest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plugins, argv = _split_plugins(argv)
    load_plugins(plugins)
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
