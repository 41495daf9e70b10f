"""Strict YAML for configs: duplicate keys rejected with file and line, YAML 1.2 scalars (``3e-4`` is a float,
only true/false are booleans), dotted ``KEY=VALUE`` overrides and the deep merge that layers them."""

from __future__ import annotations

import copy
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from trqam_sdk.schema import ConfigError, ConfigKeyError, ConfigTypeError


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML keeps the last one) and resolves scalars as YAML 1.2's
    core schema does: only true/false are booleans (``mixed_precision: no`` stays the string "no", ``steps: yes``
    is an error, not 1) and ``3e-4`` is a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):  # SafeLoader reports unhashable keys itself
                continue
            if key in seen:
                raise ConfigKeyError(f"{key_node.start_mark.name}:{line}: duplicate key {key!r} "
                                     f"(first at line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
StrictLoader.yaml_implicit_resolvers = {  # fresh lists: SafeLoader's own must stay untouched
    ch: [(tag, rx) for tag, rx in rs if tag not in (_BOOL, _FLOAT)]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
StrictLoader.add_implicit_resolver(_FLOAT, re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def yaml_scalar(text: str, where: str = "value") -> Any:
    """One YAML value (a ``--set`` right-hand side) read with :class:`StrictLoader`."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {text!r} ({getattr(e, 'problem', e)})") from None


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, read strictly: missing file, syntax errors, duplicate keys and a
    non-mapping top level are ConfigErrors naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with path.open() as f:
            loader = StrictLoader(f)
            try:
                data = loader.get_single_data()  # type: ignore[no-untyped-call]
            finally:
                loader.dispose()  # type: ignore[no-untyped-call]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {e.problem or e.context}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigTypeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_overrides(items: Sequence[str], where: str = "--set") -> dict[str, Any]:
    """``["trust_region.kl_budget=0.1", "trackers=[]"]`` → a nested mapping (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(p.strip() for p in parts):
            raise ConfigError(f"{where}: expected key=value with a dotted key such as trust_region.kl_budget=0.1, "
                              f"got {item!r}")
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {'.'.join(parts[:i + 1])} is set to a value and used as a section")
        node[parts[-1]] = yaml_scalar(text, f"{where} {key}")
    return out
