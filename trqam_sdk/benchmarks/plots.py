"""Curves of runs: per-domain success / KL EMA / λ bands (aggregate) and one run's KL and λ (the demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.benchmarks.aggregate import METHOD_NAMES, method_order
from trqam_sdk.benchmarks.results import metric
from trqam_sdk.io import read_jsonl


def _band(ax: Any, series: list[tuple[np.ndarray, np.ndarray]], label: str, color: str, log: bool = False) -> None:
    """Mean ± std over runs of curves logged on (possibly) different step grids (interpolated)."""
    if not series:
        return
    grid = np.unique(np.concatenate([s for s, _ in series]))
    ys = np.stack([np.interp(grid, s, y) for s, y in series])
    m, sd = ys.mean(0), ys.std(0)
    ax.plot(grid, m, label=label, color=color)
    ax.fill_between(grid, np.maximum(m - sd, 1e-6) if log else m - sd, m + sd, color=color, alpha=0.2)


def _series(rows: list[dict[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray] | None:
    pts = [(r["step"], metric(r, name)) for r in rows if metric(r, name) is not None]
    return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts])) if pts else None


def plot_domain(results: list[dict[str, Any]], domain: str, path: Path) -> Path:
    """Success (evaluations over steps, the prior's at step 0), KL EMA against ε, and λ, mean ± std over runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in results if r["domain"] == domain]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    eps_drawn = False
    for i, method in enumerate(m for m in method_order({r["method"] for r in rs}) if m != "bc"):
        color, succ, kl, lam = f"C{i}", [], [], []
        for r in (r for r in rs if r["method"] == method):
            ev = read_jsonl(Path(r["dir"]) / "evals.jsonl")
            if ev:
                succ.append((np.array([e["step"] for e in ev]), 100 * np.array([e["success_rate"] for e in ev])))
            rows = read_jsonl(Path(r["dir"]) / "metrics.jsonl")
            for name, into in (("kl_ema", kl), ("lam", lam)):
                s = _series(rows, name)
                if s is not None:
                    into.append(s)
            eps = _series(rows, "kl_budget")
            if eps is not None and not eps_drawn:
                axes[1].plot(*eps, "k--", label="ε")
                eps_drawn = True
        label = METHOD_NAMES.get(method, method)
        _band(axes[0], succ, label, color)
        _band(axes[1], kl, label, color)
        _band(axes[2], lam, label, color, log=True)
    axes[0].set_ylabel("success %")
    axes[1].set_ylabel("KL EMA D̄")
    axes[2].set_ylabel("λ (λ_ext for External KL)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(f"{domain}: mean ± std over {len({(r['task'], r['seed']) for r in rs})} (task, seed) runs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_metrics(metrics_path: Path, out_path: Path, title: str = "") -> Path:
    """path_kl and kl_ema against ε, and λ, over steps, from one run's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics_path, missing_ok=False)
    series = {k: _series(rows, k) for k in ("path_kl", "kl_ema", "kl_budget", "lam")}
    missing = [k for k, v in series.items() if v is None]
    if missing:
        raise KeyError(f"{metrics_path}: no {missing} logged (the run's method has no trust region)")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax1.plot(*series["path_kl"], alpha=0.5, label="path KL D̂ (batch)")
    ax1.plot(*series["kl_ema"], label="KL EMA D̄")
    ax1.plot(*series["kl_budget"], "k--", label="budget ε")
    ax1.set_ylabel("path-space KL")
    ax1.legend()
    ax1.set_title(title)
    ax2.plot(*series["lam"], color="C3")
    ax2.set_ylabel("λ")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
