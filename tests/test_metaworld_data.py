"""Expert demonstrations as a LeRobotDataset: format, agreement with the env frame by frame, stats, resume."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import metaworld  # noqa: F401  (installed by make setup: the tests fail, not skip, without it)
import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from trqam_sdk.benchmarks.metaworld import generate as gen  # noqa: E402
from trqam_sdk.benchmarks.metaworld.env import EnvSettings, TrqamMetaworldEnv  # noqa: E402

# reach-v3 with 50 steps: at noise 0.1 episode 1 succeeds (43 steps) and episode 0 does not (needs 52);
# at noise 2.0 neither does — successes and failures both present.
SETTINGS = EnvSettings("reach-v3", image_size=32, episode_length=50)
LEVELS = {"better": 0.1, "worse": 2.0}
ARGS = {"repo_id": "local/mw-test", "levels": LEVELS, "episodes_per_level": 2, "seed": 0, "episodes_per_shard": 1}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mw") / "ds"
    return root, gen.generate_dataset(SETTINGS, root, **ARGS)


def _load(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(ARGS["repo_id"], root=root)


def _frames(ds) -> dict[str, np.ndarray]:
    rows = [ds[i] for i in range(len(ds))]
    out = {k: np.stack([r[k].numpy() for r in rows]) for k in rows[0] if k != "task"}
    out["task"] = np.array([r["task"] for r in rows])
    return out


def test_dataset_format(generated):
    root, record = generated
    ds = _load(root)
    feats = ds.meta.features
    assert feats["observation.image"]["dtype"] == "image" and tuple(feats["observation.image"]["shape"]) == (32, 32, 3)
    for key, dtype, shape in (("observation.state", "float32", (4,)), ("action", "float32", (4,)),
                              ("next.reward", "float32", (1,)), ("next.done", "bool", (1,)),
                              ("next.success", "bool", (1,))):
        assert feats[key]["dtype"] == dtype and tuple(feats[key]["shape"]) == shape, key
    assert ds.meta.fps == 80 and ds.num_episodes == 4
    assert ds.num_frames == record["frames"] == sum(r["frames"] for r in record["per_episode"])
    f = _frames(ds)
    assert set(f["task"]) == {"Reach a goal position"}
    assert f["observation.image"].shape == (ds.num_frames, 3, 32, 32)
    assert np.abs(f["action"]).max() <= 1.0
    # episodes are stored in level order, frames contiguous and counted per episode
    lengths = np.bincount(f["episode_index"])
    assert lengths.tolist() == [r["frames"] for r in record["per_episode"]]
    assert [r["level"] for r in record["per_episode"]] == ["better", "better", "worse", "worse"]
    assert [r["seed"] for r in record["per_episode"]] == [10_000_000, 10_000_001, 10_010_000, 10_010_001]


def test_frames_replay_in_the_env(generated):
    """Same seed + recorded actions -> the env gives back every stored image, state, reward and flag, and the
    episode ends exactly at its last stored frame (nothing dropped or duplicated)."""
    root, record = generated
    f = _frames(_load(root))
    env = TrqamMetaworldEnv(SETTINGS)
    successes = []
    try:
        for ep, info_row in enumerate(record["per_episode"]):
            idx = np.flatnonzero(f["episode_index"] == ep)
            assert np.array_equal(f["frame_index"][idx], np.arange(len(idx)))
            obs, _ = env.reset(seed=info_row["seed"])
            for k, i in enumerate(idx):
                image = np.round(f["observation.image"][i].transpose(1, 2, 0) * 255).astype(np.uint8)
                np.testing.assert_array_equal(image, obs["pixels"], err_msg=f"episode {ep} frame {k} image")
                np.testing.assert_array_equal(f["observation.state"][i], obs["agent_pos"].astype(np.float32))
                obs, reward, terminated, truncated, info = env.step(f["action"][i])
                assert f["next.reward"][i] == np.float32(reward), (ep, k)
                assert bool(f["next.done"][i]) == terminated and bool(f["next.success"][i]) == (info["success"] > 0)
                assert (terminated or truncated) == (k == len(idx) - 1), f"episode {ep} ends at frame {k}?"
            successes.append(bool(f["next.done"][idx].any()))
    finally:
        env.close()
    assert successes == [r["success"] for r in record["per_episode"]] == [False, True, False, False]
    assert f["next.done"].sum() == 1  # done only on the success frame; a time-limit end is not done
    # the recorded actions are the noisy expert's, regenerated from the seed alone
    env = TrqamMetaworldEnv(SETTINGS)
    try:
        again = gen.rollout_expert(env, gen.expert_policy(SETTINGS.task), LEVELS["worse"], 10_010_000)
    finally:
        env.close()
    np.testing.assert_array_equal(again["action"], f["action"][f["episode_index"] == 2])


def test_generation_record(generated):
    root, record = generated
    stored = json.loads((root / "meta" / gen.GENERATION_FILE).read_text())
    assert stored == json.loads(json.dumps(record))
    assert record["config"]["settings"] == SETTINGS.to_dict()
    assert record["levels"] == {
        "better": {"noise": 0.1, "episodes": 2, "frames": 50 + 43, "successes": 1, "expert_success": 0.5},
        "worse": {"noise": 2.0, "episodes": 2, "frames": 100, "successes": 0, "expert_success": 0.0}}
    assert record["seconds"] > 0 and not (root / ".shards").exists()


def test_rerun_is_a_noop_and_other_arguments_are_refused(generated, tmp_path):
    root, record = generated
    data_file = next((root / "data").rglob("*.parquet"))
    mtime = data_file.stat().st_mtime_ns
    start = time.perf_counter()
    assert gen.generate_dataset(SETTINGS, root, **{**ARGS, "episodes_per_shard": 2}) == json.loads(
        json.dumps(record))
    assert time.perf_counter() - start < 1.0 and data_file.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different arguments.*episodes_per_level"):
        gen.generate_dataset(SETTINGS, root, **{**ARGS, "episodes_per_level": 3})
    with pytest.raises(ValueError, match="different arguments.*settings"):
        gen.generate_dataset(EnvSettings("reach-v3", image_size=32, episode_length=60), root, **ARGS)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        gen.generate_dataset(SETTINGS, tmp_path / "foreign", **ARGS)


def test_resume_after_crashes(generated, tmp_path, monkeypatch):
    """A crash while writing shard 2 (leaving a half-written temp folder), then a crash in the merge: the
    finished shards are kept, the temp folder is redone, and the result equals an uninterrupted run."""
    root = tmp_path / "ds"
    real_job, written = gen._write_shard_job, []

    def crash_at_2(job):
        if job[2].index == 2:
            partial = Path(job[3]) / "shard-002.tmp99999"
            (partial / "meta").mkdir(parents=True)
            (partial / "meta" / "info.json").write_text("{half")
            raise KeyboardInterrupt("killed")
        written.append(job[2].index)
        return real_job(job)

    monkeypatch.setattr(gen, "_write_shard_job", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_dataset(SETTINGS, root, **ARGS)
    assert written == [0, 1] and (root / ".shards" / "shard-002.tmp99999").exists()

    real_merge = gen._merge

    def merge_then_crash(*a):
        real_merge(*a)
        raise KeyboardInterrupt("killed before the generation file")

    monkeypatch.setattr(gen, "_merge", merge_then_crash)
    monkeypatch.setattr(gen, "_write_shard_job", lambda job: (written.append(job[2].index), real_job(job))[1])
    with pytest.raises(KeyboardInterrupt):
        gen.generate_dataset(SETTINGS, root, **ARGS)
    assert written == [0, 1, 2, 3] and not (root / "meta" / gen.GENERATION_FILE).exists()
    assert not list((root / ".shards").glob("*.tmp*"))

    monkeypatch.setattr(gen, "_merge", real_merge)
    record = gen.generate_dataset(SETTINGS, root, **ARGS)
    assert written == [0, 1, 2, 3]  # the merge was redone from the kept shards, no episode regenerated
    expected = generated[1]
    assert record["per_episode"] == expected["per_episode"] and record["levels"] == expected["levels"]
    a, b = _frames(_load(root)), _frames(_load(generated[0]))
    for key in ("action", "next.reward", "observation.state", "observation.image", "episode_index", "index"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_workers_give_the_same_dataset(generated, tmp_path):
    record = gen.generate_dataset(SETTINGS, tmp_path / "ds", workers=2, **ARGS)
    assert record["per_episode"] == generated[1]["per_episode"]
    a, b = _frames(_load(tmp_path / "ds")), _frames(_load(generated[0]))
    for key in ("action", "next.reward", "observation.image"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    shutil.rmtree(tmp_path / "ds")


def test_post_success_steps_record_goal_states_after_the_first_success() -> None:
    """``hold_steps`` frames follow the first success with the env not reset (their images are goal states, not
    a new episode's start); the frames before it are exactly the episode without holding."""
    from trqam_sdk.benchmarks.metaworld.env import EnvSettings, TrqamMetaworldEnv, expert_policy
    from trqam_sdk.benchmarks.metaworld.generate import rollout_expert

    env = TrqamMetaworldEnv(EnvSettings("reach-v3", image_size=32, episode_length=150))
    try:
        policy = expert_policy("reach-v3")
        plain = rollout_expert(env, policy, 0.1, 10_000_000)
        held = rollout_expert(env, policy, 0.1, 10_000_000, hold_steps=3)
    finally:
        env.close()
    n = len(plain["action"])
    assert plain["success"][-1] and not plain["success"][:-1].any()  # the noiseless-ish expert reaches the goal
    assert len(held["action"]) == n + 3
    for key in plain:
        np.testing.assert_array_equal(held[key][:n], plain[key])
    assert held["success"][n - 1:].all() and held["done"][n - 1:].all()
    # a reset would put the hand back at its start: held frames stay near the success frame's state
    start = plain["state"][0]
    assert np.abs(held["state"][n:] - held["state"][n - 1]).max() < np.abs(held["state"][n - 1] - start).max()
