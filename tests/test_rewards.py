"""Reward sources: values, masks, errors, the registry, the online wrapper, next-frame relabelling, and LeRobot's
reward classifier learning a synthetic success patch from the NEXT image (an off-by-one would leave it at chance:
the success labels are i.i.d., so only the image after the action predicts them)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from trqam_sdk.data.transitions import Transitions
from trqam_sdk.rewards import (
    DatasetFrames,
    RewardInputs,
    RewardSource,
    RewardWrapper,
    load_frames,
    make_reward,
    register_reward,
    relabel,
    relabel_transitions,
    reward_names,
    success_pairs,
    train_success_classifier,
)
from trqam_sdk.rewards.classifier import load_success_classifier, split_episodes

S, EPISODES, LENGTH, REPO = 32, 24, 20, "local/rewards-test"


def _marker(image: np.ndarray) -> np.ndarray:
    """The global frame index written into pixel (0, 0) of every synthetic image."""
    return image[:, 0, 0, 0].astype(np.int64) + 256 * image[:, 0, 0, 1].astype(np.int64)


def _write_dataset(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """LeRobotDataset whose image after a successful action carries a bright patch; success flags are i.i.d."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(seed)
    feats = {"observation.image": {"dtype": "image", "shape": (S, S, 3), "names": ["height", "width", "channel"]},
             "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
             "action": {"dtype": "float32", "shape": (4,), "names": None},
             "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
             "next.done": {"dtype": "bool", "shape": (1,), "names": None},
             "next.success": {"dtype": "bool", "shape": (1,), "names": None}}
    ds = LeRobotDataset.create(REPO, 10, feats, root=str(root), use_videos=False)
    successes, frame = [], 0
    for _ in range(EPISODES):
        succ = rng.random(LENGTH) < 0.25
        succ[-1] = succ[-2]  # the last frame's stand-in image then carries its own label (see success_pairs)
        for i in range(LENGTH):
            img = rng.integers(0, 120, (S, S, 3), dtype=np.uint8)
            if i > 0 and succ[i - 1]:  # the result of a successful action i - 1
                img[8:20, 10:22] = 250
            img[0, 0, :2] = (frame % 256, frame // 256)
            ds.add_frame({"observation.image": img, "observation.state": np.full(4, frame, np.float32),
                          "action": np.zeros(4, np.float32), "next.reward": np.array([frame * 0.5], np.float32),
                          "next.done": np.array([False]), "next.success": np.array([succ[i]]), "task": "t"})
            frame += 1
        successes.append(succ)
        ds.save_episode()
    ds.finalize()
    return {"success": np.concatenate(successes)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("rw") / "ds"
    return root, _write_dataset(root)["success"]


@pytest.fixture(scope="module")
def trained(dataset: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clf") / "classifier"
    metrics = train_success_classifier(dataset[0], REPO, out, steps=250, batch_size=32, held_out_episodes=0.25,
                                       seed=0, backbone="tiny")
    return out, metrics


def _inputs(success=None, reward=None, n: int = 3) -> RewardInputs:
    return RewardInputs(state=np.zeros((n, 4)), env_reward=reward, env_success=success)


def test_sparse_values_mask_and_env_passthrough() -> None:
    succ = np.array([True, False, True])
    r, s = make_reward("sparse")(_inputs(succ))
    assert r.dtype == np.float32 and r.tolist() == [0.0, -1.0, 0.0] and s.tolist() == succ.tolist()
    r, _ = make_reward("sparse", success_reward=1, failure_reward=0)(_inputs(succ))
    assert r.tolist() == [1.0, 0.0, 1.0]
    r, s = make_reward("env", scale=2.0)(_inputs(succ, np.array([0.5, -1.0, 3.0])))
    assert r.tolist() == [1.0, -2.0, 6.0] and s.tolist() == succ.tolist()
    # relabelled Transitions: success ends the episode (mask 0), nothing else changes
    n = 4
    data = Transitions(observations=torch.zeros(n, 2), actions=torch.zeros(n, 1), rewards=torch.arange(n) * 1.0,
                       masks=torch.ones(n), terminals=torch.tensor([0.0, 1, 0, 1]), next_observations=torch.zeros(n, 2))
    out = relabel(data, make_reward("sparse"), success=np.array([False, True, False, False]))
    assert out.rewards.tolist() == [-1.0, 0.0, -1.0, -1.0] and out.masks.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert out.terminals.tolist() == data.terminals.tolist()
    # without success=, the data's own terminations (mask 0) are the env's success flag
    data.masks[3] = 0.0
    assert relabel(data, make_reward("env")).masks.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_missing_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="env's reward"):
        make_reward("env")(_inputs(np.array([True, False, True])))
    with pytest.raises(ValueError, match="success flag"):
        make_reward("sparse")(_inputs(reward=np.zeros(3)))
    with pytest.raises(ValueError, match="disagree on N"):
        RewardInputs(state=np.zeros((2, 4)), env_reward=np.zeros(3))
    with pytest.raises(ValueError, match="normalised"):
        RewardInputs(images=np.full((1, 8, 8, 3), -0.5, np.float32))
    with pytest.raises(KeyError, match="observation.image"):
        RewardInputs(state=np.zeros((1, 2))).image()
    with pytest.raises(FileNotFoundError, match="not a trained success classifier"):
        make_reward("classifier", folder="/nonexistent")


@register_reward("test_brightness")
class Brightness(RewardSource):
    """A user source from outside the package: success when the image is bright."""

    @dataclass(frozen=True)
    class Options:
        level: float = 128.0
        bonus: float = 1.0

    def score(self, inputs: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        success = inputs.image().reshape(inputs.n, -1).mean(axis=1) > self.options.level
        return success * self.options.bonus, success


def test_registry_user_source_and_strict_options() -> None:
    assert {"env", "sparse", "classifier", "test_brightness"} <= set(reward_names())
    src = make_reward("test_brightness", level=10, bonus=3.0)
    r, s = src(RewardInputs(images=np.stack([np.zeros((4, 4, 3)), np.full((4, 4, 3), 50)]).astype(np.uint8)))
    assert r.tolist() == [0.0, 3.0] and s.tolist() == [False, True]
    assert src.describe() == {"name": "test_brightness", "level": 10.0, "bonus": 3.0}
    with pytest.raises(ValueError, match=r"unknown reward source 'nope'.*'sparse'"):
        make_reward("nope")
    with pytest.raises(ValueError, match=r"no option\(s\) \['scael'\].*\['scale'\]"):
        make_reward("env", scael=2.0)
    with pytest.raises(ValueError, match=r"needs option\(s\) \['folder'\]"):
        make_reward("classifier")
    with pytest.raises(TypeError, match="'scale' must be"):
        make_reward("env", scale="2")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("sparse")(Brightness)


class FakeEnv(gym.Env):
    """LeRobot-MetaWorld-like: {"pixels", "agent_pos"}; the scene brightens every step; true success (and
    termination, as LeRobot's env does) at step ``succeed_at``; reward 10 per step."""

    observation_space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
                                         "agent_pos": gym.spaces.Box(-1, 1, (4,))})
    action_space = gym.spaces.Box(-1, 1, (4,))

    def __init__(self, succeed_at: int):
        self.succeed_at, self.t = succeed_at, 0

    def _obs(self) -> dict:
        return {"pixels": np.full((4, 4, 3), 40 * self.t, np.uint8), "agent_pos": np.zeros(4)}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        success = self.t == self.succeed_at
        return self._obs(), 10.0, success, self.t >= 6, {"success": float(success), "is_success": success}


def _rollout(env: gym.Env) -> list[tuple]:
    env.reset(seed=0)
    out = []
    while True:
        _, r, term, trunc, info = env.step(np.zeros(4))
        out.append((r, term, trunc, info))
        if term or trunc:
            return out


def test_wrapper_replaces_reward_and_termination_keeps_true_success() -> None:
    steps = _rollout(RewardWrapper(FakeEnv(succeed_at=4), make_reward("sparse")))
    assert [(r, t, u) for r, t, u, _ in steps] == [(-1.0, False, False)] * 3 + [(0.0, True, False)]
    assert steps[-1][3]["env_success"] is True and steps[-1][3]["reward_source"] == "sparse"
    # a detector that fires early (brightness > 100 from step 3): terminates there; the env's success stays False
    steps = _rollout(RewardWrapper(FakeEnv(succeed_at=5), make_reward("test_brightness", level=100.0)))
    assert len(steps) == 3 and steps[-1][:3] == (1.0, True, False)
    info = steps[-1][3]
    assert info["success"] == 0.0 and info["env_success"] is False and info["reward_success"] is True
    # the env ends the episode on its own success but the source disagrees: truncated (bootstrap), not terminated
    steps = _rollout(RewardWrapper(FakeEnv(succeed_at=2), make_reward("test_brightness", level=200.0)))
    assert len(steps) == 2 and steps[-1][:3] == (0.0, False, True) and steps[-1][3]["success"] == 1.0
    # terminate_on_success=False: the source's success only rewards; the time limit ends the episode
    steps = _rollout(RewardWrapper(FakeEnv(succeed_at=9), make_reward("test_brightness", level=100.0),
                                   terminate_on_success=False))
    assert len(steps) == 6 and not any(t for _, t, _, _ in steps) and steps[-1][2]
    assert [r for r, *_ in steps] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


@register_reward("test_marker")
class Marker(RewardSource):
    """Reward = the frame index written in the scored image: shows which frame a source was given."""

    @dataclass(frozen=True)
    class Options:
        pass

    def score(self, inputs: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        return _marker(inputs.image()).astype(np.float32), np.zeros(inputs.n, bool)


def test_relabel_scores_the_next_frame(dataset: tuple[Path, np.ndarray]) -> None:
    frames = load_frames(dataset[0], REPO)
    n = EPISODES * LENGTH
    assert len(frames) == n and frames.images["observation.image"].dtype == np.uint8
    assert (_marker(frames.images["observation.image"]) == np.arange(n)).all()  # exact PNG round trip
    reward, _ = relabel(frames, make_reward("test_marker"), batch_size=37)
    expected = np.arange(n) + 1
    expected[LENGTH - 1::LENGTH] -= 1  # an episode's last frame: its own image stands in
    assert reward.tolist() == expected.tolist()
    r, s = relabel(frames, make_reward("env", scale=2.0))
    assert np.allclose(r, np.arange(n)) and s.tolist() == dataset[1].tolist()  # next.reward = frame / 2
    # Transitions with uint8 channel-first next images (the SDK's replay layout) give the same answer
    nxt = frames.next_index()
    img = torch.from_numpy(frames.images["observation.image"]).permute(0, 3, 1, 2)
    data = Transitions(observations={"observation.image": img}, actions=torch.zeros(n, 4),
                       rewards=torch.zeros(n), masks=torch.ones(n), terminals=torch.zeros(n),
                       next_observations={"observation.image": img[torch.from_numpy(nxt)]})
    assert relabel(data, make_reward("test_marker")).rewards.tolist() == expected.tolist()
    # relabel_transitions scores the dataset's own raw next frames, row for row with the Transitions
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(REPO, root=str(dataset[0]))
    data.terminals[LENGTH - 1::LENGTH] = 1.0
    out = relabel_transitions(data, ds, make_reward("sparse", success_reward=1.0, failure_reward=0.0))
    assert out.rewards.tolist() == dataset[1].astype(float).tolist()
    assert out.masks.tolist() == (1.0 - dataset[1]).tolist()
    assert relabel_transitions(data, ds, make_reward("test_marker")).rewards.tolist() == expected.tolist()
    with pytest.raises(ValueError, match="episode ends differ"):
        relabel_transitions(replace(data, terminals=torch.zeros(n)), ds, make_reward("env"))
    with pytest.raises(ValueError, match="not contiguous"):
        DatasetFrames(images={}, state=None, reward=None, success=None, done=None,
                      episode_index=np.array([0, 1, 0])).next_index()


def test_success_pairs_use_the_next_image() -> None:
    ep = np.array([0, 0, 0, 1, 1])
    success = np.array([False, False, True, False, False])  # episode 0 terminates on success at its last frame
    rows, labels = success_pairs(ep, success, "drop")
    assert rows.tolist() == [1, 2, 4] and labels.tolist() == [False, False, False]
    rows, labels = success_pairs(ep, success, "stand_in")
    # image 2 (the last stored view of episode 0) is labelled success once, not also "failure" for frame 1
    assert rows.tolist() == [1, 2, 4, 4] and labels.tolist() == [False, True, False, False]


def test_held_out_split_is_by_episode() -> None:
    eps = np.arange(20)
    positive = eps % 4 == 0
    train, held = split_episodes(eps, positive, 0.25, seed=3)
    assert len(held) == 5 and not set(train) & set(held) and set(train) | set(held) == set(eps)
    assert positive[held].any() and (~positive[held]).any() and positive[train].any()
    assert split_episodes(eps, positive, 0.25, seed=3)[1].tolist() == held.tolist()
    with pytest.raises(ValueError, match="held_out_episodes"):
        split_episodes(eps, positive, 20, seed=0)
    # a tiny dataset (one success episode, one failure): the success episode stays in training
    train, held = split_episodes(np.array([0, 1]), np.array([True, False]), 1, seed=0)
    assert train.tolist() == [0] and held.tolist() == [1]


def test_classifier_learns_success_from_the_next_image(trained: tuple[Path, dict],
                                                       dataset: tuple[Path, np.ndarray]) -> None:
    out, m = trained
    assert m["balanced_accuracy"] > 0.9, m
    assert m["held_out_episodes"] == 6 and m["held_out_frames"] == 6 * LENGTH and m["positives"] > 0
    frames = load_frames(dataset[0], REPO)
    held = np.isin(frames.episode_index, m["held_out_episode_ids"])
    train_ids = set(np.unique(frames.episode_index[~held]).tolist())
    assert not train_ids & set(m["held_out_episode_ids"]) and len(train_ids) == EPISODES - 6
    assert 0.15 < m["positive_fraction"] < 0.35
    # the encoder was trained (LeRobot's Classifier would keep it frozen): its weights left their random init
    from safetensors.torch import load_file

    init, final = load_file(out / "backbone" / "model.safetensors"), load_file(out / "model.safetensors")
    name = "embedder.embedder.convolution.weight"
    trained_w = final.get(f"encoder.{name}", final.get(f"encoders.observation_image.0.{name}"))
    assert trained_w is not None and not torch.allclose(init[name], trained_w)
    # reload two ways (LeRobot's own from_pretrained, and the reward source): identical probabilities
    from lerobot.rewards.classifier.modeling_classifier import Classifier

    plain = Classifier.from_pretrained(str(out)).eval()
    src = make_reward("classifier", folder=str(out), success_reward=1.0, failure_reward=0.0)
    _, pre, key = load_success_classifier(out)
    x = {key: torch.from_numpy(frames.images[key][:64]).permute(0, 3, 1, 2).float() / 255}
    with torch.no_grad():
        p_plain = plain.predict([pre(x)[key]]).probabilities.numpy()
    p_src = src.probabilities(RewardInputs(images=frames.images[key][:64]))
    assert np.array_equal(p_plain, p_src)
    # the reloaded model reproduces the stored held-out confusion counts exactly
    rows, labels = success_pairs(frames.episode_index, frames.success)
    keep = np.isin(frames.episode_index[rows], m["held_out_episode_ids"])
    pred = src.probabilities(RewardInputs(images=frames.images[key][rows[keep]])) > 0.5
    assert int((pred & labels[keep]).sum()) == m["tp"] and int((pred & ~labels[keep]).sum()) == m["fp"]
    # relabelled with the classifier on held-out frames, the reward follows the true success of the next frame
    r, s = relabel(frames, src)
    assert set(np.unique(r).tolist()) <= {0.0, 1.0} and np.array_equal(r == 1.0, s)
    assert (s[held] == frames.success[held]).mean() > 0.9


def test_classifier_folder_moves_and_resumes(trained: tuple[Path, dict], tmp_path: Path,
                                             dataset: tuple[Path, np.ndarray]) -> None:
    out, m = trained
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["model_name"] = "/gone/backbone"  # the original place is gone: the copy's own backbone is used
    (moved / "config.json").write_text(json.dumps(cfg))
    img = RewardInputs(images=np.random.default_rng(0).integers(0, 255, (5, S, S, 3), dtype=np.uint8))
    a = make_reward("classifier", folder=str(out)).probabilities(img)
    assert np.array_equal(a, make_reward("classifier", folder=str(moved)).probabilities(img))
    # a finished folder with the same arguments returns its metrics; other arguments are refused
    again = train_success_classifier(dataset[0], REPO, out, steps=250, batch_size=32, held_out_episodes=0.25,
                                     seed=0, backbone="tiny")
    assert again["seconds"] == m["seconds"]
    with pytest.raises(FileExistsError, match="other arguments"):
        train_success_classifier(dataset[0], REPO, out, steps=10, batch_size=32, held_out_episodes=0.25, seed=0,
                                 backbone="tiny")
