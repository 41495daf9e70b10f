"""`trqam bench`: JSON schema on a tiny config, and the analytic FLOP count against FlopCounterMode."""

from __future__ import annotations

import json

import pytest

from trqam_sdk import cli
from trqam_sdk.methods.trqam import TRQAMAgent
from trqam_sdk.profiling import bench
from trqam_sdk.profiling.bench import CONFIGS, BenchConfig, analytic_flops, build_problem, counted_flops, train_step


def test_bench_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--json", "--configs", "tiny", "--steps", "2", "--warmup", "1",
                     "--no-compile"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("tiny", "peak_gflops", "threads", "torch"):
        assert key in res
    tiny = res["tiny"]
    for key in ("ms_per_step", "flops_per_step", "flops_counted", "gflops_per_s", "utilization"):
        assert tiny[key] > 0, key
    assert abs(tiny["flops_rel_diff"]) < 0.02
    assert res["peak_gflops"] > 0 and res["compile"] is False


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("cfg", [CONFIGS["tiny"], BenchConfig(batch=6, width=24, depth=3, num_critics=3,
                                                              flow_steps=4, horizon=2, action_dim=3,
                                                              obs_dim=7, actor_layer_norm=True)])
def test_analytic_flops_match_counter(cfg: BenchConfig, reuse: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong term (a missed VJP, a weight grad that is not formed, ...) shifts the count by far more."""
    monkeypatch.setattr(TRQAMAgent, "reuse_rollout_velocity", reuse)
    problem = build_problem(cfg)
    counted = counted_flops(lambda: train_step(problem))
    analytic = analytic_flops(cfg, problem.cfg.reference, reuse)["total"]
    assert counted == pytest.approx(analytic, rel=0.02)


def test_unknown_config_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown config"):
        bench.run_bench(["nope"], steps=1, warmup=0, count=False, compile=False)
