"""The benchmark registry: a name → a :class:`~trqam_sdk.benchmarks.base.Benchmark`, so `trqam run / sweep /
aggregate --benchmark NAME` find benchmarks defined inside or outside the package.

Built-in benchmarks are looked up lazily (importing the registry imports neither ogbench nor robosuite); a plugin
module registers its own with ``@register_benchmark("name")`` and is loaded by ``trqam --plugin module``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from trqam_sdk.benchmarks.base import Benchmark
from trqam_sdk.registry_names import check_registry_name

BENCHMARKS: dict[str, type[Benchmark]] = {}
"""name → benchmark class"""

BUILTIN: dict[str, str] = {"ogbench": "trqam_sdk.benchmarks.ogbench.benchmark",
                           "robomimic": "trqam_sdk.benchmarks.robomimic.benchmark"}
"""built-in benchmark name → module that registers it (imported on first lookup)"""

_INSTANCES: dict[str, Benchmark] = {}


def register_benchmark[C: type[Benchmark]](name: str) -> Callable[[C], C]:
    """Class decorator: ``@register_benchmark("my_bench")`` makes ``trqam run --benchmark my_bench`` work."""
    check_registry_name(name, "benchmark")

    def wrap(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
            raise TypeError(f"benchmark {name!r}: {cls!r} is not a subclass of trqam_sdk.benchmarks.base.Benchmark")
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise TypeError(f"benchmark {name!r} ({cls.__qualname__}) does not implement {missing}")
        if name in BENCHMARKS and BENCHMARKS[name] is not cls:
            raise ValueError(f"benchmark {name!r} is already registered ({BENCHMARKS[name].__qualname__})")
        BENCHMARKS[name] = cls
        cls.name = name
        _INSTANCES.pop(name, None)
        return cls

    return wrap


def benchmark_names() -> list[str]:
    """Every known benchmark: the built-in ones and those registered from outside."""
    return sorted(set(BENCHMARKS) | set(BUILTIN))


def get_benchmark(name: str) -> Benchmark:
    """The (shared) instance of the benchmark registered as ``name``; a clear error listing the known names."""
    if name not in BENCHMARKS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {benchmark_names()} (register your own "
                         "with trqam_sdk.benchmarks.registry.register_benchmark and load it with --plugin)")
    if name not in _INSTANCES:
        _INSTANCES[name] = BENCHMARKS[name]()
    return _INSTANCES[name]
