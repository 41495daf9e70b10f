"""`trqam metaworld` end to end at the test profile: every stage (scripted data → lerobot-train prior → offline →
online → SDK evaluation + lerobot-eval) on a few frames, the result files `trqam aggregate` reads, resume by stage
and refusals of a run folder that belongs to another configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trqam_sdk.cli import main

ARGS = ["metaworld", "--profile", "test", "--task", "reach-v3", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("metaworld")
    assert main([*ARGS, "--methods", "bc", "trqam", "--out", str(out)]) == 0
    return out / "reach-v3"


def test_every_stage_ran_and_the_result_has_every_phase(run: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from trqam_sdk.rollout.evaluation import episode_seeds

    ds = LeRobotDataset("local/metaworld-reach-v3", root=str(run / "data"))
    gen = json.loads((run / "data" / "meta" / "trqam_generation.json").read_text())
    assert ds.num_episodes == gen["episodes"] == 3 and len(ds) == gen["frames"]
    assert (run / "prior" / "lerobot" / "checkpoints" / "last" / "pretrained_model" / "config.json").is_file()
    prior = json.loads((run / "bc" / "seed0" / "result.json").read_text())
    assert prior["method"] == "bc" and prior["benchmark"] == "metaworld" and set(prior["phases"]) == {"prior"}
    r = json.loads((run / "trqam" / "seed0" / "result.json").read_text())
    assert set(r["phases"]) == {"prior", "offline", "online"}
    assert r["phases"]["prior"] == prior["phases"]["prior"]  # one prior evaluation shared by the seed's methods
    # 3 offline updates, then 6 online env steps at UTD 1 into a buffer of exactly that many rows
    assert r["steps"] == 3 + 6 and r["online_env_steps"] == 6 and r["online_rows"] == 6
    mem = r["replay_memory"]
    assert mem["offline_rows"] == len(ds) and mem["bytes_per_row"]["observations.observation.image"] == 3 * 32 * 32
    le = r["lerobot_eval"]  # LeRobot's evaluator on the saved checkpoint, same env seeds as the SDK's evaluation
    assert le["episodes"] == r["episodes"] == 1 and le["seeds"] == episode_seeds(0, 1)
    for stage in ("data", "prior", "offline", "online", "lerobot_eval"):
        assert r["seconds"][stage]["seconds"] >= 0 and r["seconds"][stage]["peak_rss_mb"] > 0
    rows = [json.loads(x) for x in (run / "trqam" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == list(range(1, 10)) and all("dual/lam" in x for x in rows)
    # the fine-tuned checkpoint is a plain lerobot policy folder
    assert (run / "trqam" / "seed0" / "policy" / "model.safetensors").is_file()
    assert (run / "trqam" / "seed0" / "policy" / "policy_preprocessor.json").is_file()


def test_rerun_is_a_noop_and_aggregate_reads_the_results(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (run / "trqam" / "seed0" / "result.json").stat().st_mtime_ns
    assert main([*ARGS, "--methods", "trqam", "--out", str(run.parent)]) == 0
    assert (run / "trqam" / "seed0" / "result.json").stat().st_mtime_ns == before
    capsys.readouterr()
    assert main(["aggregate", "--benchmark", "metaworld", "--runs", str(run.parent), "--phase", "online",
                 "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "TRQAM" in text and "BC (prior)" in text and "reach-v3" in text


def test_a_changed_configuration_is_refused_not_mixed_in(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another prior config over the same folder: a clear error naming the stage file; nothing is rewritten."""
    stage = run / "stages" / "prior.json"
    before = stage.read_bytes()
    code = main([*ARGS, "--methods", "qam", "--out", str(run.parent), "--set", "prior.steps=3"])
    assert code == 2
    assert "prior.json" in capsys.readouterr().err
    assert stage.read_bytes() == before and not (run / "qam").exists()


def test_a_finished_run_of_another_configuration_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished (method, seed) re-run with other settings must not print the old numbers as the new ones."""
    assert main([*ARGS, "--methods", "trqam", "--out", str(run.parent), "--set", "offline_steps=4"]) == 2
    assert "result.json" in capsys.readouterr().err


def test_unknown_method_and_task_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--methods", "nosuch", "--out", str(tmp_path)]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(["metaworld", "--profile", "test", "--task", "reach-v2", "--out", str(tmp_path)]) == 2
    assert "reach-v3" in capsys.readouterr().err  # the close name is suggested
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_cpu_profile_experiment(tmp_path: Path) -> None:
    """The real experiment at the cpu profile for one task and seed (≈ 40 min on 2 cores; docs/results.md has the
    numbers of all tasks and seeds): every phase evaluated on the recipe's 20 episodes, by both evaluators."""
    assert main(["metaworld", "--task", "push-v3", "--seed", "0", "--methods", "bc", "trqam", "--out",
                 str(tmp_path), "--no-progress"]) == 0
    r = json.loads((tmp_path / "push-v3" / "trqam" / "seed0" / "result.json").read_text())
    assert {p: int(e["episodes"]) for p, e in r["phases"].items()} == {"prior": 20, "offline": 20, "online": 20}
    assert r["lerobot_eval"]["episodes"] == 20 and r["online_env_steps"] == 600
