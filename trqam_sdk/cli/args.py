"""The one CLI style for configs: ``--config file.yaml`` plus dotted ``--set KEY=VALUE`` overrides.

Every command that takes a config dataclass calls :func:`add_config_arguments` (which also lists every field
with its type, default, range and docstring under ``--help``) and builds it with :func:`config_from_args`.
A command may keep short flags for common fields (``--steps 10`` ≡ ``--set steps=10``); they go through the
same typed parsing, in command-line order with ``--set``.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trqam_sdk.config import describe_fields, load_config

SET_HELP = ("override one config field by its dotted name, e.g. --set trust_region.kl_budget=0.1 or "
            "--set trackers=[] (repeatable; VALUE is read as YAML, then parsed as the field's type; applied "
            "after --config)")


def config_help(cls: type, width: int = 100) -> str:
    """``--help`` epilog: every leaf field of ``cls`` as ``key: type = default (range)`` and its docstring."""
    lines = [f"{cls.__name__} fields (set with --config FILE.yaml or --set KEY=VALUE):"]
    for f in describe_fields(cls):
        rng = f"  ({f.range})" if f.range else ""
        lines.append(f"  {f.key}: {f.type} = {f.default}{rng}")
        if f.doc:
            lines += textwrap.wrap(" ".join(f.doc.split()), width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


class _Shorthand(argparse.Action):
    """``--steps 10`` appended to the ``--set`` list as ``steps=10`` (quoted for string fields)."""

    def __init__(self, *args: Any, key: str, quote: bool, **kwargs: Any) -> None:
        self.key, self.quote = key, quote
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        value = json.dumps(values) if self.quote else values
        namespace.overrides = [*namespace.overrides, f"{self.key}={value}"]  # never the shared default


class _AppendSet(argparse.Action):
    """``--set KEY=VALUE [KEY=VALUE ...]`` (repeatable), checked for the ``=`` here so argparse reports it with
    the usage line."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        for item in values:
            if "=" not in item:
                parser.error(f"argument --set: expected key=value (e.g. trust_region.kl_budget=0.1), got {item!r}")
        namespace.overrides = [*namespace.overrides, *values]


def add_set_argument(p: argparse.ArgumentParser) -> None:
    """The one ``--set`` of every command: ``--set a.b=1 c=2`` and ``--set a.b=1 --set c=2`` alike."""
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action=_AppendSet, default=[],
                   help=SET_HELP)


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """``--config FILE.yaml`` (recipe fields to override, strict YAML) and ``--set`` for recipe commands (their
    config class, the benchmark's recipe, is only known once ``--benchmark`` is parsed; docs/ogbench.md lists it)."""
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="YAML of recipe fields merged over the recipe and its profile (before --set)")
    add_set_argument(p)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--config`` then ``--set`` as one nested mapping of recipe overrides."""
    from trqam_sdk.strict_yaml import deep_merge, load_yaml_mapping, parse_overrides

    base = load_yaml_mapping(args.config) if args.config else {}
    return deep_merge(base, parse_overrides(args.overrides))


def add_methods_argument(p: argparse.ArgumentParser, default: list[str] | None, default_help: str) -> None:
    """``--methods NAME [NAME ...]``: registered method names or ``all`` (expanded, and unknown names rejected,
    by :func:`trqam_sdk.benchmarks.sweep.expand_methods` before any work)."""
    from trqam_sdk.benchmarks.sweep import all_methods

    p.add_argument("--methods", nargs="*", default=default, metavar="METHOD",
                   help=f"registered methods ({', '.join(all_methods())}) or 'all' (every one, in the paper's "
                        f"Table 1 order, plugins' after); default: {default_help}")


def add_config_arguments(p: argparse.ArgumentParser, cls: type, shorthands: dict[str, str] | None = None,
                         config_help_text: str | None = None) -> None:
    """``--config``, repeatable ``--set``, optional short flags (``{"--steps": "steps"}``) and the field list
    as the help epilog. Results land in ``args.config`` and ``args.overrides`` (in command-line order)."""
    fields = {f.key: f for f in describe_fields(cls)}
    p.add_argument("--config", metavar="FILE.yaml", default=None, help=config_help_text or (
        f"YAML with {cls.__name__} fields (strict: unknown or duplicate keys, wrong types and out-of-range "
        "values are errors naming the file and field)"))
    add_set_argument(p)
    for flag, key in (shorthands or {}).items():
        if key not in fields:
            raise ValueError(f"shorthand {flag}: {cls.__name__} has no field {key!r}")
        f = fields[key]
        many = {"nargs": "+", "type": int} if f.type == "list[int]" else {}
        p.add_argument(flag, dest=f"_shorthand_{key}", metavar=key.rsplit(".", 1)[-1].upper(), action=_Shorthand,
                       key=key, quote=f.type.split(" |")[0] == "str", help=f"same as --set {key}=VALUE ({f.type}, "
                       f"{' '.join(f.doc.split()) or 'see below'})".replace("%", "%%"), **many)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = config_help(cls)


def config_from_args[T](args: argparse.Namespace, cls: type[T], base: T | None = None) -> T:
    """The config of a parsed command line: ``base`` (or the class defaults) ← ``--config`` ← ``--set``."""
    return load_config(cls, args.config, args.overrides, base=base)


def add_run_dir_arguments(p: argparse.ArgumentParser) -> None:
    """``--resume`` / ``--overwrite`` (exclusive): what to do with an earlier run in the output folder, which a
    plain run refuses (trqam_sdk/training/rundir.py)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue the run in the output folder from its newest intact checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in the output folder (its config, log, checkpoints; other files stay)")


def on_existing(args: argparse.Namespace) -> str:
    """The Finetuner's ``on_existing`` for :func:`add_run_dir_arguments`' flags."""
    return "resume" if args.resume else "overwrite" if args.overwrite else "new"


def int_at_least(lo: int) -> Callable[[str], int]:
    """argparse ``type=`` for an integer flag with a lower bound (argparse names the flag in the error)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    return parse


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing part of ``path`` (itself, then its parents) when that part is a file, else None."""
    for q in (path, *path.parents):
        if q.exists():
            return None if q.is_dir() else q
    return None


def check_out_dir(path: str | Path | None, flag: str) -> None:
    """Refuse, before any work and creating nothing, an output folder that is a file or lies under one (it would
    otherwise fail as a bare ``Not a directory`` after data generation or training)."""
    if path is None:
        return
    q = _file_in_the_way(Path(path))
    if q is not None:
        raise NotADirectoryError(f"{flag} {path}: {q} is a file, not a folder")


def check_out_file(path: str | Path, flag: str) -> None:
    """Refuse an output file that is a folder or whose folder is a file, before any work."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a folder, expected a file name")
    q = _file_in_the_way(p.parent)
    if q is not None:
        raise NotADirectoryError(f"{flag} {path}: {q} is a file, not a folder")


def check_in_file(path: str | Path | None, flag: str, what: str) -> None:
    """Refuse a missing input file (or a folder given for it) before any work; the message names flag and path."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a folder, expected a {what}")
    if not p.is_file():
        raise FileNotFoundError(f"{flag}: {what} not found: {path}")
