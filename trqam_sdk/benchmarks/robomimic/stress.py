"""The stability stress test (TRQAM paper Fig. 2): QAM (fixed Λ = 1/τ) against TRQAM from the same prior.

A sweep of one recipe with methods [bc, qam, trqam] and periodic evaluations through the shared runner; this
module reads each run's ``metrics.jsonl`` (adjoint-matching loss ``actor/adj_loss``) and ``evals.jsonl``
(success, the prior's at step 0) and reports whether QAM's loss grows by orders of magnitude while TRQAM's stays
bounded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trqam_sdk.benchmarks.results import metric
from trqam_sdk.io import read_jsonl

STRESS_METHODS = ["qam", "trqam"]


def stress_overrides() -> dict[str, Any]:
    """What `trqam robomimic stress` changes in a recipe: the prior and both methods."""
    return {"methods": ["bc", *STRESS_METHODS]}


def load_runs(out: str | Path) -> dict[tuple[str, int], dict[str, list[dict[str, Any]]]]:
    """{(method, seed): {"metrics": rows, "evals": rows}} for every finished or running method/seed folder of
    the runner's layout (``<out>/<task>/<method>/seed<s>``)."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"no stress-test output folder {out}")
    runs = {}
    for method in STRESS_METHODS:
        for d in sorted(out.glob(f"*/{method}/seed*")):
            runs[(method, int(d.name[4:]))] = {"metrics": read_jsonl(d / "metrics.jsonl"),
                                               "evals": read_jsonl(d / "evals.jsonl")}
    return runs


def _success(e: dict[str, Any]) -> dict[str, Any]:
    """One evaluation as step, rate, episodes and 95 % Wilson interval (rate alone for older logs)."""
    out = {"step": e["step"], "success": e["success_rate"]}
    if "ci95_low" in e:
        out.update(episodes=int(e["episodes"]), ci95=[e["ci95_low"], e["ci95_high"]])
    return out


def summarize(out: str | Path) -> dict[str, Any]:
    """Adjoint loss at start / end / max and its growth (max over the first logged value), success curve."""
    res: dict[str, Any] = {}
    for (method, seed), r in load_runs(out).items():
        adj = [metric(m, "adj_loss") for m in r["metrics"] if metric(m, "adj_loss") is not None]
        finite = [a for a in adj if math.isfinite(a)]
        if not adj:
            continue
        res[f"{method}/seed{seed}"] = {
            "steps": r["metrics"][-1]["step"], "adj_start": adj[0], "adj_end": adj[-1],
            "adj_max": max(finite) if finite else math.inf, "nonfinite": len(adj) - len(finite),
            "growth_orders": math.log10(max(finite) / max(adj[0], 1e-12)) if finite else math.inf,
            "success": [_success(e) for e in r["evals"]],
            "lam_end": metric(r["metrics"][-1], "lam"), "kl_ema_end": metric(r["metrics"][-1], "kl_ema"),
        }
    return res


def plot_stress(out: str | Path, png: str | Path, title: str = "scripted Lift: QAM vs TRQAM") -> Path:
    """Adjoint-matching loss (log scale) and success over training with 95 % Wilson bars, per method and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"qam": "C3", "trqam": "C0"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for (method, seed), r in load_runs(out).items():
        m = [x for x in r["metrics"] if metric(x, "adj_loss") is not None]
        style = dict(color=colors.get(method, "k"), alpha=0.85, ls=["-", "--", ":", "-."][seed % 4])
        ax1.plot([x["step"] for x in m], [metric(x, "adj_loss") for x in m], label=f"{method} s{seed}", **style)
        if r["evals"]:
            ev = r["evals"]
            rate = [e["success_rate"] for e in ev]
            err = [[y - e.get("ci95_low", y) for y, e in zip(rate, ev, strict=True)],
                   [e.get("ci95_high", y) - y for y, e in zip(rate, ev, strict=True)]]
            ax2.errorbar([e["step"] for e in ev], rate, yerr=err, marker="o", capsize=2, label=f"{method} s{seed}",
                         **style)
    ax1.set_yscale("log")
    ax1.set_xlabel("fine-tuning step")
    ax1.set_ylabel("adjoint-matching loss")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("fine-tuning step")
    ax2.set_ylabel("success rate (95% Wilson)")
    ax2.set_ylim(-0.05, 1.05)
    ax2.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png
