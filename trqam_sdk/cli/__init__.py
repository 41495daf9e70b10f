"""`trqam` command line. Each subcommand's module is imported only when it runs, so `trqam train`
does not pay for OGBench/MuJoCo imports.

Failures: bad input (a missing or corrupt file, an unknown name, an out-of-range value) ends in one line
``trqam: error: <message>`` and exit status 2; anything else in ``trqam: internal error: <Type>: <message> (run
again with --debug for the traceback)`` and exit status 1; Ctrl-C in ``trqam: interrupted`` and 130. ``--debug``
(anywhere before the command's own flags, like ``--plugin``) or ``TRQAM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

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


class PluginImportError(ImportError):
    """A ``--plugin`` / ``$TRQAM_PLUGINS`` module that does not import: the user's input, so a one-line error."""

    user_error = True


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
            raise PluginImportError(f"cannot import plugin module {name.strip()!r}: {e}") from e
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


DEBUG_FLAG = "--debug"
"""top-level flag (anywhere before the command's own flags, like ``--plugin``): show tracebacks"""

DEBUG_ENV = "TRQAM_DEBUG"
"""set to 1 for the same as ``--debug``: the traceback of any failure instead of the one-line message"""

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, FileExistsError, PermissionError)
"""what bad input raises (ConfigError is a ValueError; data and checkpoint checks raise ValueError / KeyError /
FileNotFoundError; a file the user named may be in the way or unreadable): reported as ``trqam: error:
<message>``, exit status 2, like argparse's own errors. Any exception class with ``user_error = True`` (the
training guard's non-finite error, :class:`PluginImportError`) counts too."""

HELP_EPILOG = (f"Bad input ends in one line 'trqam: error: ...' (exit 2); any other failure in 'trqam: internal "
               f"error: ...' (exit 1); {DEBUG_FLAG} (before the command's flags) or {DEBUG_ENV}=1 shows the "
               "traceback.")


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is the user's input at fault (one-line error, exit 2) rather than a bug (exit 1)."""
    from trqam_sdk.schema import ConfigError

    return isinstance(e, (*USER_ERRORS, ConfigError)) or getattr(type(e), "user_error", False) is True


def _one_line(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def _split_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """Take ``--debug`` out of argv (no command has a flag of that name)."""
    rest = [a for a in argv if a != DEBUG_FLAG]
    return len(rest) != len(argv), rest


@contextlib.contextmanager
def _sdk_warnings_one_line(enabled: bool) -> Iterator[None]:
    """The SDK's own warnings (a checkpoint passed over, a torn log line) as ``trqam: warning: …`` lines instead of
    Python's two-line format quoting the source; other libraries' warnings are left as they are."""
    if not enabled:
        yield
        return
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if f"{os.sep}trqam_sdk{os.sep}" in filename or f"{os.sep}adapters{os.sep}" in filename:
            print(f"trqam: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input: one line on stderr, exit 2; any other exception: one line naming its type and
    the --debug hint, exit 1; Ctrl-C: exit 130. ``--debug`` / ``TRQAM_DEBUG=1``: raise (the traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug, argv = _split_debug(argv)
    debug = debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        with _sdk_warnings_one_line(enabled=not debug):
            return _main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("trqam: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if is_user_error(e):
            print(f"trqam: error: {_one_line(e)}", file=sys.stderr)
            return 2
        print(f"trqam: internal error: {type(e).__name__}: {_one_line(e)} (run again with {DEBUG_FLAG} for the "
              "traceback)", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    plugins, argv = _split_plugins(argv)
    load_plugins(plugins)
    parser = argparse.ArgumentParser(prog="trqam", description="Trust Region Q-Adjoint Matching SDK",
                                     epilog=HELP_EPILOG)
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the traceback of any failure (same as {DEBUG_ENV}=1)")
    parser.add_argument("--plugin", metavar="MODULE", action="append",
                        help=f"import MODULE first (repeatable; also ${PLUGINS_ENV}): what it registers is known")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = [a for a in argv if a in COMMANDS][:1] or list(COMMANDS)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_.replace("%", "%%"))  # argparse %-formats help strings
        if name in wanted:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
