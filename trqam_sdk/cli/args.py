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
