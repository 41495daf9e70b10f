"""Many (recipe, task, method, seed) runs of one benchmark, resumable and shardable.

Finished runs (their ``result.json``) are skipped, so re-running the same sweep resumes. A shard ``i/n`` takes
every n-th (recipe, task, seed) group; all methods of one group stay in one process because they share that
seed's BC prior. ``--methods all`` is the prior plus every registered fine-tuning method (built-in and plugins) in
the paper's Table 1 order; every requested (recipe, method) is checked before the first run starts.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trqam_sdk.benchmarks.aggregate import method_order
from trqam_sdk.benchmarks.base import Benchmark
from trqam_sdk.benchmarks.recipes import PRIOR
from trqam_sdk.benchmarks.runner import run_dir, run_one
from trqam_sdk.methods.registry import method_names

ALL = "all"
"""the ``--methods`` name for every registered method"""


def all_methods(prior: bool = True) -> list[str]:
    """Every registered method in Table 1 order: the prior ``bc`` (unless ``prior`` is False), the built-in
    fine-tuning methods (FQL, CGQL-Linex, DSRL, IFQL, QAM, QAM + External KL, QAM-E, TRQAM), then plugins'."""
    return [m for m in method_order(method_names()) if prior or m != PRIOR]


def expand_methods(names: list[str] | None, prior: bool = True) -> list[str] | None:
    """``names`` with ``all`` expanded (:func:`all_methods`), duplicates dropped, order kept; an unknown name is
    a ValueError listing the known ones. None or [] (no ``--methods``) is None: each recipe's own list."""
    if not names:
        return None
    known = method_names()
    bad = [m for m in names if m != ALL and m not in known]
    if bad:
        raise ValueError(f"unknown methods {bad}; known methods: {known} (or {ALL!r}: {all_methods(prior)})")
    out: list[str] = []
    for m in names:
        out += [x for x in (all_methods(prior) if m == ALL else [m]) if x not in out]
    return out


@dataclass(frozen=True)
class Group:
    """The runs that share one BC prior: every method of one (recipe, task, seed)."""

    recipe: str
    task: str
    seed: int
    methods: tuple[str, ...]


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {text}: need 0 <= i < n")
    return i, n


def plan(bench: Benchmark, recipes: list[str], profile: str, overrides: dict[str, Any] | None = None,
         tasks: list[str] | None = None, methods: list[str] | None = None, seeds: list[int] | None = None
         ) -> list[Group]:
    """The groups of a sweep in a fixed order (the same for every shard); ``['all']``: every recipe (and every
    method). Each recipe's fine-tuning config is built for each of its methods here, so an unknown method or a
    bad ``per_method`` option fails before any data is loaded or any prior trained."""
    names = bench.recipe_names() if recipes == [ALL] else recipes
    methods = expand_methods(methods)
    bad = [s for s in seeds or () if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"seeds must be integers >= 0, got {bad}")
    groups = []
    for name in names:
        r = bench.load_recipe(name, profile, overrides)
        chosen = tuple(methods or r.methods)
        for m in chosen:
            if m != PRIOR:
                r.finetune_config(m, 0, "unused")
        for task in [bench.check_task(r, str(t)) for t in tasks] if tasks else bench.tasks(r):
            for seed in r.seeds if seeds is None else seeds:
                groups.append(Group(name, task, seed, chosen))
    return groups


def sweep(bench: Benchmark, groups: list[Group], out: str | Path, profile: str,
          overrides: dict[str, Any] | None = None, keep_going: bool = False,
          log: Callable[[str], None] = lambda s: print(s, flush=True)) -> int:
    """Run ``groups`` in order; returns the number of failed runs (``keep_going``: logged to failures.log)."""
    failures = 0
    for g in groups:
        recipe = bench.load_recipe(g.recipe, profile, overrides)
        name = f"{bench.domain(recipe)} task {g.task}"
        for method in g.methods:
            t0 = time.perf_counter()
            if (run_dir(out, bench, recipe, g.task, method, g.seed) / "result.json").is_file():
                log(f"skip (done) {name} {method} seed {g.seed}")
                continue
            try:
                res = run_one(bench, recipe, g.task, method, g.seed, out, profile)
            except Exception:
                if not keep_going:
                    raise
                failures += 1
                path = Path(out) / "failures.log"
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as f:
                    f.write(f"{name} {method} seed {g.seed}\n{traceback.format_exc()}\n")
                log(f"FAILED {name} {method} seed {g.seed} (see {path})")
                continue
            extra = {k: res[k] for k in ("kl_ema", "lam", "kl_budget") if k in res}
            log(f"done {name} {method} seed {g.seed}: {describe(res)} {json.dumps(extra)} "
                f"({time.perf_counter() - t0:.0f} s)")
    return failures


def describe(res: dict[str, Any]) -> str:
    """'success 40.0% [23.7, 58.4] (n=30)' for a result (the rate alone for results without counts)."""
    from trqam_sdk.rollout.stats import format_success

    if "episodes" in res and "successes" in res:
        return f"success {format_success(int(res['successes']), int(res['episodes']))}"
    return f"success {100 * res['success']:.1f}%"
