"""`trqam aggregate`: result files → the paper's Table 1 layout and success / KL / λ curves.

Per (domain, method): each seed's success is averaged over the tasks it ran, then mean ± std over seeds
(population std, ddof = 0). Columns follow the paper's order; ``all`` averages the domains a method has.
The KL table is the Figure 5 contrast: the realised KL EMA D̄ against ε over the second half of training.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.io import read_jsonl

COLUMNS = {"antmaze-large": "al", "antmaze-giant": "ag", "humanoidmaze-medium": "hm", "humanoidmaze-large": "hl",
           "scene": "scene", "puzzle-3x3": "p33", "puzzle-4x4": "p44", "cube-single": "c1", "cube-double": "c2",
           "cube-triple": "c3", "cube-quadruple": "c4"}
METHOD_NAMES = {"bc": "BC (prior)", "qam": "QAM", "qam_ext_kl": "QAM + External KL", "trqam": "TRQAM"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--runs", default="runs/ogbench", help="results root written by `trqam run` / `trqam sweep`")
    a("--phase", choices=["offline", "online"], default="offline", help="which success to tabulate")
    a("--plots", default=None, help="folder for <domain>_curves.png (default: <runs>/plots)")
    a("--no-plots", action="store_true")
    parser.set_defaults(func=run)


def load_results(root: str | Path) -> list[dict[str, Any]]:
    files = sorted(Path(root).rglob("result.json"))
    if not files:
        raise FileNotFoundError(f"no result.json under {root}: run `trqam run` or `trqam sweep` first")
    out = []
    for f in files:
        r = json.loads(f.read_text())
        r["dir"] = str(f.parent)
        out.append(r)
    return out


def _success(r: dict[str, Any], phase: str) -> float | None:
    if r["method"] == "bc":
        return r["success"]
    return r.get("offline_success") if phase == "offline" else r.get("online_success")


def table(results: list[dict[str, Any]], phase: str = "offline") -> dict[str, dict[str, tuple[float, float, int]]]:
    """{method: {domain: (mean, std, n_seeds)}} of success in percent, plus ``all`` per method."""
    per_seed: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in results:
        s = _success(r, phase)
        if s is not None:
            per_seed[(r["method"], r["domain"], r["seed"])].append(100.0 * s)
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (method, domain, _), xs in per_seed.items():
        cells[method][domain].append(float(np.mean(xs)))
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for method, doms in cells.items():
        out[method] = {d: (float(np.mean(v)), float(np.std(v)), len(v)) for d, v in doms.items()}
        out[method]["all"] = (float(np.mean([m for m, _, _ in out[method].values()])), float("nan"), 0)
    return out


def format_table(tab: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    domains = [d for d in COLUMNS if any(d in row for row in tab.values())]
    domains += sorted({d for row in tab.values() for d in row if d not in COLUMNS and d != "all"})
    head = "| method | " + " | ".join(COLUMNS.get(d, d) for d in domains) + " | all |"
    lines = [head, "|" + "---|" * (len(domains) + 2)]
    for method in [m for m in METHOD_NAMES if m in tab] + sorted(set(tab) - set(METHOD_NAMES)):
        row = tab[method]
        cells = [f"{row[d][0]:.1f} ± {row[d][1]:.1f} (n={row[d][2]})" if d in row else "—" for d in domains]
        lines.append(f"| {METHOD_NAMES.get(method, method)} | " + " | ".join(cells) + f" | {row['all'][0]:.1f} |")
    return "\n".join(lines)


def kl_table(results: list[dict[str, Any]]) -> str:
    """Realised KL EMA vs ε per (domain, method): second-half mean, second-half max, final (mean ± std)."""
    groups: dict[tuple[str, str], list[tuple[float, float, float, float]]] = defaultdict(list)
    for r in results:
        rows = read_jsonl(Path(r["dir"]) / "metrics.jsonl")
        if r["method"] == "bc" or not rows:
            continue
        half = [x for x in rows if x["step"] > rows[-1]["step"] / 2]
        kl = np.array([x["kl_ema"] for x in half])
        groups[(r["domain"], r["method"])].append((kl.mean(), kl.max(), rows[-1]["kl_ema"], rows[-1]["kl_budget"]))
    lines = ["| domain | method | ε | D̄ mean, 2nd half | D̄ max, 2nd half | final D̄ | final D̄ / ε |",
             "|---|---|---|---|---|---|---|"]
    for (domain, method), v in sorted(groups.items()):
        a = np.array(v)
        eps = a[0, 3]
        lines.append(f"| {domain} | {METHOD_NAMES.get(method, method)} | {eps:g} | {a[:, 0].mean():.3f} ± "
                     f"{a[:, 0].std():.3f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.3f} ± {a[:, 2].std():.3f} | "
                     f"{a[:, 2].mean() / eps:.2f} |")
    return "\n".join(lines)


def _band(ax: Any, series: list[tuple[np.ndarray, np.ndarray]], label: str, color: str, log: bool = False) -> None:
    """Mean ± std over runs of curves logged on (possibly) different step grids (interpolated)."""
    if not series:
        return
    grid = np.unique(np.concatenate([s for s, _ in series]))
    ys = np.stack([np.interp(grid, s, y) for s, y in series])
    m, sd = ys.mean(0), ys.std(0)
    ax.plot(grid, m, label=label, color=color)
    ax.fill_between(grid, np.maximum(m - sd, 1e-6) if log else m - sd, m + sd, color=color, alpha=0.2)


def plot_domain(results: list[dict[str, Any]], domain: str, path: Path) -> Path:
    """Success (evaluations over steps), KL EMA against ε, and λ, mean ± std over seeds and tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in results if r["domain"] == domain]
    prior = {(r["task"], r["seed"]): r["success"] for r in rs if r["method"] == "bc"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    eps_drawn = False
    for i, method in enumerate(m for m in METHOD_NAMES if m != "bc"):
        runs = [r for r in rs if r["method"] == method]
        if not runs:
            continue
        color, succ, kl, lam = f"C{i}", [], [], []
        for r in runs:
            ev = read_jsonl(Path(r["dir"]) / "evals.jsonl")
            pts = ([(0, prior[(r["task"], r["seed"])])] if (r["task"], r["seed"]) in prior else []) + [
                (e["step"], e["success_rate"]) for e in ev]
            if pts:
                succ.append((np.array([p[0] for p in pts]), 100 * np.array([p[1] for p in pts])))
            rows = read_jsonl(Path(r["dir"]) / "metrics.jsonl")
            if rows:
                steps = np.array([x["step"] for x in rows])
                kl.append((steps, np.array([x["kl_ema"] for x in rows])))
                lam.append((steps, np.array([x["lam"] for x in rows])))
                if not eps_drawn:
                    axes[1].plot(steps, [x["kl_budget"] for x in rows], "k--", label="ε")
                    eps_drawn = True
        _band(axes[0], succ, METHOD_NAMES[method], color)
        _band(axes[1], kl, METHOD_NAMES[method], color)
        _band(axes[2], lam, METHOD_NAMES[method], color, log=True)
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


def run(args: argparse.Namespace) -> int:
    results = load_results(args.runs)
    tab = table(results, args.phase)
    text = f"## success % ({args.phase})\n\n{format_table(tab)}\n\n## KL vs ε\n\n{kl_table(results)}\n"
    print(text)
    root = Path(args.runs)
    (root / f"table_{args.phase}.md").write_text(text)
    (root / f"table_{args.phase}.json").write_text(json.dumps(tab, indent=2))
    if not args.no_plots:
        plots = Path(args.plots) if args.plots else root / "plots"
        for domain in sorted({r["domain"] for r in results}):
            print(f"plot {plot_domain(results, domain, plots / f'{domain}_curves.png')}")
    return 0
