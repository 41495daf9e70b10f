"""Robomimic: controller conversion, the scripted hdf5 writer, the loader (masks, normalisation), the env built
from env_args, and a tiny recipe run (BC → QAM/TRQAM → evaluation) through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("robosuite")

from trqam_sdk.benchmarks.results import metric  # noqa: E402
from trqam_sdk.benchmarks.robomimic.data import load_robomimic  # noqa: E402
from trqam_sdk.benchmarks.robomimic.env import (  # noqa: E402
    LOW_DIM_KEYS,
    ObsNormalizer,
    RobomimicEnv,
    convert_controller_config,
)
from trqam_sdk.benchmarks.robomimic.generate import OLD_OSC_POSE, GenerateConfig, generate  # noqa: E402
from trqam_sdk.benchmarks.robomimic.recipe import load_recipe  # noqa: E402
from trqam_sdk.testing.benchmark_contract import BenchmarkContract


@pytest.fixture(scope="module")
def lift_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("rm") / "lift.hdf5"
    stats = generate(GenerateConfig(task="lift", demos_per_level={"better": 2, "okay": 1, "worse": 1},
                                    max_steps=70, seed=3), path, progress=False)
    return path, stats


def test_controller_conversion_old_to_composite() -> None:
    new = convert_controller_config(OLD_OSC_POSE)
    assert new["type"] == "BASIC" and set(new["body_parts"]) == {"right"}
    arm = new["body_parts"]["right"]
    assert arm["type"] == "OSC_POSE" and arm["input_type"] == "delta" and arm["input_ref_frame"] == "world"
    assert arm["damping_ratio"] == 1 and arm["damping_ratio_limits"] == [0, 10]
    assert "damping" not in arm and "control_delta" not in arm and arm["gripper"] == {"type": "GRIP"}
    assert convert_controller_config({**OLD_OSC_POSE, "control_delta": False})["body_parts"]["right"][
        "input_type"] == "absolute"
    assert convert_controller_config(new) == new  # composite configs pass through
    with pytest.raises(ValueError, match="neither a composite"):
        convert_controller_config({"type": "WHOLE_BODY_MAGIC"})


def test_file_layout_and_scripted_quality(lift_file: tuple[Path, dict]) -> None:
    path, stats = lift_file
    assert stats["better"]["successes"] == 2  # the low-noise controller lifts the cube
    with h5py.File(path, "r") as f:
        assert json.loads(f["data"].attrs["env_args"])["env_kwargs"]["controller_configs"]["type"] == "OSC_POSE"
        assert sorted(f["mask"]) == ["better", "okay", "okay_better", "train", "valid", "worse", "worse_better",
                                     "worse_okay"]
        demo = f["data/demo_0"]
        n = demo.attrs["num_samples"]
        for k in ("actions", "rewards", "dones", "states", *(f"obs/{k}" for k in LOW_DIM_KEYS),
                  *(f"next_obs/{k}" for k in LOW_DIM_KEYS)):
            assert demo[k].shape[0] == n, k
        assert demo["obs/object"].shape[1] == 10 and demo["actions"].shape[1] == 7
        assert demo["dones"][-1] == 1 and demo["rewards"][-1] == 1  # a better demo ends at success
        np.testing.assert_allclose(demo["obs/robot0_eef_pos"][1:], demo["next_obs/robot0_eef_pos"][:-1])


def test_load_with_masks_and_normalisation(lift_file: tuple[Path, dict]) -> None:
    path, _ = lift_file
    full = load_robomimic(path)
    better = load_robomimic(path, "better")
    both = load_robomimic(path, ["better", "okay"])
    assert len(full.demos) == 4 and better.demos == ["demo_0", "demo_1"] and len(both.demos) == 3
    assert load_robomimic(path, "okay_better").demos == both.demos
    t = full.transitions
    assert t.obs_dim == 19 and t.action_dim == 7 and int(t.terminals.sum()) == 4
    obs = t.observations.numpy()
    np.testing.assert_allclose(obs.mean(0), 0, atol=1e-4)
    varying = np.asarray(full.normalizer.std) > 1.001e-3  # dims at the std floor stay below 1
    np.testing.assert_allclose(obs.std(0)[varying], 1.0, rtol=1e-3)
    solved = t.rewards.numpy() == 0  # reward r - 1: 0 exactly at success, and no bootstrapping past it
    np.testing.assert_array_equal(t.masks.numpy() == 0, solved)
    assert solved.sum() == sum(full.demo_success.values())
    # saved statistics reproduce the same observations on a subset
    again = load_robomimic(path, "better", normalizer=ObsNormalizer.from_json(full.normalizer.to_json()))
    np.testing.assert_allclose(again.transitions.observations.numpy(), obs[: len(again.transitions)], atol=1e-6)


def test_bad_inputs_name_the_problem(lift_file: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = lift_file
    with pytest.raises(FileNotFoundError, match="not found"):
        load_robomimic(tmp_path / "nope.hdf5")
    with pytest.raises(KeyError, match="'expert'.*available"):
        load_robomimic(path, "expert")
    with pytest.raises(KeyError, match="lacks observation keys \\['robot0_joint_pos'\\]"):
        load_robomimic(path, obs_keys=["robot0_eef_pos", "robot0_joint_pos"])
    with pytest.raises(ValueError, match="normaliser has 19 dims"):
        load_robomimic(path, obs_keys=["robot0_eef_pos"], normalizer=ObsNormalizer([0.0] * 19, [1.0] * 19))
    with pytest.raises(ValueError, match="no scripted controller"):
        generate(GenerateConfig(task="square"), tmp_path / "sq.hdf5", progress=False)
    with pytest.raises(KeyError, match="no profile 'huge'"):
        load_recipe("lift", "huge")


def test_env_from_env_args_is_seeded_and_normalised(lift_file: tuple[Path, dict]) -> None:
    data = load_robomimic(lift_file[0])
    env = RobomimicEnv(data.env_args, max_episode_steps=3, normalizer=data.normalizer)
    ob1, _ = env.reset(seed=5)
    ob2, _ = env.reset(seed=5)
    ob3, _ = env.reset(seed=6)
    np.testing.assert_array_equal(ob1, ob2)
    assert ob1.shape == (19,) and not np.allclose(ob1, ob3)  # the cube placement follows the seed
    # the normalised reset observation is in the data's range (same env, same key order)
    assert np.abs(ob1).max() < 10
    for i in range(3):
        ob, r, term, trunc, info = env.step(np.zeros(7))
        assert r == -1.0 and not term and trunc == (i == 2) and info["success"] == 0.0
    with pytest.raises(ValueError, match="expects \\(7,\\)"):
        env.step(np.zeros(6))
    env.close()


def test_tiny_recipe_trains_and_evaluates_via_cli(lift_file: tuple[Path, dict], tmp_path: Path) -> None:
    from trqam_sdk.cli import main

    out = tmp_path / "run"
    sets = ["bc_steps=30", "offline_steps=6", "seeds=[0]", "eval.episodes=1", "eval.max_steps=10", "eval.every=3",
            "finetune.batch_size=16", "finetune.policy.width=32", "finetune.critic.width=32",
            "finetune.critic.num_critics=2", "finetune.log_every=2"]
    argv = ["robomimic", "stress", "lift", "--data", str(lift_file[0]), "--output-dir", str(out), "--no-progress"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["label"] == "scripted" and [r["method"] for r in res["runs"]] == ["bc", "qam", "trqam"]
    assert all(r["benchmark"] == "robomimic" and r["episodes"] == 1 and r["successes"] in (0, 1) for r in res["runs"])
    for m in ("qam", "trqam"):
        evals = [json.loads(r) for r in (out / "lift" / m / "seed0" / "evals.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [0, 3, 6] and evals[0]["phase"] == "prior"
        rows = [json.loads(r) for r in (out / "lift" / m / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(np.isfinite(metric(r, "adj_loss")) for r in rows)
    assert (out / "stress.png").stat().st_size > 1000
    saved = ObsNormalizer.from_json((out / "lift" / "trqam" / "seed0" / "policy" / "obs_normalizer.json").read_text())
    assert saved.mean == load_robomimic(lift_file[0]).normalizer.mean
    assert (out / "lift" / "bc_prior" / "seed0" / "obs_normalizer.json").is_file()
    qam = json.loads((out / "lift" / "qam" / "seed0" / "result.json").read_text())
    assert qam["lam"] == 1.0  # QAM keeps λ fixed; TRQAM's moved
    assert json.loads((out / "lift" / "trqam" / "seed0" / "result.json").read_text())["lam"] != 1.0
    from trqam_sdk.benchmarks.robomimic.stress import summarize

    summary = summarize(out)  # what `trqam robomimic plot` prints: success points with counts and intervals
    assert set(summary) == {"qam/seed0", "trqam/seed0"}
    points = summary["trqam/seed0"]["success"]
    assert [p["step"] for p in points] == [0, 3, 6]
    assert all(p["episodes"] == 1 and p["ci95"][0] <= p["success"] <= p["ci95"][1] for p in points)
    # the same runs are a robomimic result set for `trqam aggregate`
    assert main(["aggregate", "--benchmark", "robomimic", "--runs", str(out), "--no-plots"]) == 0


class TestRobomimicContract(BenchmarkContract):
    """The shared benchmark contract on robomimic: every recipe loads; the scripted Lift file, env and prior run."""

    benchmark, recipe = "robomimic", "lift"

    @pytest.fixture(autouse=True)
    def _scripted_file(self, lift_file: tuple[Path, dict]) -> None:
        self.path = lift_file[0]

    def overrides(self, tmp_path: Path) -> dict:
        return {"data": {"path": str(self.path)}, "bc_steps": 3, "seeds": [0], "threads": 1,
                "finetune": {"batch_size": 8, "policy": {"width": 16}},
                "eval": {"episodes": 1, "max_steps": 5, "workers": 1}}
