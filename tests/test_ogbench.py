"""Regenerated OGBench play data: official format, ogbench's loader and relabelling, chunk sampling, eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ogbench")

from trqam_sdk.benchmarks.ogbench.benchmark import OGBenchEnvFactory  # noqa: E402
from trqam_sdk.benchmarks.ogbench.generate import generate_dataset, load_ogbench, split_task_name  # noqa: E402
from trqam_sdk.data.transitions import ChunkSampler, Transitions  # noqa: E402
from trqam_sdk.rollout.evaluation import evaluate  # noqa: E402

TASK = "cube-single-play-singletask-task1-v0"
LENGTH = 40  # rows per regenerated episode (OGBench uses 1001; short keeps the test fast)
GOAL = np.array([0.425, -0.1, 0.02])  # cube-single task1 goal (ogbench CubeEnv.set_tasks)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Transitions, Transitions]:
    root = tmp_path_factory.mktemp("ogbench")
    d = generate_dataset(
        TASK,
        episodes=2,
        val_episodes=1,
        seed=3,
        dataset_dir=root,
        workers=1,
        episode_length=LENGTH,
        episodes_per_shard=1,
        progress=False,
    )
    env, train, val = load_ogbench(TASK, d)
    env.close()
    return d, train, val


def test_names() -> None:
    assert split_task_name(TASK) == (
        "cube-single-play-v0",
        "cube-single-v0",
        "cube-single-singletask-task1-v0",
    )
    with pytest.raises(ValueError):
        split_task_name("cube-single-play-v0")


def test_official_npz_format(dataset: tuple[Path, Transitions, Transitions]) -> None:
    d, _, _ = dataset
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        f = np.load(d / name)
        assert {"observations", "actions", "terminals", "qpos", "qvel"} <= set(f.files)
        n = f["actions"].shape[0]
        assert f["observations"].shape == (n, 28) and f["actions"].shape == (n, 5)
        assert f["qpos"].shape[0] == f["qvel"].shape[0] == n
        assert np.abs(f["actions"]).max() <= 1.0
        assert np.flatnonzero(f["terminals"]).tolist() == list(range(LENGTH - 1, n, LENGTH))


def test_loader_episode_ends_and_masks(dataset: tuple[Path, Transitions, Transitions]) -> None:
    d, train, val = dataset
    raw = np.load(d / "cube-single-play-v0.npz")
    # ogbench drops each episode's last row (no next state): LENGTH - 1 transitions per episode
    assert len(train) == 2 * (LENGTH - 1) and len(val) == LENGTH - 1
    assert torch.nonzero(train.terminals).flatten().tolist() == [LENGTH - 2, 2 * LENGTH - 3]
    keep = np.r_[0 : LENGTH - 1, LENGTH : 2 * LENGTH - 1]
    np.testing.assert_allclose(train.observations.numpy(), raw["observations"][keep])
    np.testing.assert_allclose(train.next_observations.numpy(), raw["observations"][keep + 1])
    # next_observations continue within the episode
    inner = torch.nonzero(train.terminals == 0).flatten()
    torch.testing.assert_close(train.next_observations[inner], train.observations[inner + 1])
    # ogbench's singletask relabelling: success = cube within 4 cm of the task goal, from qpos
    cube = raw["qpos"][keep, 14:17]
    success = np.linalg.norm(cube - GOAL, axis=-1) <= 0.04
    np.testing.assert_array_equal(train.masks.numpy(), 1.0 - success)
    np.testing.assert_array_equal(train.rewards.numpy(), success - 1.0)


def test_chunk_sampling_on_real_data(dataset: tuple[Path, Transitions, Transitions]) -> None:
    _, train, _ = dataset
    h, end = 5, LENGTH - 2  # last transition of the first episode
    sampler = ChunkSampler(train, h)
    idx = torch.tensor([0, end - h + 1, end - 2, end, end + 1])
    b = sampler.sample(idx)
    assert b["valid"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert b["valid_steps"][2].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    # the chunk's next state is inside the same episode: s_{t+H}, or the episode's final state when clamped
    torch.testing.assert_close(b["next_observations"][0], train.observations[h])
    torch.testing.assert_close(b["next_observations"][2], train.next_observations[end])
    torch.testing.assert_close(b["next_observations"][3], train.next_observations[end])
    torch.testing.assert_close(b["actions"][2, 2:], train.actions[end].expand(3, -1))
    torch.testing.assert_close(b["observations"][4], train.observations[end + 1])


def test_evaluate_trivial_policy() -> None:
    _, _, env_name = split_task_name(TASK)
    calls = []

    def zero_policy(obs: torch.Tensor) -> torch.Tensor:
        assert obs.shape == (1, 28) and obs.dtype == torch.float32
        calls.append(1)
        return torch.zeros(1, 5, 5)

    out = evaluate(zero_policy, OGBenchEnvFactory(env_name, {"max_episode_steps": 12}), episodes=2, seed=0, workers=1)
    assert out["success_rate"] == 0.0 and out["episodes"] == 2 and out["successes"] == 0  # the cube stays put
    assert out["ci95_low"] == 0.0 and out["ci95_high"] == pytest.approx(0.6576, abs=1e-4)  # Wilson 0/2
    assert out["mean_length"] == 12.0 and out["mean_return"] == -12.0
    assert len(calls) == 2 * 3  # ceil(12 / H) policy calls per episode, chunks executed open-loop
