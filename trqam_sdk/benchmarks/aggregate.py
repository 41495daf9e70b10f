"""Result files of any benchmark → the paper's Table 1 layout, a pooled-episode table and the KL-vs-ε table.

Per (domain, method): each seed's success is averaged over the tasks it ran, then mean ± std over seeds
(population std, ddof = 0). Columns follow the benchmark's order; ``all`` averages the domains a method has.
The pooled table adds up the episodes of every seed and task of a cell and gives its 95 % Wilson interval:
it says how many episodes a number rests on (it ignores the spread between seeds, which the first table shows).
The KL table is the Figure 5 contrast: the realised KL EMA D̄ against ε over the second half of training. The
path-KL table has the Table 1 layout for the methods that log the batch path KL D̂ to their reference
(``actor/path_kl``: TRQAM and the QAM family): per seed its mean over the second half of training, averaged over
tasks, then mean ± std over seeds. Rows follow the paper's Table 1 (:func:`method_order`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.benchmarks.results import load_results, metric, phase_eval
from trqam_sdk.io import atomic_write_text, read_jsonl
from trqam_sdk.methods.registry import FINETUNING

METHOD_NAMES = {"bc": "BC (prior)", "fql": "FQL", "cgql_linex": "CGQL-Linex", "dsrl": "DSRL", "ifql": "IFQL",
                "qam": "QAM", "qam_ext_kl": "QAM + External KL", "qam_edit": "QAM-E", "trqam": "TRQAM"}
"""display names of the built-in methods, as in the paper's Table 1 (registered ones show by name)"""

Cell = tuple[float, float, int]

PIPELINE_BENCHMARKS: dict[str, dict[str, str]] = {"metaworld": {}}
"""benchmarks with a pipeline of their own (``trqam metaworld``) rather than a registered Benchmark: their
result-table columns"""


def method_order(methods: set[str] | list[str]) -> list[str]:
    """The prior, the built-in fine-tuning methods in the paper's Table 1 order (``FINETUNING``: FQL, CGQL-Linex,
    DSRL, IFQL, QAM, QAM + External KL, QAM-E, TRQAM), then the others (plugins) sorted."""
    known = ["bc", *FINETUNING]
    return [m for m in known if m in methods] + sorted(set(methods) - set(known))


def table(results: list[dict[str, Any]], phase: str = "offline") -> dict[str, dict[str, Cell]]:
    """{method: {domain: (mean, std, n_seeds)}} of success in percent, plus ``all`` per method."""
    per_seed: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in results:
        e = phase_eval(r, phase)
        if e is not None:
            per_seed[(r["method"], r["domain"], r["seed"])].append(100.0 * e["success_rate"])
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (method, domain, _), xs in per_seed.items():
        cells[method][domain].append(float(np.mean(xs)))
    out: dict[str, dict[str, Cell]] = {}
    for method, doms in cells.items():
        out[method] = {d: (float(np.mean(v)), float(np.std(v)), len(v)) for d, v in doms.items()}
        out[method]["all"] = (float(np.mean([m for m, _, _ in out[method].values()])), float("nan"), 0)
    return out


def pooled(results: list[dict[str, Any]], phase: str = "offline") -> dict[str, dict[str, tuple[int, int]]]:
    """{method: {domain: (successes, episodes)}} summed over seeds and tasks (results that stored counts)."""
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in results:
        e = phase_eval(r, phase)
        if e is not None and "successes" in e and "episodes" in e:
            cell = out[r["method"]][r["domain"]]
            cell[0] += int(e["successes"])
            cell[1] += int(e["episodes"])
    return {m: {d: (k, n) for d, (k, n) in doms.items() if n} for m, doms in out.items()}


def _domains(rows: list[dict[str, Any]], columns: dict[str, str]) -> list[str]:
    present = {d for row in rows for d in row if d != "all"}
    return [d for d in columns if d in present] + sorted(present - set(columns))


def format_table(tab: dict[str, dict[str, Cell]], columns: dict[str, str] | None = None, digits: int = 1) -> str:
    """One row per method in Table 1 order, one column per domain (the benchmark's order), then ``all`` (— when
    the table has none, as the path-KL table)."""
    columns = columns or {}
    domains = _domains(list(tab.values()), columns)
    lines = ["| method | " + " | ".join(columns.get(d, d) for d in domains) + " | all |",
             "|" + "---|" * (len(domains) + 2)]
    for method in method_order(list(tab)):
        row = tab[method]
        cells = [f"{row[d][0]:.{digits}f} ± {row[d][1]:.{digits}f} (n={row[d][2]})" if d in row else "—"
                 for d in domains]
        total = f"{row['all'][0]:.{digits}f}" if "all" in row else "—"
        lines.append(f"| {METHOD_NAMES.get(method, method)} | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(lines)


def format_pooled(pool: dict[str, dict[str, tuple[int, int]]], columns: dict[str, str] | None = None) -> str:
    """Success % [95 % Wilson interval] (episodes) per cell, episodes pooled over seeds and tasks."""
    from trqam_sdk.rollout.stats import format_success

    columns = columns or {}
    domains = _domains(list(pool.values()), columns)
    lines = ["| method | " + " | ".join(columns.get(d, d) for d in domains) + " |", "|" + "---|" * (len(domains) + 1)]
    for method in method_order(list(pool)):
        row = pool[method]
        lines.append(f"| {METHOD_NAMES.get(method, method)} | " + " | ".join(
            format_success(*row[d]) if d in row else "—" for d in domains) + " |")
    return "\n".join(lines)


def _logged(r: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The metrics.jsonl rows of a fine-tuning run that hold ``name`` ([] for the prior or a run without it)."""
    path = Path(r["dir"]) / "metrics.jsonl"
    if r["method"] == "bc" or not path.is_file():
        return []
    return [x for x in read_jsonl(path) if metric(x, name) is not None]


def _second_half(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in rows if x["step"] > rows[-1]["step"] / 2]


def path_kl(results: list[dict[str, Any]]) -> dict[str, dict[str, Cell]]:
    """{method: {domain: (mean, std, n_seeds)}} of the batch path KL D̂ to the reference (``actor/path_kl``)
    averaged over the second half of training, each seed's mean over its tasks first (as :func:`table`).
    Methods that do not log a path KL are left out."""
    per_seed: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in results:
        rows = _logged(r, "path_kl")
        if rows:
            per_seed[(r["method"], r["domain"], r["seed"])].append(
                float(np.mean([metric(x, "path_kl") for x in _second_half(rows)])))
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (method, domain, _), xs in per_seed.items():
        cells[method][domain].append(float(np.mean(xs)))
    return {m: {d: (float(np.mean(v)), float(np.std(v)), len(v)) for d, v in doms.items()}
            for m, doms in cells.items()}


def kl_table(results: list[dict[str, Any]]) -> str:
    """Realised KL EMA vs ε per (domain, method): second-half mean, second-half max, final (mean ± std).
    Methods without a KL EMA in their log (no trust region) are left out; rows by domain, then Table 1 order."""
    groups: dict[tuple[str, str], list[tuple[float, float, float, float]]] = defaultdict(list)
    for r in results:
        rows = _logged(r, "kl_ema")
        if not rows:
            continue
        half = _second_half(rows)
        kl = np.array([metric(x, "kl_ema") for x in half])
        groups[(r["domain"], r["method"])].append((kl.mean(), kl.max(), metric(rows[-1], "kl_ema"),
                                                   metric(rows[-1], "kl_budget", float("nan"))))
    lines = ["| domain | method | ε | D̄ mean, 2nd half | D̄ max, 2nd half | final D̄ | final D̄ / ε |",
             "|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(method_order({m for _, m in groups}))}
    for (domain, method), v in sorted(groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        a = np.array(v)
        eps = a[0, 3]
        lines.append(f"| {domain} | {METHOD_NAMES.get(method, method)} | {eps:g} | {a[:, 0].mean():.3f} ± "
                     f"{a[:, 0].std():.3f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.3f} ± {a[:, 2].std():.3f} | "
                     f"{a[:, 2].mean() / eps:.2f} |")
    return "\n".join(lines)


def aggregate(runs: str | Path, benchmark: str = "ogbench", phase: str = "offline", plots: str | Path | None = None,
              make_plots: bool = True) -> str:
    """Tables (printed text; also ``table_<phase>.md`` / ``.json`` under ``runs``) and per-domain curves."""
    from trqam_sdk.benchmarks.registry import benchmark_names, get_benchmark

    if phase not in ("offline", "online"):
        raise ValueError(f"phase must be offline or online, got {phase!r}")
    # pipelines of their own (``trqam metaworld``) write the same result.json without a registered Benchmark
    if benchmark not in benchmark_names() and benchmark not in PIPELINE_BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {benchmark_names() + sorted(PIPELINE_BENCHMARKS)}")
    columns = get_benchmark(benchmark).columns if benchmark in benchmark_names() else PIPELINE_BENCHMARKS[benchmark]
    results = load_results(runs, benchmark)
    tab, pool, kl = table(results, phase), pooled(results, phase), path_kl(results)
    text = (f"## {benchmark} success % ({phase}): mean ± std over seeds\n\n{format_table(tab, columns)}\n\n"
            f"## success % [95% Wilson interval] (episodes pooled over seeds and tasks)\n\n"
            f"{format_pooled(pool, columns)}\n\n## KL vs ε\n\n{kl_table(results)}\n")
    if kl:
        text += (f"\n## path KL D̂ to the reference (actor/path_kl, mean over the 2nd half of training): mean ± std "
                 f"over seeds\n\n{format_table(kl, columns, digits=3)}\n")
    root = Path(runs)
    atomic_write_text(root / f"table_{phase}.md", text)
    summary = {"mean_std": tab, "pooled": pool, "path_kl": kl}
    atomic_write_text(root / f"table_{phase}.json", json.dumps(summary, indent=2))
    if make_plots:
        from trqam_sdk.benchmarks.plots import plot_domain

        folder = Path(plots) if plots else root / "plots"
        for domain in sorted({r["domain"] for r in results}):
            text += f"plot {plot_domain(results, domain, folder / f'{domain}_curves.png')}\n"
    return text
