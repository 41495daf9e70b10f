"""Typed config dataclasses: parsing by declared type, declared ranges, a strict YAML loader, field docstrings.

The machinery behind :mod:`trqam_sdk.config` (kept apart so that module reads as the list of settings); the
strict YAML loader and ``--set`` overrides are in :mod:`trqam_sdk.strict_yaml`.
Why hand-written rather than draccus: see docs/design.md, "Configs". Every error names its source (a file,
``--set`` or the class) and the dotted field, e.g. ``cfg.yaml: trust_region.lam_min: must be > 0, got -1.0``.
"""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import difflib
import functools
import inspect
import json
import math
import numbers
import re
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value, key or file that cannot be accepted; the message names the source and the field."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigKeyError(ConfigError, KeyError):
    """An unknown or missing key (also a KeyError, as callers caught before)."""


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type (also a TypeError, as callers caught before)."""


def _fail(exc: type[ConfigError], where: str, path: str, message: str) -> ConfigError:
    return exc(f"{where}: {path}: {message}" if path else f"{where}: {message}")


# ----------------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field. NaN fails every bound and is never accepted; ±inf only where ``allow_inf``
    (a value meaning "no limit", e.g. ``grad_clip: .inf``), since elsewhere it passes a lone lower bound and
    then poisons the run."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    allow_inf: bool = False

    def bounds_ok(self, v: float) -> bool:
        return ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))

    def problem(self, v: float) -> str | None:
        """Why ``v`` is refused (bounds first, then finiteness), or None when it is accepted."""
        if not self.bounds_ok(v):
            return f"must be {self}, got {v!r}"
        if isinstance(v, numbers.Integral):
            return None
        x = float(v)
        if math.isnan(x) or (math.isinf(x) and not self.allow_inf):
            has_bounds = any(b is not None for b in (self.gt, self.ge, self.lt, self.le))
            return f"must be finite and {self}, got {v!r}" if has_bounds else f"must be {self}, got {v!r}"
        return None

    def ok(self, v: float) -> bool:
        return self.problem(v) is None

    def __str__(self) -> str:
        """The bounds as errors and ``--help`` show them: ``> 0``, ``in (0, 1]``; no bounds: ``finite``."""
        def n(x: float) -> str:
            return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

        lo = f"({n(self.gt)}" if self.gt is not None else f"[{n(self.ge)}" if self.ge is not None else None
        hi = f"{n(self.lt)})" if self.lt is not None else f"{n(self.le)}]" if self.le is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"> {n(self.gt)}" if self.gt is not None else f">= {n(self.ge)}"  # type: ignore[arg-type]
        if hi:
            return f"< {n(self.lt)}" if self.lt is not None else f"<= {n(self.le)}"  # type: ignore[arg-type]
        return "not NaN" if self.allow_inf else "finite"

    def help(self) -> str:
        """:meth:`__str__`, plus where inf is accepted (for ``--help``)."""
        return f"{self}, or inf" if self.allow_inf and str(self) != "not NaN" else str(self)


def ranged(default: Any = dataclasses.MISSING, *, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None, allow_inf: bool = False) -> Any:
    """A dataclass field with its allowed range next to it: ``lr: float = ranged(3e-4, gt=0)``. Values must be
    finite unless ``allow_inf`` (for a field where inf means "no limit"); no bounds: any finite number."""
    return field(default=default, metadata={"range": Range(gt, ge, lt, le, allow_inf)})


# ------------------------------------------------------------------------------------------ validation
_DEFERRED: contextvars.ContextVar[bool] = contextvars.ContextVar("trqam_config_deferred", default=False)


class ConfigBase:
    """Base of config dataclasses: validated when built (in code, from YAML, by draccus) and on request.

    A subclass may define ``cross_checks(self)`` yielding ``(field, problem)`` for rules between fields.
    Configs are often deep-copied and mutated after construction: call :meth:`validate` again after that.
    """

    def __post_init__(self) -> None:
        if not _DEFERRED.get():  # from_dict validates once at the end, with the file's name and full paths
            validate(self)

    def validate(self, where: str | None = None) -> None:
        validate(self, where)


def _type_ok(tp: Any, v: Any) -> bool:
    """Whether ``v`` already has the declared type (a config built in code is checked, not converted)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is float:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)
    if tp is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if origin is Literal:
        return v in args
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(a, v) for a in args)
    if origin is list:
        return isinstance(v, list) and all(_type_ok(args[0], x) for x in v)
    if origin is tuple:
        if not isinstance(v, tuple | list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(args[0], x) for x in v)
        return len(v) == len(args) and all(_type_ok(a, x) for a, x in zip(args, v, strict=True))
    if origin is dict:
        return isinstance(v, dict) and all(_type_ok(args[0], k) and _type_ok(args[1], x) for k, x in v.items())
    if tp is type(None):
        return v is None
    return isinstance(v, origin or tp)


def problems(cfg: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(dotted field, problem)`` of a config tree: types, declared ranges, then cross-field rules."""
    hints, found = typing.get_type_hints(type(cfg)), False
    for f in dataclasses.fields(cfg):
        v, key = getattr(cfg, f.name), f"{path}{f.name}"
        if not _type_ok(hints[f.name], v):
            found = True
            yield key, f"expected {type_name(hints[f.name])}, got {v!r} ({type(v).__name__})"
        elif dataclasses.is_dataclass(v):
            for p in problems(v, key + "."):
                found = True
                yield p
        elif (rng := f.metadata.get("range")) is not None and v is not None and (bad := rng.problem(v)):
            found = True
            yield key, bad
    checks = getattr(cfg, "cross_checks", None)
    if checks is not None and not found:  # cross-field rules assume well-typed, in-range fields
        for name, problem in checks():
            yield f"{path}{name}", problem


def validate(cfg: Any, where: str | None = None) -> None:
    """Raise :class:`ConfigError` naming the first bad field of ``cfg`` (re-run it after mutating a config)."""
    for key, problem in problems(cfg):
        raise _fail(ConfigError, where or type(cfg).__name__, key, problem)


# ---------------------------------------------------------------------------------------------- parsing
def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "{" + ", ".join(map(str, args)) + "}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return "any" if tp is Any else getattr(tp, "__name__", str(tp))


def _convert(tp: Any, v: Any, where: str, path: str) -> Any:
    """``v`` (from YAML or ``--set``) as the declared type ``tp``; a ConfigError naming ``path`` otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(expected: str) -> ConfigError:
        return _fail(ConfigTypeError, where, path, f"expected {expected}, got {v!r} ({type(v).__name__})")

    if tp is Any:
        return v
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise bad(f"a mapping of {tp.__name__} fields")
        return _build(tp, v, where, path + ".")
    if origin is Literal:
        if v not in args:
            raise _fail(ConfigError, where, path, f"must be one of {list(args)}, got {v!r}")
        return v
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _convert(a, v, where, path)
            except ConfigError as e:
                errors.append(e)
        raise bad(type_name(tp)) from errors[-1]
    if origin is list or origin is tuple:
        if not isinstance(v, list | tuple):
            raise bad(f"a list ({type_name(tp)})")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return origin(_convert(args[0], x, where, f"{path}[{i}]") for i, x in enumerate(v))
        if len(v) != len(args):
            raise _fail(ConfigTypeError, where, path, f"expected {len(args)} items ({type_name(tp)}), got {v!r}")
        return tuple(_convert(a, x, where, f"{path}[{i}]") for i, (a, x) in enumerate(zip(args, v, strict=True)))
    if origin is dict:
        if not isinstance(v, dict):
            raise bad(f"a mapping ({type_name(tp)})")
        return {_convert(args[0], k, where, f"{path}.{k}"): _convert(args[1], x, where, f"{path}.{k}")
                for k, x in v.items()}
    if tp is float:
        if isinstance(v, bool):
            raise bad("a number")
        if isinstance(v, numbers.Real):
            return float(v)
        if isinstance(v, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(v.strip())
            except ValueError:
                raise bad("a number") from None
        raise bad("a number")
    if tp is int:
        if isinstance(v, bool):
            raise bad("an integer")
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():  # 1e6
            return int(v)
        if isinstance(v, str) and re.fullmatch(r"\s*[-+]?[0-9][0-9_]*\s*", v):
            return int(v)
        raise bad("an integer")
    if tp is bool:
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise bad("a string (quote it)")
        return v
    if tp is Path:
        if not isinstance(v, str | Path):
            raise bad("a path")
        return Path(v)
    if tp is type(None):
        if v is not None:
            raise bad("null")
        return None
    if not isinstance(v, origin or tp):
        raise bad(type_name(tp))
    return v


def _build(cls: type, data: dict[str, Any], where: str, prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in data:
        if k not in fields:
            near = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _fail(ConfigKeyError, where, f"{prefix}{k}",
                        f"unknown keys [{k!r}]{hint}; valid keys are {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _fail(ConfigKeyError, where, prefix.rstrip("."), f"missing required keys {missing}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _convert(hints[k], v, where, f"{prefix}{k}") for k, v in data.items()})


def from_dict[T](cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a (nested) config dataclass from a mapping: values parsed by their declared type, unknown keys
    rejected, ranges checked once the whole tree is built; errors read ``<where>: <dotted.field>: <problem>``."""
    if not isinstance(data, dict):
        raise ConfigTypeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    outer = not _DEFERRED.get()
    token = _DEFERRED.set(True)
    try:
        cfg = _build(cls, data, where, "")
    finally:
        _DEFERRED.reset(token)
    if outer:
        validate(cfg, where)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (JSON-/YAML-ready apart from tuples), the inverse of :func:`from_dict`."""
    return dataclasses.asdict(cfg)


# ------------------------------------------------------------------------------------------ docstrings
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name → the string literal right under it in the class body (CleanRL / draccus convention),
    inherited ones included; fields without one are absent."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. built in a REPL)
            continue
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


@dataclass(frozen=True)
class FieldInfo:
    key: str
    """dotted path, e.g. trust_region.kl_budget"""
    type: str
    default: str
    range: str
    doc: str


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v) if v == "" else v
    try:
        return json.dumps(v, ensure_ascii=False)
    except TypeError:
        return repr(v)


def describe_fields(cls: type, prefix: str = "") -> list[FieldInfo]:
    """Every leaf field of a config tree with its type, default, range and docstring (for ``--help``)."""
    hints, docs, out = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += describe_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rng = f.metadata.get("range")
        out.append(FieldInfo(f"{prefix}{f.name}", type_name(tp),
                             "required" if default is dataclasses.MISSING else _show(default),
                             rng.help() if rng else "", docs.get(f.name, "")))
    return out
