"""Import rules of the layout by concern (docs/design.md), read from the source with ``ast`` — nothing is imported.

* ``trqam_sdk/core/`` (the pure math) imports nothing else of the SDK and no Accelerate, not even inside a function.
* Only ``trqam_sdk/training/`` imports Accelerate (the finetuner is the one place that knows about devices).
* No import cycle between SDK modules through module-level imports (what runs at import time; imports inside
  functions and under ``if TYPE_CHECKING:`` are the sanctioned way to break one).
* Dependencies point one way (STYLE.md: core ← networks ← adapters ← data ← methods ← training/rollout ←
  benchmarks/integrations ← profiling ← cli ← testing): no module-level import of a higher layer.
* No package file over 400 lines.

Every failure names the offending files (and lines), so a violation is found without re-running anything.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    target: str
    """the imported SDK module (``from pkg import name`` resolves to ``pkg.name`` when that is a module)"""
    line: int
    top_level: bool
    """executed at import time: not inside a function and not under ``if TYPE_CHECKING:``"""


@cache
def package_dirs() -> dict[str, Path]:
    """Import name → source folder of every package, from pyproject's explicit list and its package-dir."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    remap = tool.get("package-dir", {})
    out = {}
    for name in tool["packages"]:
        parent = max((p for p in remap if name == p or name.startswith(p + ".")), key=len, default=None)
        base = ROOT / remap[parent] / Path(*name[len(parent):].split(".")[1:]) if parent else ROOT / Path(
            *name.split("."))
        out[name] = base
    return out


@cache
def modules() -> dict[str, Path]:
    """Every SDK module by its import name (packages by their ``__init__.py``)."""
    out = {}
    for pkg, folder in package_dirs().items():
        for file in sorted(folder.glob("*.py")):
            out[pkg if file.stem == "__init__" else f"{pkg}.{file.stem}"] = file
    return out


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, top_level: bool):
    """(import node, executed-at-import-time) for every import under ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, top_level
        inner = top_level and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not (
            isinstance(child, ast.If) and _is_type_checking(child))
        yield from _walk(child, inner)


@cache
def imports(module: str) -> tuple[tuple[str, str, int, bool], ...]:
    """(imported name, its fallback, line, top level) for every name an import statement of ``module`` binds.

    ``import a.b`` gives (a.b, a.b); ``from pkg import n`` gives (pkg.n, pkg): the module pkg.n if there is one,
    else the attribute n of pkg. Relative imports are made absolute."""
    file = modules()[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node, top in _walk(ast.parse(file.read_text(), str(file)), True):
        if isinstance(node, ast.Import):
            out += [(a.name, a.name, node.lineno, top) for a in node.names]
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        out += [(f"{base}.{a.name}", base, node.lineno, top) for a in node.names]
    return tuple(out)


def sdk_imports(module: str) -> list[Import]:
    """The SDK modules ``module`` imports (a module does not depend on itself)."""
    known, out = modules(), []
    for name, fallback, line, top in imports(module):
        target = name if name in known else fallback if fallback in known else None
        if target and target != module:
            out.append(Import(target, line, top))
    return out


def third_party(module: str, package: str) -> list[int]:
    """Lines where ``module`` imports ``package`` (or a submodule of it), at any depth."""
    return sorted({line for _, name, line, _ in imports(module) if name == package or name.startswith(package + ".")})


# -- the rules -------------------------------------------------------------------------------------------------
def test_the_scanner_sees_what_the_rules_need() -> None:
    """Positive controls, so an empty scan cannot pass the rules: every package's modules are found (adapters/
    through package-dir), a function-level import is seen as such, relative and ``from`` imports resolve."""
    mods = modules()
    assert {"trqam_sdk.core.flow", "trqam_sdk.training.finetuner", "trqam_sdk.adapters.base",
            "trqam_sdk.adapters.lerobot.prefix", "trqam_sdk.recipes"} <= set(mods)
    assert mods["trqam_sdk.adapters.base"] == ROOT / "adapters" / "base.py"
    base = sdk_imports("trqam_sdk.adapters.base")
    assert any(i.target == "trqam_sdk.core.flow" and not i.top_level for i in base)  # in FlowPolicy.sample
    assert any(i.target == "trqam_sdk.adapters.lerobot.base" and i.top_level
               for i in sdk_imports("trqam_sdk.adapters.lerobot"))
    assert third_party("trqam_sdk.training.finetuner", "accelerate")


def test_core_imports_nothing_else_of_the_sdk_and_no_accelerate() -> None:
    bad = []
    for mod, file in modules().items():
        if not mod.startswith("trqam_sdk.core"):
            continue
        bad += [f"{rel(file)}:{i.line} imports {i.target}" for i in sdk_imports(mod)
                if not i.target.startswith("trqam_sdk.core")]
        bad += [f"{rel(file)}:{line} imports accelerate" for line in third_party(mod, "accelerate")]
    assert not bad, "core/ must stay pure math:\n" + "\n".join(bad)


def test_only_training_imports_accelerate() -> None:
    # the FSDP-on-CPU test harness pokes accelerate's state (tests/test_distributed.py launches it), nothing else may
    allowed = ("trqam_sdk.training", "trqam_sdk.testing.distributed_check")
    bad = [f"{rel(file)}:{line}" for mod, file in modules().items() if not mod.startswith(allowed)
           for line in third_party(mod, "accelerate")]
    assert not bad, "accelerate imported outside trqam_sdk/training/:\n" + "\n".join(bad)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_find_cycles_finds_them() -> None:
    """The cycle finder itself: a 3-cycle and a 2-cycle are found, a chain and a self-free DAG are not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "f"}, "f": set(), "g": {"a", "f"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles() -> None:
    graph = {mod: {i.target for i in sdk_imports(mod) if i.top_level} for mod in modules()}
    cycles = find_cycles(graph)
    lines = []
    for comp in cycles:
        members = set(comp)
        lines.append(" ↔ ".join(comp))
        lines += [f"    {rel(modules()[m])}:{i.line} imports {i.target}" for m in comp for i in sdk_imports(m)
                  if i.top_level and i.target in members]
    assert not cycles, "module-level import cycles (move one import into the function that needs it):\n" + \
        "\n".join(lines)


LAYERS = {"core": 0, "networks": 1, "adapters": 2, "data": 3, "methods": 4, "training": 5, "rollout": 5,
          "benchmarks": 6, "integrations": 6, "rewards": 6, "recipes": 6, "profiling": 7, "cli": 8, "testing": 9}
"""rank of each subpackage of trqam_sdk; top-level modules (config, io, ...) are shared and unranked"""


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_dependencies_point_one_way() -> None:
    assert set(LAYERS) >= {name.split(".")[1] for name in package_dirs() if name.count(".") >= 1}, \
        "a new subpackage needs a rank in LAYERS"
    bad = [f"{rel(file)}:{i.line} imports {i.target}" for mod, file in modules().items() for i in sdk_imports(mod)
           if i.top_level and layer(mod) is not None and layer(i.target) is not None and layer(i.target) > layer(mod)]
    assert not bad, "module-level imports of a higher layer (invert the dependency or import lazily):\n" + \
        "\n".join(bad)


def test_no_package_file_over_400_lines() -> None:
    sizes = {rel(file): len(file.read_text().splitlines()) for file in modules().values()}
    big = sorted(f"{name}: {n} lines" for name, n in sizes.items() if n > MAX_LINES)
    assert not big, f"files over {MAX_LINES} lines (split them by concern):\n" + "\n".join(big)
