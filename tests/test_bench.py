"""`trqam bench`: JSON schema on a tiny config for every method, the analytic FLOP count against the counted one,
and no temporary folder left behind."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from trqam_sdk import cli
from trqam_sdk.benchmarks.sweep import all_methods
from trqam_sdk.methods.trqam import TRQAMAgent
from trqam_sdk.profiling import bench
from trqam_sdk.profiling.bench import (
    ANALYTIC,
    CONFIGS,
    BenchConfig,
    analytic_flops,
    build_problem,
    counted_flops,
    train_step,
)


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The bench's temporary folders go here (not the shared /tmp, where other runs may make some)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_bench_json_every_method(capsys: pytest.CaptureFixture[str], own_tmp: Path) -> None:
    """One row per (config, method) for every registered fine-tuning method, in Table 1 order; analytic FLOPs
    (checked) for the TRQAM family, counted ones for the rest; temporary run folders removed."""
    assert cli.main(["bench", "--json", "--configs", "tiny", "--steps", "1", "--warmup", "1", "--no-compile"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("tiny", "peak_gflops", "threads", "torch", "methods"):
        assert key in res
    assert res["methods"] == all_methods(prior=False) and list(res["tiny"]) == res["methods"]
    for method, row in res["tiny"].items():
        assert "error" not in row, (method, row.get("error"))
        for key in ("ms_per_step", "flops_per_step", "flops_counted", "gflops_per_s", "utilization"):
            assert row[key] > 0, (method, key)
        assert row["method"] == method
        assert row["flops_source"] == ("analytic" if method in ANALYTIC else "counted"), method
        if method in ANALYTIC:
            assert abs(row["flops_rel_diff"]) < 0.02, method
        else:
            assert row["flops_per_step"] == row["flops_counted"]
    assert res["peak_gflops"] > 0 and res["compile"] is False
    assert not list(own_tmp.glob("trqam-bench-*"))  # every run folder the bench made is gone


def test_bench_table_and_method_choice(capsys: pytest.CaptureFixture[str], own_tmp: Path) -> None:
    """The text table: one row per (config, method) asked for; unknown methods fail before any timing."""
    assert cli.main(["bench", "--configs", "tiny", "--methods", "qam", "trqam", "--steps", "1", "--warmup", "1",
                     "--no-compile", "--no-count"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split()[:2] for line in lines if line.startswith("tiny ")]
    assert rows == [["tiny", "qam"], ["tiny", "trqam"]]
    assert cli.main(["bench", "--configs", "tiny", "--methods", "sac"]) == 2
    assert "unknown methods ['sac']" in capsys.readouterr().err


@pytest.mark.parametrize("method", ANALYTIC)
@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("cfg", [CONFIGS["tiny"], BenchConfig(batch=6, width=24, depth=3, num_critics=3,
                                                              flow_steps=4, horizon=2, action_dim=3,
                                                              obs_dim=7, actor_layer_norm=True)])
def test_analytic_flops_match_counter(cfg: BenchConfig, reuse: bool, method: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong term (a missed VJP, a weight grad that is not formed, ...) shifts the count by far more; QAM and
    QAM + External KL run TRQAM's update (Λ and λ·D̂ add no matmul), so one formula serves all three."""
    monkeypatch.setattr(TRQAMAgent, "reuse_rollout_velocity", reuse)
    problem = build_problem(cfg, method=method)
    counted = counted_flops(lambda: train_step(problem))
    analytic = analytic_flops(cfg, problem.cfg.reference, reuse)["total"]
    assert counted == pytest.approx(analytic, rel=0.02)


def test_counted_flops_is_flop_counter_mode() -> None:
    """The bench's count (FlopCounterMode's formulas without its module tracker) equals FlopCounterMode's own
    on an update FlopCounterMode can run."""
    from torch.utils.flop_counter import FlopCounterMode

    problem = build_problem(CONFIGS["tiny"])
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(problem)
    assert counted_flops(lambda: train_step(problem)) == counter.get_total_flops()


def test_build_problem_removes_its_temporary_folder(own_tmp: Path) -> None:
    import gc

    problem = build_problem(CONFIGS["tiny"])
    made = list(own_tmp.glob("trqam-bench-*"))
    assert len(made) == 1 and (made[0] / "config.json").is_file()
    del problem
    gc.collect()
    assert not made[0].exists()


def test_unknown_config_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown config"):
        bench.run_bench(["nope"], steps=1, warmup=0, count=False, compile=False)
