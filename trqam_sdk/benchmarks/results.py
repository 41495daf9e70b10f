"""The one result format (``result.json``, one per run) and readers of the logs next to it.

Every benchmark's runs write the same ``result.json`` (:func:`trqam_sdk.benchmarks.runner.run_one`):
``benchmark, domain, task, method, seed, profile``; the final evaluation as ``success, successes, episodes,
ci95``; ``phases: {prior|offline|online: evaluation}`` (each with its episode count and 95 % Wilson interval);
``steps``, ``seconds``, ``data``; for methods with a trust region ``kl_ema, lam, kl_budget``.
``metrics.jsonl`` rows use namespaced keys (``dual/kl_ema``); files written before the rename use flat ones
(``kl_ema``): :func:`metric` reads both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trqam_sdk.io import read_json

METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "kl_ema": ("dual/kl_ema", "kl_ema"),
    "lam": ("dual/lam", "lam"),
    "kl_budget": ("dual/kl_budget", "kl_budget"),
    "path_kl": ("actor/path_kl", "path_kl"),
    "adj_loss": ("actor/adj_loss", "adj_loss"),
}
"""short name → the keys it has had in metrics.jsonl (namespaced first, then the older flat name)"""


def metric(row: dict[str, Any], name: str, default: Any = None) -> Any:
    """``row``'s value of ``name`` under its namespaced or flat key (``default`` when it has neither)."""
    for key in METRIC_ALIASES.get(name, (name,)):
        if key in row:
            return row[key]
    return default


def load_results(root: str | Path, benchmark: str | None = None) -> list[dict[str, Any]]:
    """Every ``result.json`` under ``root`` (with its folder as ``dir``), optionally only ``benchmark``'s
    (results written before the benchmark field existed count as OGBench's)."""
    files = sorted(Path(root).rglob("result.json"))
    if not files:
        raise FileNotFoundError(f"no result.json under {root}: run `trqam run` or `trqam sweep` first")
    out = []
    for f in files:
        r = read_json(f, "run result")
        if not isinstance(r, dict):
            raise ValueError(f"{f} is not a run result: expected a JSON object, got a {type(r).__name__}")
        missing = [k for k in ("domain", "method", "seed", "success") if k not in r]
        if missing:
            raise KeyError(f"{f} is not a run result: it lacks {missing}")
        r.setdefault("benchmark", "ogbench")
        r["dir"] = str(f.parent)
        out.append(r)
    if benchmark is not None:
        found = sorted({r["benchmark"] for r in out})
        out = [r for r in out if r["benchmark"] == benchmark]
        if not out:
            raise FileNotFoundError(f"no {benchmark} results under {root} (it has results of {found}); "
                                    "pass --benchmark to choose")
    return out


def phase_eval(r: dict[str, Any], phase: str) -> dict[str, Any] | None:
    """The evaluation a result has for ``phase`` (offline / online); the prior's for the ``bc`` method; None
    when the run has no such phase. Results without ``phases`` (older files) give the bare success rate."""
    phases = r.get("phases")
    if phases is not None:
        if r["method"] == "bc":
            return phases.get("prior")
        return phases.get(phase)
    if r["method"] == "bc":
        return {"success_rate": r["success"]}
    s = r.get(f"{phase}_success")
    return None if s is None else {"success_rate": s}
