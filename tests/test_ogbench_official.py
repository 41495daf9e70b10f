"""Official-format OGBench files: regeneration of every manipulation domain through ogbench's own loader,
multi-file releases, sparse rewards, clear errors; and the offline → online replay buffer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ogbench")

from trqam_sdk import cli  # noqa: E402
from trqam_sdk.benchmarks.ogbench.benchmark import OGBenchEnvFactory  # noqa: E402
from trqam_sdk.benchmarks.ogbench.generate import collect_episodes, generate_dataset  # noqa: E402
from trqam_sdk.benchmarks.ogbench.official import load_singletask, official_files, write_official  # noqa: E402
from trqam_sdk.data.replay import ReplayBuffer  # noqa: E402
from trqam_sdk.data.transitions import Transitions  # noqa: E402
from trqam_sdk.rollout.online import OnlineCollector  # noqa: E402

LENGTH = 25


@pytest.mark.parametrize("domain,buttons", [("puzzle-3x3", 9), ("scene", 2)])
def test_regenerated_loads_through_ogbench(domain: str, buttons: int, tmp_path: Path) -> None:
    """`trqam data` writes files that ogbench.make_env_and_datasets reads and relabels itself."""
    import ogbench

    argv = ["data", "--domain", domain, "--episodes", "2", "--val-episodes", "1", "--episode-length", str(LENGTH),
            "--workers", "1", "--episodes-per-shard", "2", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    folder = tmp_path / f"{domain}-play-v0-ep2-len{LENGTH}-seed0"
    raw = np.load(folder / f"{domain}-play-v0.npz")
    assert raw["button_states"].shape == (2 * LENGTH, buttons)
    env, train, val = ogbench.make_env_and_datasets(f"{domain}-play-singletask-task2-v0", dataset_dir=str(folder),
                                                    compact_dataset=False, add_info=True)
    env.close()
    assert len(train["observations"]) == 2 * (LENGTH - 1) and len(val["actions"]) == LENGTH - 1
    assert set(np.unique(train["masks"])) <= {0.0, 1.0} and (train["rewards"] <= 0).all()
    np.testing.assert_array_equal(train["button_states"], raw["button_states"][np.r_[0:24, 25:49]])


def test_sparse_reward_scene(tmp_path: Path) -> None:
    """sparse: -1 unless every subtask is solved; default: ogbench's #solved - #subtasks; same masks."""
    folder = generate_dataset("scene-play-singletask-task1-v0", episodes=1, val_episodes=1, dataset_dir=tmp_path,
                              workers=1, episode_length=60, episodes_per_shard=1, progress=False)
    _, dense, _ = load_singletask("scene", 1, "scene-play-v0", folder)
    env, sparse, val = load_singletask("scene", 1, "scene-play-v0", folder, reward="sparse")
    env.close()
    torch.testing.assert_close(sparse.masks, dense.masks)
    torch.testing.assert_close(sparse.rewards, -sparse.masks)
    assert val is not None and len(val) == 59
    assert dense.rewards.min() < -1  # scene task1 has several subtasks: dense rewards go below -1
    with pytest.raises(ValueError, match="reward must be"):
        load_singletask("scene", 1, "scene-play-v0", folder, reward="dense")  # type: ignore[arg-type]


def test_multi_file_release(tmp_path: Path) -> None:
    """The first N files sorted by name, whole episodes per file, concatenated; val files kept apart."""
    release = tmp_path / "cube-single-play-100m-v0"
    four = collect_episodes("cube-single-v0", 4, seed=0, episode_length=LENGTH)  # one env, 4 episodes
    ep = [{k: v[i * LENGTH:(i + 1) * LENGTH] for k, v in four.items() if k != "clipped"} for i in range(4)]
    parts = dict(enumerate(ep[:3]))
    for i in (2, 0, 1):  # written out of order: selection must sort by name
        write_official(release / f"cube-single-play-100m-v0-{i:05d}.npz", parts[i])
    write_official(release / "cube-single-play-100m-v0-val.npz", ep[3])
    train_files, val_files = official_files("cube-single-play-100m-v0", tmp_path, num_files=2)
    assert [f.name[-9:] for f in train_files] == ["00000.npz", "00001.npz"] and len(val_files) == 1
    env, train, val = load_singletask("cube-single", 1, "cube-single-play-100m-v0", tmp_path, num_files=2)
    env.close()
    want = np.concatenate([parts[i]["observations"][: LENGTH - 1] for i in (0, 1)])
    np.testing.assert_allclose(train.observations.numpy(), want)
    assert torch.nonzero(train.terminals).flatten().tolist() == [LENGTH - 2, 2 * LENGTH - 3]
    assert val is not None and len(val) == LENGTH - 1
    with pytest.raises(ValueError, match="num_files=4"):
        official_files("cube-single-play-100m-v0", tmp_path, num_files=4)
    with pytest.raises(FileNotFoundError, match="no OGBench files for 'scene-play-v0'"):
        official_files("scene-play-v0", tmp_path)
    bad = dict(parts[0])
    del bad["qpos"]
    np.savez(tmp_path / "cube-single-play-v0.npz", **bad)
    with pytest.raises(KeyError, match=r"lacks \['qpos'\]"):
        load_singletask("cube-single", 1, "cube-single-play-v0", tmp_path)
    with pytest.raises(KeyError, match="cannot write"):
        write_official(tmp_path / "x.npz", bad)


def test_random_navigate_file_official_format(tmp_path: Path) -> None:
    """Locomaze: a random-policy file (not expert data) in the official key layout loads and relabels."""
    folder = generate_dataset("antmaze-large-navigate-singletask-task1-v0", episodes=1, val_episodes=1,
                              dataset_dir=tmp_path, workers=1, episode_length=LENGTH, progress=False, policy="random")
    raw = np.load(folder / "antmaze-large-navigate-v0.npz")
    assert raw["observations"].shape == (LENGTH, 29) and raw["actions"].shape == (LENGTH, 8)
    assert raw["qpos"].shape == (LENGTH, 15)
    assert raw["qpos"][0, :2].tolist() == pytest.approx(raw["observations"][0, :2])  # the ant's xy
    env, train, _ = load_singletask("antmaze-large", 1, "antmaze-large-navigate-v0", folder)
    env.close()
    assert len(train) == LENGTH - 1 and (train.masks == 1).all()  # a random walk does not reach the goal
    with pytest.raises(ValueError, match="oracle regeneration covers"):
        generate_dataset("antmaze-large-navigate-singletask-task1-v0", episodes=1, dataset_dir=tmp_path)


def _offline(n: int = 8) -> Transitions:
    ar = np.arange(n, dtype=np.float32)
    term = np.zeros(n, np.float32)
    term[[3, n - 1]] = 1
    return Transitions.from_numpy({"observations": ar[:, None], "actions": np.zeros((n, 1), np.float32),
                                   "rewards": -np.ones(n, np.float32), "masks": np.ones(n, np.float32),
                                   "terminals": term, "next_observations": ar[:, None] + 1})


def test_replay_buffer_chunks_and_mixing() -> None:
    buf = ReplayBuffer(_offline(), horizon=3, capacity=6)
    assert len(buf) == 8 and buf.online_size == 0
    for i in range(3):  # an online episode in progress: rows 8, 9, 10
        buf.add([100.0 + i], [0.5], -1.0, 1.0, False, [101.0 + i])
    b = buf.sample(torch.tensor([2, 8, 9]))
    assert b["valid"].tolist() == [0.0, 1.0, 0.0]  # row 2's chunk crosses an offline end; row 9 reaches the present
    assert b["valid_steps"][2].tolist() == [1.0, 1.0, 0.0]
    buf.add([103.0], [0.5], 0.0, 0.0, True, [104.0])  # success: terminal and mask 0
    buf.add([200.0], [0.1], -1.0, 1.0, False, [201.0])  # a new episode
    b = buf.sample(torch.tensor([10, 11, 12]))
    assert b["valid"].tolist() == [0.0, 0.0, 0.0] and b["masks"].tolist() == [0.0, 0.0, 1.0]
    assert b["rewards"][0].tolist() == [-1.0, 0.0, 0.0]  # steps after the episode's end are masked out
    assert b["observations"][:, 0].tolist() == [102.0, 103.0, 200.0]
    torch.testing.assert_close(buf.sample(torch.tensor([0]))["actions"], torch.zeros(1, 3, 1))  # offline intact
    buf.add([1.0], [0.0], 0, 1, False, [2.0])
    with pytest.raises(IndexError, match="full"):
        buf.add([1.0], [0.0], 0, 1, False, [2.0])
    with pytest.raises(ValueError, match="shapes"):
        ReplayBuffer(_offline(), 3, 2).add([1.0, 2.0], [0.0], 0, 1, False, [2.0])


def test_online_collector_uniform_mixing_and_open_loop() -> None:
    """Chunks run open-loop (one policy call per H steps); the Finetuner's uniform draw covers the union."""
    from trqam_sdk.training.finetuner import step_generator

    env = OGBenchEnvFactory("cube-single-singletask-task1-v0", {"max_episode_steps": 7}, sparse=True)()
    calls = []

    def act(obs: torch.Tensor) -> torch.Tensor:
        calls.append(obs)
        return torch.full((1, 3, 5), 0.3)

    buf = ReplayBuffer(_offline_like(env), horizon=3, capacity=9)
    col = OnlineCollector(env, act, buf, seed=1)
    for step in range(9):
        col.step(step)
    env.close()
    assert buf.online_size == 9 and col.episodes == 1 and len(calls) == 3 + 1  # 7 steps: chunks of 3, 3, 1
    online = slice(buf.offline_size, buf.size)
    assert set(buf.data.rewards[online].tolist()) <= {-1.0, 0.0}  # sparse: success - 1
    # the time limit ends the episode (terminal) but is no termination: masks stay 1 (bootstrap)
    assert buf.data.terminals[buf.offline_size + 6] == 1 and (buf.data.masks[online] == 1).all()
    # the Finetuner draws idx ~ randint(len(sampler)): uniform over offline + online rows
    draws = torch.cat([torch.randint(len(buf), (256,), generator=step_generator(0, s)) for s in range(40)])
    frac = (draws >= buf.offline_size).float().mean().item()
    assert abs(frac - 9 / len(buf)) < 0.02


def _offline_like(env: object) -> Transitions:
    n, obs_dim = 10, env.observation_space.shape[0]  # type: ignore[attr-defined]
    term = np.zeros(n, np.float32)
    term[-1] = 1
    return Transitions.from_numpy({"observations": np.zeros((n, obs_dim), np.float32),
                                   "actions": np.zeros((n, 5), np.float32), "rewards": -np.ones(n, np.float32),
                                   "masks": np.ones(n, np.float32), "terminals": term,
                                   "next_observations": np.zeros((n, obs_dim), np.float32)})


def test_video_egl(tmp_path: Path) -> None:
    """Optional evaluation video: one episode rendered with MUJOCO_GL=egl (a fresh process: GL is chosen at import)."""
    import os
    import subprocess
    import sys

    code = ("import torch\nfrom trqam_sdk.rollout.video import record_episode\n"
            "from trqam_sdk.benchmarks.ogbench.benchmark import OGBenchEnvFactory\n"
            "f = OGBenchEnvFactory('cube-single-singletask-task1-v0', {'max_episode_steps': 3, "
            "'render_mode': 'rgb_array'})\n"
            f"record_episode(lambda o: torch.zeros(1, 5, 5), f, r'{tmp_path}/v.mp4', 0)\n")
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4  # the reset frame + 3 steps (one chunk, cut by the limit)
