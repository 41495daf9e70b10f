"""The method registry: a name → an agent class, so the finetuner, the CLI and recipes find methods by name.

A method registers itself with :func:`register_method` (inside or outside the package); lookups are lazy for
the built-in ones, so importing the registry does not import every method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from trqam_sdk.registry_names import check_registry_name

METHODS: dict[str, type] = {}
"""name → agent class (a subclass of :class:`trqam_sdk.methods.base.Agent`)"""

BUILTIN: dict[str, str] = {"bc": "trqam_sdk.methods.bc", "trqam": "trqam_sdk.methods.trqam",
                           "qam": "trqam_sdk.methods.trqam", "qam_ext_kl": "trqam_sdk.methods.trqam",
                           "qam_edit": "trqam_sdk.methods.qam_edit", "fql": "trqam_sdk.methods.fql",
                           "dsrl": "trqam_sdk.methods.dsrl", "ifql": "trqam_sdk.methods.ifql",
                           "cgql_linex": "trqam_sdk.methods.cgql"}
"""built-in method name → module that registers it (imported on first lookup)"""

FINETUNING = ("fql", "cgql_linex", "dsrl", "ifql", "qam", "qam_ext_kl", "qam_edit", "trqam")
"""the built-in methods that fine-tune a prior against a critic, in the order of the paper's Table 1 (``bc``
evaluates / trains the prior itself)"""


def register_method[C: type](name: str) -> Callable[[C], C]:
    """Class decorator: ``@register_method("my_method")`` makes ``FinetuneConfig(method="my_method")`` work."""
    check_registry_name(name, "method")

    def wrap(cls: C) -> C:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered ({METHODS[name].__qualname__})")
        METHODS[name] = cls
        cls.method_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def method_names() -> list[str]:
    """Every known method: the built-in ones and those registered from outside."""
    return sorted(set(METHODS) | set(BUILTIN))


def get_method(name: str) -> Any:
    """The agent class registered as ``name``; a clear error listing the known names otherwise."""
    if name not in METHODS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {method_names()} "
                         "(register your own with trqam_sdk.methods.register_method)")
    return METHODS[name]
