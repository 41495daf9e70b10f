"""Every OGBench domain recipe runs end to end on tiny official-format data; offline → online; aggregation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ogbench")

from trqam_sdk import cli  # noqa: E402
from trqam_sdk.benchmarks.aggregate import format_pooled, format_table, kl_table, pooled, table  # noqa: E402
from trqam_sdk.benchmarks.ogbench.generate import generate_dataset  # noqa: E402
from trqam_sdk.benchmarks.ogbench.recipe import list_recipes, load_recipe  # noqa: E402
from trqam_sdk.benchmarks.plots import plot_domain  # noqa: E402
from trqam_sdk.benchmarks.registry import get_benchmark
from trqam_sdk.benchmarks.results import load_results, metric  # noqa: E402
from trqam_sdk.benchmarks.runner import run_one  # noqa: E402
from trqam_sdk.testing.benchmark_contract import BenchmarkContract  # noqa: E402

PAPER_DOMAINS = ["cube-double", "cube-triple", "cube-quadruple", "scene", "puzzle-3x3", "puzzle-4x4",
                 "antmaze-large", "antmaze-giant", "humanoidmaze-medium", "humanoidmaze-large"]
LENGTH = 30  # rows per tiny episode

TINY = {"bc_steps": 3, "offline_steps": 4, "threads": 1,
        "finetune": {"batch_size": 8, "log_every": 1, "policy": {"width": 16},
                     "critic": {"num_critics": 2, "width": 16}},
        "eval": {"episodes": 1, "max_steps": 6, "workers": 1}}


def tiny_overrides(domain: str, root: Path) -> dict:
    """Tiny data for ``domain``: regenerated play data, or a random-policy navigate file for mazes."""
    if "maze" in domain:  # official-format file from a correlated-random policy (no expert exists here)
        folder = generate_dataset(f"{domain}-navigate-singletask-task1-v0", episodes=1, val_episodes=1,
                                  dataset_dir=root, workers=1, episode_length=LENGTH, progress=False,
                                  policy="random")
        data = {"source": "official", "dataset_dir": str(folder)}
    else:
        data = {"source": "regenerate", "dataset_dir": str(root), "episodes": 1, "episode_length": LENGTH,
                "workers": 1}
    online = 3 if domain in ("antmaze-giant", "cube-double") else 0
    return {**TINY, "data": data, "online_steps": online}


def test_recipes_are_complete() -> None:
    assert set(PAPER_DOMAINS) <= set(list_recipes())
    for name in PAPER_DOMAINS:
        paper, small = load_recipe(name, "paper"), load_recipe(name, "cpu-small")
        assert (paper.bc_steps, paper.offline_steps, paper.online_steps) == (300_000, 1_000_000, 500_000)
        assert paper.horizon == (1 if "maze" in name else 5) and len(paper.seeds) == 8
        assert paper.methods == ["bc", "fql", "cgql_linex", "dsrl", "ifql", "qam", "qam_ext_kl", "qam_edit", "trqam"]
        assert small.methods == ["bc", "qam", "qam_ext_kl", "trqam"] and paper.tasks == [1, 2, 3, 4, 5]
        assert small.offline_steps < 5000 and small.finetune.policy.width <= 256
        big = name in ("cube-triple", "cube-quadruple", "puzzle-4x4", "antmaze-giant")
        policy = paper.finetune.policy
        assert (policy.width, policy.layer_norm) == ((1024, True) if big else (512, False))
        human = name.startswith("humanoidmaze")
        assert (paper.finetune.critic.discount, paper.finetune.critic.rho) == ((0.999, 0.0) if human else (0.995, 0.5))
        assert paper.data.reward == ("sparse" if name.startswith(("scene", "puzzle")) else "default")
    eps = {n: load_recipe(n, "paper").kl_budget for n in PAPER_DOMAINS}
    assert eps["puzzle-4x4"] == 4.0 and eps["puzzle-3x3"] == 2.0 and eps["cube-quadruple"] == 1.0
    assert load_recipe("puzzle-4x4", "paper").qam_tau == 30.0 and load_recipe("antmaze-large", "paper").qam_tau == 10
    giant = load_recipe("antmaze-giant", "paper")
    assert giant.data.num_files == 10 and giant.finetune_config("trqam", 0, "x").trust_region.kl_budget_schedule == [
        (1_000_000, 3.0)]


def test_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no OGBench recipe 'cube-nonexistent'"):
        load_recipe("cube-nonexistent")
    with pytest.raises(KeyError, match="no profile"):
        load_recipe("scene", "gpu-huge")
    with pytest.raises(KeyError, match="unknown keys"):
        load_recipe("scene", "cpu-small", {"finetune": {"batch": 3}})
    with pytest.raises(ValueError, match="unknown methods"):
        load_recipe("scene", "cpu-small", {"methods": ["sac"]})
    dup = tmp_path / "dup.yaml"
    dup.write_text("domain: scene\nkl_budget: 0.5\nkl_budget: 0.7\nprofiles: {cpu-small: {}}\n")
    with pytest.raises(ValueError, match="duplicate key 'kl_budget'"):  # a recipe file is read strictly too
        load_recipe(str(dup))
    with pytest.raises(ValueError, match="tasks are 1..5"):
        get_benchmark("ogbench").env_factory(load_recipe("scene"), "6")


@pytest.mark.parametrize("domain", PAPER_DOMAINS)
def test_recipe_runs_tiny(domain: str, tmp_path: Path) -> None:
    """Each domain's recipe: data → BC prior → TRQAM offline (→ online) → evaluation, on tiny data."""
    recipe = load_recipe(domain, "cpu-small", tiny_overrides(domain, tmp_path / "data"))
    out, bench = tmp_path / "runs", get_benchmark("ogbench")
    res = run_one(bench, recipe, 1, "trqam", 0, out, "cpu-small")
    steps = recipe.offline_steps + recipe.online_steps
    assert res["steps"] == steps and 0.0 <= res["success"] <= 1.0 and 0.01 <= res["lam"] <= 100.0
    assert res["benchmark"] == "ogbench" and res["episodes"] == 1 and res["successes"] in (0, 1)
    rdir = out / domain / "task1" / "trqam" / "seed0"
    rows = [json.loads(r) for r in (rdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    evals = [json.loads(r) for r in (rdir / "evals.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == steps and evals[-1]["mean_length"] <= 6
    assert (rdir / "policy" / "model.safetensors").is_file()
    if domain == "antmaze-giant":  # ε switches from 0.5 to 3.0 exactly when the online phase starts
        assert [metric(r, "kl_budget") for r in rows] == [0.5] * 4 + [3.0] * 3 and res["kl_budget"] == 3.0
    phases = ["prior", "offline", "online"] if recipe.online_steps else ["prior", "offline"]
    assert [e["phase"] for e in evals] == phases and [e["step"] for e in evals][:2] == [0, recipe.offline_steps]
    if recipe.online_steps:
        assert res["online_rows"] == recipe.online_steps and "offline_success" in res
    bc = run_one(bench, recipe, 1, "bc", 0, out, "cpu-small")  # reuses the cached prior and its evaluation
    prior = {k: v for k, v in evals[0].items() if k not in ("step", "phase")}
    assert bc["steps"] == 0 and bc["phases"]["prior"] == prior and bc["success"] == prior["success_rate"]


def test_sweep_resumes_and_aggregate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    sets = ["bc_steps=3", "offline_steps=4", "finetune.batch_size=8", "finetune.log_every=1",
            "finetune.policy.width=16", "finetune.critic.num_critics=2", "finetune.critic.width=16",
            "eval.episodes=1", "eval.max_steps=5", f"data.dataset_dir={data}", "data.episodes=1",
            f"data.episode_length={LENGTH}", "data.workers=1"]
    argv = ["sweep", "--recipes", "cube-single", "--methods", "bc", "qam_ext_kl", "--seeds", "0",
            "--out", str(tmp_path / "runs"), "--set", *sets]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("done cube-single") == 2
    assert cli.main(argv) == 0  # everything finished: all skipped
    assert capsys.readouterr().out.count("skip (done)") == 2
    assert cli.main(["aggregate", "--runs", str(tmp_path / "runs"), "--plots", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "| BC (prior) |" in text and "| QAM + External KL |" in text and "| method | c1 | all |" in text
    assert re.search(r"\| QAM \+ External KL \| (0\.0% \[0\.0, 79\.3\]|100\.0% \[20\.7, 100\.0\]) \(n=1\) \|", text)
    assert (tmp_path / "plots" / "cube-single_curves.png").stat().st_size > 0


def _phase(rate: float, episodes: int = 10) -> dict:
    return {"success_rate": rate, "successes": round(rate * episodes), "episodes": episodes}


def test_table_math(tmp_path: Path) -> None:
    """Per seed: mean over tasks; then mean ± population std over seeds; 'all' averages domains; pooled episodes
    with their Wilson interval; results and logs written before the metric rename still read."""
    for seed, tasks in ((0, (0.2, 0.4)), (1, (0.6, 0.8))):
        for task, s in zip((1, 2), tasks, strict=True):
            for method, phases in (("trqam", {"offline": _phase(s), "online": _phase(1.0)}),
                                   ("bc", {"prior": _phase(s / 2)})):
                d = tmp_path / "scene" / f"task{task}" / method / f"seed{seed}"
                d.mkdir(parents=True)
                (d / "result.json").write_text(json.dumps({"benchmark": "ogbench", "domain": "scene", "task": task,
                                                           "method": method, "seed": seed, "success": s,
                                                           "phases": phases}))
                if method == "trqam":  # namespaced metric keys
                    (d / "metrics.jsonl").write_text("".join(json.dumps(
                        {"step": k, "dual/kl_ema": 0.1 * k, "dual/kl_budget": 0.5, "dual/lam": 1.0}) + "\n"
                        for k in (1, 2, 3, 4)))
    old = tmp_path / "cube-double" / "task1" / "qam_ext_kl" / "seed0"  # an older result: flat keys, no counts
    old.mkdir(parents=True)
    (old / "result.json").write_text(json.dumps({"domain": "cube-double", "task": 1, "method": "qam_ext_kl",
                                                 "seed": 0, "success": 0.3, "offline_success": 0.3}))
    (old / "metrics.jsonl").write_text("".join(json.dumps({"step": k, "kl_ema": 1.0, "kl_budget": 0.5, "lam": 2.0})
                                               + "\n" for k in (1, 2)))
    results = load_results(tmp_path)
    tab = table(results, "offline")
    np.testing.assert_allclose(tab["trqam"]["scene"][:2], (50.0, 20.0))  # seeds: 30 and 70
    np.testing.assert_allclose(tab["bc"]["scene"][:2], (25.0, 10.0))  # the prior's evaluation, in both phases
    assert table(results, "online")["trqam"]["scene"][:2] == (100.0, 0.0)
    assert table(results, "online")["bc"]["scene"][:2] == tab["bc"]["scene"][:2]
    assert tab["qam_ext_kl"]["cube-double"] == (30.0, 0.0, 1)
    text = format_table(tab, get_benchmark("ogbench").columns)
    assert "| method | scene | c2 | all |" in text and "| TRQAM | 50.0 ± 20.0 (n=2) | — | 50.0 |" in text
    pool = pooled(results, "offline")
    assert pool["trqam"]["scene"] == (20, 40) and "cube-double" not in pool.get("qam_ext_kl", {})
    assert format_pooled(pool, get_benchmark("ogbench").columns).splitlines()[2:] == [
        "| BC (prior) | 25.0% [14.2, 40.2] (n=40) |", "| TRQAM | 50.0% [35.2, 64.8] (n=40) |"]
    kl = kl_table(results)
    assert "| cube-double | QAM + External KL | 0.5 | 1.000 ± 0.000 | 1.000 | 1.000 ± 0.000 | 2.00 |" in kl
    assert "| scene | TRQAM | 0.5 | 0.350 ± 0.000 | 0.400 | 0.400 ± 0.000 | 0.80 |" in kl
    assert plot_domain(results, "scene", tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="no result.json"):
        load_results(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no robomimic results .*\['ogbench'\]"):
        load_results(tmp_path, "robomimic")


class TestOGBenchContract(BenchmarkContract):
    """The shared benchmark contract on OGBench: every recipe loads; tiny cube-single data, env and prior run."""

    benchmark, recipe, bad_task = "ogbench", "cube-single", "6"

    def overrides(self, tmp_path: Path) -> dict:
        return tiny_overrides("cube-single", tmp_path / "data")


def test_paper_profiles_use_the_reference_conventions() -> None:
    """The paper's recipes train with the authors' conventions (SPEC §5.1); the CPU profiles keep the SDK's."""
    from trqam_sdk.conventions import Conventions

    for b in ("ogbench", "robomimic"):
        bench = get_benchmark(b)
        for name in bench.recipe_names():
            assert bench.load_recipe(name, "paper").finetune.conventions == Conventions.reference(), (b, name)
            assert bench.load_recipe(name, "cpu-small").finetune.conventions == Conventions(), (b, name)
