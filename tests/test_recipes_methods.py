"""Every method in the recipes, sweeps and tables: QAM Table 4's per-domain values reach each method's config,
``--methods all`` runs every registered method in Table 1 order, and the aggregate lays every method out as a row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from trqam_sdk import cli
from trqam_sdk.benchmarks.aggregate import METHOD_NAMES, format_table, kl_table, path_kl, table
from trqam_sdk.benchmarks.registry import get_benchmark
from trqam_sdk.benchmarks.results import load_results
from trqam_sdk.benchmarks.sweep import all_methods, expand_methods
from trqam_sdk.config import FinetuneConfig, from_dict, to_dict
from trqam_sdk.methods.registry import FINETUNING

PLUGINS = Path(__file__).parent / "plugins"

TABLE1 = ["bc", "fql", "cgql_linex", "dsrl", "ifql", "qam", "qam_ext_kl", "qam_edit", "trqam"]
"""the rows of the paper's Table 1 (the BC prior first)"""

# QAM paper Table 4, transcribed from qam-paper.md by hand (not read from the recipes):
# domain: (FQL α, DSRL σ_z, IFQL κ, CGQL-Linex (τ, ϱ, ϑ), QAM-Edit (τ, σ_a), "QAM & BAM τ")
TABLE4 = {
    "scene": (300, 0.4, 0.9, (10, 0.1, 0.1), (1, 0), 1),
    "puzzle-3x3": (300, 1, 0.95, (10, 0.001, 0.1), (3, 0.1), 3),
    "puzzle-4x4": (1, 1, 0.9, (10, 0.001, 1), (3, 0.9), 30),
    "cube-double": (300, 1, 0.9, (10, 0.001, 0.01), (1, 0), 1),
    "cube-triple": (30, 1.4, 0.95, (10, 0.001, 0.1), (10, 0.1), 10),
    "cube-quadruple": (100, 1.4, 0.95, (10, 0.1, 0.01), (3, 0.5), 1),
    "antmaze-large": (3, 0.8, 0.9, (10, 0.001, 0.1), (1, 0.1), 10),
    "antmaze-giant": (3, 1.2, 0.8, (10, 0.001, 0.1), (3, 0.1), 3),
    "humanoidmaze-medium": (30, 0.6, 0.7, (10, 0.1, 0.1), (1, 0.1), 3),
    "humanoidmaze-large": (30, 0.8, 0.8, (10, 0.1, 0.1), (1, 0.1), 3),
}
SPEC6_TAU = {"cube-double": 1, "cube-triple": 3, "cube-quadruple": 1, "scene": 1, "puzzle-3x3": 3, "puzzle-4x4": 30,
             "antmaze-large": 10, "antmaze-giant": 3, "humanoidmaze-medium": 3, "humanoidmaze-large": 3,
             "lift": 1, "can": 0.3, "square": 0.1}
"""τ (QAM) of the TRQAM paper (SPEC §6): the recipes' top-level qam_tau"""


def _recipes() -> list[tuple[str, str, str]]:
    """(benchmark, recipe, the Table 4 row its per-method values come from)."""
    out = [("ogbench", n, "cube-double" if n == "cube-single" else n)
           for n in get_benchmark("ogbench").recipe_names()]
    return out + [("robomimic", n, "cube-double") for n in get_benchmark("robomimic").recipe_names()]


@pytest.mark.parametrize("profile", ["paper", "cpu-small"])
@pytest.mark.parametrize(("benchmark", "name", "row"), _recipes())
def test_per_method_values_reach_each_methods_config(benchmark: str, name: str, row: str, profile: str) -> None:
    """Each method's FinetuneConfig carries its own Table 4 value (and nothing of another method's); Table 3:
    clip 1 for the QAM family and TRQAM, no clip for FQL, CGQL-Linex, DSRL, IFQL."""
    recipe = get_benchmark(benchmark).load_recipe(name, profile)
    alpha, sigma_z, kappa, (tau, rho, vartheta), (edit_tau, sigma_a), _ = TABLE4[row]
    want = {"fql": {"alpha": alpha}, "dsrl": {"sigma_z": sigma_z}, "ifql": {"expectile": kappa},
            "cgql_linex": {"tau": tau, "noisy_weight": rho, "guidance": vartheta}, "qam_edit": {"sigma_a": sigma_a}}
    assert set(recipe.per_method) == set(want)
    for method in FINETUNING:
        cfg = recipe.finetune_config(method, 0, "x")
        assert cfg.method == method and cfg.method_options == want.get(method, {}), method
        no_clip = method in ("fql", "cgql_linex", "dsrl", "ifql")
        assert cfg.grad_clip == (None if no_clip else 1.0), method
        qam_tau = SPEC6_TAU["cube-double" if name == "cube-single" else name]
        assert cfg.qam_tau == (edit_tau if method == "qam_edit" else qam_tau), method
        assert cfg.trust_region.kl_budget == recipe.kl_budget
        assert cfg.steps == recipe.offline_steps + recipe.online_steps
    # the shared finetune block is untouched: per_method is merged into a copy
    assert recipe.finetune.method_options == {} and recipe.finetune.grad_clip == 1.0


def test_qam_tau_differs_from_qam_table4_only_where_docs_say() -> None:
    """The recipes' qam_tau is the TRQAM paper's τ; QAM's own Table 4 differs for cube-triple only (3 vs 10)."""
    bench = get_benchmark("ogbench")
    diffs = {d: (bench.load_recipe(d, "paper").qam_tau, TABLE4[d][5]) for d in TABLE4
             if bench.load_recipe(d, "paper").qam_tau != TABLE4[d][5]}
    assert diffs == {"cube-triple": (3.0, 10)}
    doc = (Path(__file__).parents[1] / "docs" / "ogbench.md").read_text()
    assert "cube-triple" in doc.split("## Per-method values")[1].split("\n## ")[0]


def test_default_method_lists() -> None:
    """The paper profile runs every Table 1 row; cpu-small keeps the four it always ran (runtime on 2 cores)."""
    bench = get_benchmark("ogbench")
    for name in bench.recipe_names():
        assert bench.load_recipe(name, "paper").methods == TABLE1, name
        assert bench.load_recipe(name, "cpu-small").methods == ["bc", "qam", "qam_ext_kl", "trqam"], name


def test_no_clip_is_clean_end_to_end(tmp_path: Path) -> None:
    """grad_clip null (no clip): YAML / --set parse it, config.json (plain JSON: null) and the checkpoint keep it (a
    resume accepts it), and the update equals one with a clip that never binds (no NaN), unlike a binding clip."""
    from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig

    from trqam_sdk.config import load_config
    from trqam_sdk.profiling.bench import random_transitions
    from trqam_sdk.training.finetuner import Finetuner

    data = random_transitions(6, 2, rows=128, episode=32)

    def run(clip: str, out: str) -> Finetuner:
        cfg = load_config(FinetuneConfig, None, [f"grad_clip={clip}", "trackers=[]", f"output_dir={out}", "steps=2",
                                                 "batch_size=8", "flow_steps=2", "policy.width=16", "policy.depth=2",
                                                 "critic.width=16", "critic.num_critics=2", "method=qam"])
        torch.manual_seed(0)
        ft = Finetuner(cfg, MLPFlowPolicy(MLPPolicyConfig(6, 2, 2, 16, 2)), data)
        ft.train(progress=False)
        return ft

    ft = run("null", str(tmp_path / "inf"))
    assert ft.cfg.grad_clip is None and ft.nonfinite_skips == 0
    text = (tmp_path / "inf" / "config.json").read_text()
    assert '"grad_clip": null' in text and "Infinity" not in text
    saved = json.loads(text)
    assert from_dict(FinetuneConfig, saved) == ft.cfg and to_dict(ft.cfg)["grad_clip"] is None
    assert run(".inf", str(tmp_path / "inf2")).nonfinite_skips == 0  # inf is accepted too: the same no-op clip
    loose, tight = run("1e30", str(tmp_path / "loose")), run("1e-4", str(tmp_path / "tight"))
    a, b, c = (torch.cat([p.detach().flatten() for p in f.agent.parameters()]) for f in (ft, loose, tight))
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.equal(a, c)
    again = Finetuner(ft.cfg, MLPFlowPolicy(MLPPolicyConfig(6, 2, 2, 16, 2)), data, on_existing="resume")
    assert again.resumed_from is not None and again.step == 2


def test_expand_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    import toy_method  # noqa: F401  (registers the plugin method bc_anchor)

    assert all_methods() == [*TABLE1, "bc_anchor"] and all_methods(prior=False) == [*TABLE1[1:], "bc_anchor"]
    assert expand_methods(["all"]) == [*TABLE1, "bc_anchor"]
    assert expand_methods(["trqam", "all"])[:2] == ["trqam", "bc"] and len(expand_methods(["trqam", "all"])) == 10
    assert expand_methods(None) is None and expand_methods([]) is None
    with pytest.raises(ValueError, match=r"unknown methods \['sac'\]; known methods: .*'all'"):
        expand_methods(["qam", "sac"])
    assert [METHOD_NAMES[m] for m in TABLE1] == ["BC (prior)", "FQL", "CGQL-Linex", "DSRL", "IFQL", "QAM",
                                                 "QAM + External KL", "QAM-E", "TRQAM"]


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.syspath_prepend(str(PLUGINS))
    return ["--plugin", "trqam_toy_benchmark"]


def test_sweep_all_methods_then_aggregate(toy: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--methods all` on the toy plugin benchmark, offline → online: every registered method trains from the shared
    prior, collects online data with its own acting policy (``make_actor``) and is evaluated; the aggregate has one
    row per method in Table 1 order and a path-KL row for the TRQAM family."""
    out = str(tmp_path / "runs")
    argv = [*toy, "sweep", "--benchmark", "toy-line", "--recipes", "line", "--profile", "online", "--tasks", "1",
            "--seeds", "0", "--methods", "all", "--out", out, "--set", "offline_steps=2", "online_steps=2",
            "eval.episodes=2"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert [m for m in re.findall(r"done line task 1 (\S+) seed 0", text)] == all_methods()
    for m in all_methods(prior=False):
        res = json.loads((tmp_path / "runs" / "line" / "task1" / m / "seed0" / "result.json").read_text())
        assert res["method"] == m and res["steps"] == 4 and res["episodes"] == 2 and res["online_rows"] == 2
    assert cli.main([*toy, "aggregate", "--benchmark", "toy-line", "--runs", out, "--no-plots"]) == 0
    text = capsys.readouterr().out
    first = text.split("## success % [95% Wilson")[0]
    rows = re.findall(r"^\| ([^|]+?) \| ", first, re.M)[1:]
    assert rows == [METHOD_NAMES.get(m, m) for m in all_methods()]
    kl = text.split("## path KL")[1]
    assert {r for r in re.findall(r"^\| ([^|]+?) \| \d", kl, re.M)} >= {"QAM", "QAM + External KL", "TRQAM"}


def test_run_accepts_every_method_and_bad_requests_do_no_work(toy: list[str], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    base = [*toy, "run", "--benchmark", "toy-line", "--recipe", "line", "--profile", "tiny", "--out", str(tmp_path)]
    assert cli.main([*base, "--method", "fql", "--set", "offline_steps=2"]) == 0
    assert "RESULT toy-line line task 1 fql seed 0: success" in capsys.readouterr().out
    bad = tmp_path / "bad"
    sweep = [*toy, "sweep", "--benchmark", "toy-line", "--recipes", "line", "--profile", "tiny", "--out", str(bad)]
    assert cli.main([*sweep, "--methods", "bc", "trqam", "sac"]) == 2
    assert "unknown methods ['sac']" in capsys.readouterr().err
    assert cli.main([*sweep, "--methods", "bc", "trqam", "fql", "--set", "per_method.fql.method_options.alpha=-1"]) == 2
    assert "alpha" in capsys.readouterr().err
    assert not bad.exists()  # neither request trained or evaluated anything


def _result(root: Path, domain: str, method: str, seed: int, rate: float, kl: list[float] | None) -> None:
    d = root / domain / "task1" / method / f"seed{seed}"
    d.mkdir(parents=True)
    phases = {"prior": {"success_rate": rate}} if method == "bc" else {"offline": {"success_rate": rate}}
    (d / "result.json").write_text(json.dumps({"benchmark": "ogbench", "domain": domain, "task": 1, "method": method,
                                               "seed": seed, "success": rate, "phases": phases}))
    if kl is not None:
        rows = [{"step": k + 1, "actor/path_kl": v, "critic/loss": 1.0} for k, v in enumerate(kl)]
        if method in ("qam", "qam_ext_kl", "trqam"):
            rows = [{**r, "dual/kl_ema": 0.1, "dual/kl_budget": 0.5} for r in rows]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif method != "bc":
        (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "critic/loss": 1.0}) + "\n")


def test_aggregate_lays_out_every_method(tmp_path: Path) -> None:
    """Synthetic results of every method on two domains × two seeds: Table 1 row order and names, the
    path-KL table only for the methods that log it, with the second-half mean per seed, then mean ± std."""
    logs_kl = {"qam", "qam_ext_kl", "qam_edit", "trqam"}
    for i, method in enumerate(reversed(TABLE1)):  # written in reverse: the order must come from the table
        for domain in ("scene", "cube-double"):
            for seed in (0, 1):
                kl = [9.0, 9.0, 0.1 * (seed + 1), 0.3 * (seed + 1)] if method in logs_kl else None
                _result(tmp_path, domain, method, seed, 0.1 * i + 0.05 * seed, kl)
    results = load_results(tmp_path)
    columns = get_benchmark("ogbench").columns
    text = format_table(table(results), columns)
    names = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines()[2:]]
    assert names == [METHOD_NAMES[m] for m in TABLE1]
    assert re.search(r"^\| FQL \| 72\.5 ± 2\.5 \(n=2\) \| 72\.5 ± 2\.5 \(n=2\) \| 72\.5 \|$", text, re.M)
    kl = path_kl(results)
    assert set(kl) == logs_kl  # FQL, CGQL-Linex, DSRL, IFQL log no path KL; the prior has no log
    mean, std, n = kl["trqam"]["scene"]  # seed 0: mean(0.1, 0.3) = 0.2, seed 1: 0.4 (the first half is left out)
    assert (mean, std, n) == pytest.approx((0.3, 0.1, 2))
    kl_text = format_table(kl, columns, digits=3)
    assert [line.split(" | ")[0].lstrip("| ") for line in kl_text.splitlines()[2:]] == [
        "QAM", "QAM + External KL", "QAM-E", "TRQAM"]
    assert "| TRQAM | 0.300 ± 0.100 (n=2) | 0.300 ± 0.100 (n=2) | — |" in kl_text
    ema = kl_table(results).splitlines()[2:]  # the KL-vs-ε table: methods with a dual, by domain then Table 1
    assert [(r.split(" | ")[0][2:], r.split(" | ")[1]) for r in ema] == [
        (d, m) for d in ("cube-double", "scene") for m in ("QAM", "QAM + External KL", "TRQAM")]
    from trqam_sdk.benchmarks.aggregate import aggregate

    out = aggregate(tmp_path, make_plots=False)
    assert "## path KL D̂ to the reference" in out
    saved = json.loads((tmp_path / "table_offline.json").read_text())
    assert set(saved["path_kl"]) == logs_kl and list(saved["mean_std"]) != []
