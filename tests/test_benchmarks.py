"""The benchmark contract: registry and its errors, Wilson intervals, the one episode loop, and a benchmark
defined outside the package (tests/plugins) running through `trqam run / sweep / aggregate`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trqam_sdk import cli
from trqam_sdk.benchmarks.base import Benchmark
from trqam_sdk.benchmarks.registry import benchmark_names, get_benchmark, register_benchmark
from trqam_sdk.benchmarks.results import metric
from trqam_sdk.rollout.episode import ChunkStepper, run_episode
from trqam_sdk.rollout.evaluation import evaluate
from trqam_sdk.rollout.stats import format_success, wilson_interval

PLUGINS = Path(__file__).parent / "plugins"


@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                       (1, 3, 0.0615, 0.7923), (50, 200, 0.1951, 0.3143)])
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    """Reference values (scipy.stats.binomtest(k, n).proportion_ci(method="wilson")), to 4 decimals."""
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_properties_and_errors() -> None:
    lo, hi = wilson_interval(3, 7)
    assert lo < 3 / 7 < hi
    assert wilson_interval(30, 70)[1] - wilson_interval(30, 70)[0] < hi - lo  # more episodes, narrower
    assert wilson_interval(3, 7, z=1.0)[1] < hi  # a lower confidence level, narrower
    assert format_success(5, 10) == "50.0% [23.7, 76.3] (n=10)"
    for bad, match in (((1, 0), "at least one episode"), ((11, 10), r"in \[0, episodes=10\]"),
                       ((-1, 10), "in \\[0"), ((0.5, 10), "whole numbers")):
        with pytest.raises((ValueError, TypeError), match=match):
            wilson_interval(*bad)


class _Line:
    """x += a; success at x >= 3.5 (terminates); time limit 5; records every action."""

    def __init__(self) -> None:
        self.actions: list[float] = []

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.x, self.t = 0.0, 0
        return np.array([self.x], np.float32), {}

    def step(self, a: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.actions.append(float(a[0]))
        self.x, self.t = self.x + float(a[0]), self.t + 1
        ok = self.x >= 3.5
        return np.array([self.x], np.float32), -1.0, ok, self.t >= 5, {"success": float(ok)}

    def close(self) -> None:
        pass


def test_episode_loop_open_loop_clipped_and_cut() -> None:
    env, calls = _Line(), []

    def act(obs: torch.Tensor) -> torch.Tensor:
        calls.append(float(obs[0, 0]))
        return torch.tensor([[[2.0], [0.5], [0.25]]])  # first action outside the box: clipped to 1

    out = run_episode(env, act, seed=0)
    # chunks of 3 run open-loop; the policy is asked again only after the chunk is used up
    assert env.actions == [1.0, 0.5, 0.25, 1.0, 0.5] and calls == [0.0, 1.75]
    assert out == {"success": 0.0, "return": -5.0, "length": 5.0}  # x = 3.25 < 3.5 at the time limit
    stepper = ChunkStepper(_Line(), lambda o: torch.ones(1, 6, 1))
    stepper.reset(0)
    steps = [stepper.step() for _ in range(4)]
    assert steps[-1].terminated and steps[-1].success == 1.0 and stepper.queue == []  # the rest of the chunk dropped
    with pytest.raises(ValueError, match=r"\(1, H, A\) chunk"):
        run_episode(_Line(), lambda o: torch.ones(4, 1), seed=0)
    with pytest.raises(RuntimeError, match="before reset"):
        ChunkStepper(_Line(), act).step()


def test_evaluate_reports_counts_and_interval() -> None:
    res = evaluate(lambda o: torch.ones(1, 3, 1), _Line, episodes=4, workers=1)
    assert res["success_rate"] == 1.0 and res["successes"] == 4 and res["episodes"] == 4
    assert (res["ci95_low"], res["ci95_high"]) == pytest.approx(wilson_interval(4, 4))
    assert res["mean_length"] == 4.0
    with pytest.raises(TypeError, match="zero-argument callable"):
        evaluate(lambda o: o, "cube-single-singletask-task1-v0", episodes=1)  # type: ignore[arg-type]


def test_registry_names_and_errors() -> None:
    assert {"ogbench", "robomimic"} <= set(benchmark_names())
    with pytest.raises(ValueError, match=r"unknown benchmark 'atari'; known benchmarks: \[.*'ogbench', 'robomimic'"):
        get_benchmark("atari")

    class Half(Benchmark):
        def domain(self, recipe: Any) -> str:
            return "x"

    with pytest.raises(TypeError, match=r"does not implement \['env_factory', 'load_data', 'tasks'\]"):
        register_benchmark("half")(Half)
    with pytest.raises(TypeError, match="not a subclass"):
        register_benchmark("plain")(dict)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="use letters"):
        register_benchmark("a b")
    ogbench = get_benchmark("ogbench")
    assert get_benchmark("ogbench") is ogbench and ogbench.name == "ogbench"
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark("ogbench")(type("Other", (type(ogbench),), {}))
    assert "cube-double" in ogbench.recipe_names()
    with pytest.raises(FileNotFoundError, match=r"no ogbench recipe 'cube-nine'.*known: \[.*'cube-double'"):
        ogbench.load_recipe("cube-nine")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.syspath_prepend(str(PLUGINS))
    return ["--plugin", "trqam_toy_benchmark"]


def test_external_benchmark_through_run_sweep_aggregate(toy: list[str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "runs")
    assert cli.main([*toy, "run", "--benchmark", "toy-line", "--recipe", "line", "--profile", "online",
                     "--task", "2", "--out", out]) == 0
    assert "RESULT toy-line line task 2 trqam seed 0: success" in capsys.readouterr().out
    rdir = tmp_path / "runs" / "line" / "task2" / "trqam" / "seed0"
    res = json.loads((rdir / "result.json").read_text())
    assert res["benchmark"] == "toy-line" and res["episodes"] == 4 and res["steps"] == 4 + 5
    assert res["ci95"] == pytest.approx(list(wilson_interval(res["successes"], 4)))
    assert res["online_rows"] == 5 and set(res["phases"]) == {"prior", "offline", "online"}
    evals = [json.loads(r) for r in (rdir / "evals.jsonl").read_text().splitlines()]
    assert [(e["step"], e["phase"]) for e in evals] == [(0, "prior"), (4, "offline"), (9, "online")]
    rows = [json.loads(r) for r in (rdir / "metrics.jsonl").read_text().splitlines()]
    assert [metric(r, "kl_budget") for r in rows] == [0.5] * 4 + [2.0] * 5  # ε switches when online starts
    assert (tmp_path / "runs" / "line" / "task2" / "bc_prior" / "seed0" / "model.safetensors").is_file()

    sweep = [*toy, "sweep", "--benchmark", "toy-line", "--recipes", "line", "--profile", "tiny", "--tasks", "1",
             "--seeds", "0", "1", "--out", out, "--set", "offline_steps=3"]
    assert cli.main(sweep) == 0
    assert capsys.readouterr().out.count("done line task 1") == 4  # 2 seeds × (bc, trqam)
    assert cli.main(sweep) == 0
    assert capsys.readouterr().out.count("skip (done)") == 4
    assert cli.main([*toy, "aggregate", "--benchmark", "toy-line", "--runs", out, "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "| method | L | all |" in text and "| BC (prior) |" in text and "| TRQAM |" in text
    pooled = text.split("pooled over seeds and tasks")[1]
    assert "(n=8)" in pooled and "(n=12)" in pooled  # BC: 2 seeds × 4 episodes; TRQAM: + the task-2 run
    assert re.search(r"no ogbench results .*\['toy-line'\]\); pass --benchmark",
                     fails(["aggregate", "--runs", out, "--no-plots"], capsys))


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """A bad input: exit status 2 and one error line (returned)."""
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def test_run_errors_name_the_problem(toy: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [*toy, "run", "--benchmark", "toy-line", "--recipe", "line", "--profile", "tiny", "--out", str(tmp_path)]
    assert "has no task '7'; its tasks: ['1', '2']" in fails([*base, "--task", "7"], capsys)
    assert re.search(r"method 'sac' does not fine-tune; choose one of \[.*'trqam'",
                     fails([*base, "--method", "sac"], capsys))
    assert re.search(r"unknown benchmark 'nope'; known benchmarks: \[.*'ogbench', 'robomimic', 'toy-line'",
                     fails([*toy, "run", "--benchmark", "nope", "--recipe", "x"], capsys))
    assert "no profile 'huge'" in fails([*base[:-4], "--profile", "huge"], capsys)
    assert "shard 3/2: need 0 <= i < n" in fails([*toy, "sweep", "--benchmark", "toy-line", "--recipes", "line",
                                                   "--shard", "3/2"], capsys)
    assert not list(tmp_path.iterdir())  # nothing was trained for a bad request


def test_bc_prior_cache_is_keyed_by_its_spec(toy: list[str], tmp_path: Path) -> None:
    """A cached prior is reused only when it was trained from the same data and settings (else trained again)."""

    from trqam_sdk.benchmarks.runner import bc_prior

    bench = get_benchmark("toy-line")
    recipe = bench.load_recipe("line", "tiny")
    train = bench.load_data(recipe, "1")
    folder = tmp_path / "prior"
    first = bc_prior(recipe, train, 0, folder)
    weights = {k: v.clone() for k, v in first.state_dict().items()}
    again = bc_prior(recipe, train, 0, folder)  # loaded from disk: the same weights, bit for bit
    assert again is not first and all(torch.equal(weights[k], v) for k, v in again.state_dict().items())
    recipe.bc_steps += 5
    longer = bc_prior(recipe, train, 0, folder)
    assert json.loads((folder / "bc_prior.json").read_text())["bc_steps"] == recipe.bc_steps
    assert any(not torch.equal(weights[k], v) for k, v in longer.state_dict().items())
    sha = json.loads((folder / "bc_prior.json").read_text())["data"]["sha1"]
    other = bench.load_data(bench.load_recipe("line", "tiny", {"data": {"seed": 1}}), "1")  # other demonstrations
    bc_prior(recipe, other, 0, folder)
    assert json.loads((folder / "bc_prior.json").read_text())["data"]["sha1"] != sha


# -- the shared benchmark contract on the outside benchmark (OGBench and robomimic run it in their own files) ------
import sys  # noqa: E402

from trqam_sdk.testing.benchmark_contract import BenchmarkContract  # noqa: E402

sys.path.insert(0, str(PLUGINS))
import trqam_toy_benchmark  # noqa: E402,F401  (registers "toy-line", as `--plugin trqam_toy_benchmark` does)


class TestToyBenchmarkContract(BenchmarkContract):
    benchmark, recipe, profile = "toy-line", "line", "tiny"


def test_bc_prior_follows_the_recipe_conventions(tmp_path: Path) -> None:
    """The shared runner's prior honours ``finetune.conventions`` (init, BC loss, clip, sampling) and caches by it."""
    import copy

    from trqam_sdk.benchmarks.runner import bc_prior, prior_spec
    from trqam_sdk.conventions import Conventions

    bench = get_benchmark("toy-line")
    recipe = bench.load_recipe("line", "tiny")
    train = bench.load_data(recipe, "1")
    ref = copy.deepcopy(recipe)
    ref.finetune.conventions = Conventions.reference()
    assert prior_spec(recipe, train, 0) != prior_spec(ref, train, 0)  # a cached default prior is not reused
    a, b = bc_prior(recipe, train, 0, tmp_path / "a"), bc_prior(ref, train, 0, tmp_path / "b")
    sa, sb = a.state_dict(), b.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    again = bc_prior(recipe, train, 0, tmp_path / "a2")  # and the default path is reproducible
    assert all(torch.equal(sa[k], v) for k, v in again.state_dict().items())
