"""`trqam` command line. Each subcommand's module is imported only when it runs, so `trqam train`
does not pay for OGBench/MuJoCo imports."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "demo": ("trqam_sdk.cli.demo",
             "BC → TRQAM on regenerated OGBench cube-single, evaluated (the main job)"),
    "train": ("trqam_sdk.cli.train", "fine-tune a policy on a transitions .npz with a YAML config"),
    "bench": ("trqam_sdk.cli.bench", "time one full update: FLOPs, GFLOP/s and GEMM utilisation"),
    "lerobot-bench": ("trqam_sdk.cli.lerobot_bench",
                      "TRQAM update vs chunk-sampling time, tiny pi0/pi0.5/SmolVLA"),
    "lerobot-train": ("trqam_sdk.cli.lerobot_train",
                      "TRQAM fine-tune of a LeRobot pi0/pi0.5/SmolVLA on a LeRobotDataset"),
    "metaworld": ("trqam_sdk.cli.metaworld",
                  "MetaWorld with a LeRobot VLA: data → lerobot-train prior → offline → online → lerobot-eval"),
    "robomimic": ("trqam_sdk.cli.robomimic",
                  "robomimic lift/can/square: scripted data, recipes, stress test"),
    "data": ("trqam_sdk.cli.data",
             "regenerate OGBench play datasets (all manipulation domains), resumable"),
    "run": ("trqam_sdk.cli.run",
            "one (recipe, task, method, seed) of a benchmark (--benchmark): BC → offline → online → eval"),
    "sweep": ("trqam_sdk.cli.sweep", "many recipe runs of a benchmark, resumable and shardable over processes"),
    "aggregate": ("trqam_sdk.cli.aggregate",
                  "result files → Table 1 layout (mean ± std over seeds, 95% Wilson intervals) and curves"),
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


DEBUG_ENV = "TRQAM_DEBUG"
"""set to 1 to get the traceback of a user-input error instead of the one-line message"""

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError)
"""what bad input raises (ConfigError is a ValueError; data and checkpoint checks raise ValueError / KeyError /
FileNotFoundError): reported as ``trqam: error: <message>``, exit status 2, like argparse's own errors"""


def _one_line(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; a bad input ends in one line on stderr and exit status 2 (``TRQAM_DEBUG=1``: raise)."""
    try:
        return _main(argv)
    except USER_ERRORS as e:
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        print(f"trqam: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plugins, argv = _split_plugins(argv)
    load_plugins(plugins)
    parser = argparse.ArgumentParser(prog="trqam", description="Trust Region Q-Adjoint Matching SDK",
                                     epilog=f"Bad input ends in one line 'trqam: error: ...' (exit 2); "
                                            f"{DEBUG_ENV}=1 shows the traceback.")
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
