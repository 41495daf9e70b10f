"""The built-in reward sources (``env``, ``sparse``), offline relabelling and the online env wrapper.

Offline and online use the same call on the same kind of input — the frame *after* each action — so a dataset
relabelled with a source and an env wrapped with it give the learner identical rewards and terminations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, overload

import gymnasium as gym
import numpy as np
import torch

from trqam_sdk.data.transitions import Transitions
from trqam_sdk.rewards.registry import IMAGE_KEY, RewardInputs, RewardSource, as_uint8_hwc, register_reward

REWARD, SUCCESS, DONE = "next.reward", "next.success", "next.done"
STATE_KEY = "observation.state"


@register_reward("env")
class EnvReward(RewardSource):
    """The env's own reward (times ``scale``); success is the env's success flag."""

    @dataclass(frozen=True)
    class Options:
        scale: float = 1.0

    def score(self, inputs: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        if inputs.env_reward is None:
            raise ValueError("reward source 'env' needs the env's reward, and none was given (a real robot has no "
                             "reward function: use 'classifier' or your own source)")
        if inputs.env_success is None:
            raise ValueError("reward source 'env' needs the env's success flag (what ends an episode); none given")
        return inputs.env_reward * self.options.scale, inputs.env_success


@register_reward("sparse")
class SparseReward(RewardSource):
    """``success_reward`` on success, ``failure_reward`` otherwise (OGBench's 0 / -1 by default; 1 / 0 also
    common)."""

    @dataclass(frozen=True)
    class Options:
        success_reward: float = 0.0
        failure_reward: float = -1.0

    def score(self, inputs: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        if inputs.env_success is None:
            raise ValueError("reward source 'sparse' needs the env's success flag, and none was given "
                             "(no success labels: train a classifier and use 'classifier')")
        return sparse_values(inputs.env_success, self.options.success_reward, self.options.failure_reward), \
            inputs.env_success


def sparse_values(success: np.ndarray, success_reward: float, failure_reward: float) -> np.ndarray:
    """The sparse reward of each success flag (shared by 'sparse' and 'classifier')."""
    return np.where(success, np.float32(success_reward), np.float32(failure_reward)).astype(np.float32)


# --------------------------------------------------------------------------------------------- offline frames

@dataclass
class DatasetFrames:
    """A LeRobotDataset's per-frame columns in memory (images uint8 (N, H, W, 3)), in dataset order."""

    images: dict[str, np.ndarray]
    state: np.ndarray | None
    reward: np.ndarray | None
    success: np.ndarray | None
    done: np.ndarray | None
    episode_index: np.ndarray

    def __len__(self) -> int:
        return len(self.episode_index)

    def next_index(self) -> np.ndarray:
        """Row of the frame after each action: i + 1 inside an episode; at an episode's last frame (its next
        observation is not stored by LeRobot) the frame itself stands in, as in the SDK's lerobot Transitions."""
        return next_frame_index(self.episode_index)


def next_frame_index(episode_index: np.ndarray) -> np.ndarray:
    """i + 1 where frame i + 1 belongs to the same episode, i at each episode's last frame."""
    ep = np.asarray(episode_index).reshape(-1)
    if len(ep) and len(np.unique(ep)) != int((np.diff(ep) != 0).sum()) + 1:
        raise ValueError("the frames' episodes are not contiguous: sort the frames by episode first")
    last = np.ones(len(ep), dtype=bool)
    last[:-1] = ep[1:] != ep[:-1]
    return np.arange(len(ep)) + (~last).astype(np.int64)


def load_frames(dataset_root: str | Path, repo_id: str, image_keys: list[str] | None = None,
                batch_size: int = 256) -> DatasetFrames:
    """Read a local LeRobotDataset's frames through LeRobot's own loader (images back to uint8)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return dataset_frames(LeRobotDataset(repo_id, root=str(dataset_root)), image_keys, batch_size)


def dataset_frames(ds: Any, image_keys: list[str] | None = None, batch_size: int = 256) -> DatasetFrames:
    """The frames of an open LeRobotDataset (every image feature unless ``image_keys``)."""
    dataset_root = ds.root
    feats = ds.meta.features
    keys = image_keys if image_keys is not None else [k for k, f in feats.items() if f["dtype"] == "image"]
    missing = [k for k in keys if k not in feats]
    if missing:
        raise KeyError(f"{dataset_root}: the dataset has no image feature(s) {missing}; features: {sorted(feats)}")
    columns = [c for c in (*keys, STATE_KEY, REWARD, SUCCESS, DONE, "episode_index") if c in feats]
    table = ds.hf_dataset.select_columns(columns)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for start in range(0, len(table), batch_size):
        batch = table[start:start + batch_size]
        for c in columns:
            vals = batch[c]
            arr = np.stack([np.asarray(v) for v in vals]) if isinstance(vals, list) else np.asarray(vals)
            parts[c].append(as_uint8_hwc(arr, c) if c in keys else arr)
    cols = {c: np.concatenate(v) if v else np.zeros((0,)) for c, v in parts.items()}

    def flat(c: str, dtype: Any) -> np.ndarray | None:
        return cols[c].reshape(len(cols["episode_index"]), -1)[:, 0].astype(dtype) if c in cols else None

    return DatasetFrames(images={k: cols[k] for k in keys}, state=cols.get(STATE_KEY),
                         reward=flat(REWARD, np.float32), success=flat(SUCCESS, bool), done=flat(DONE, bool),
                         episode_index=cols["episode_index"].reshape(-1).astype(np.int64))


# --------------------------------------------------------------------------------------------- relabelling

def frames_inputs(frames: DatasetFrames, rows: np.ndarray | None = None) -> RewardInputs:
    """RewardInputs for each frame's *next* observation (see :meth:`DatasetFrames.next_index`)."""
    rows = np.arange(len(frames)) if rows is None else rows
    nxt = frames.next_index()[rows]
    return RewardInputs(images={k: v[nxt] for k, v in frames.images.items()} or None,
                        state=None if frames.state is None else frames.state[nxt],
                        env_reward=None if frames.reward is None else frames.reward[rows],
                        env_success=None if frames.success is None else frames.success[rows])


def transitions_inputs(data: Transitions, rows: np.ndarray, success: np.ndarray | None) -> RewardInputs:
    """RewardInputs from Transitions' next_observations (uint8 images, ``observation.state``)."""
    nxt = data.next_observations
    idx = torch.as_tensor(rows)
    if isinstance(nxt, dict):
        images = {k: v[idx] for k, v in nxt.items() if k.startswith(IMAGE_KEY) and v.ndim == 4} or None
        state = nxt[STATE_KEY][idx] if STATE_KEY in nxt else None
    else:
        images, state = None, nxt[idx]
    return RewardInputs(images=images, state=state, env_reward=data.rewards[idx],
                        env_success=None if success is None else success[rows])


@overload
def relabel(data: DatasetFrames, source: RewardSource, *, success: None = None,
            batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def relabel(data: Transitions, source: RewardSource, *, success: Any = None,
            batch_size: int = 512) -> Transitions: ...


def relabel(data: DatasetFrames | Transitions, source: RewardSource, *, success: Any = None,
            batch_size: int = 512) -> Any:
    """Rewards and successes of ``source`` for offline data, scored on each action's *next* frame.

    ``DatasetFrames`` → ``(reward (N,), success (N,))``. ``Transitions`` → a copy with ``rewards`` and ``masks``
    (= 1 - success) replaced; the env success flag is ``success`` if given, else the data's own terminations
    (``masks == 0``, i.e. ``next.done``: on MetaWorld that is success).
    """
    n = len(data)
    if isinstance(data, Transitions):
        env_success = _bool_array(success, n) if success is not None else (data.masks < 0.5).numpy()
        make = lambda rows: transitions_inputs(data, rows, env_success)  # noqa: E731
    elif isinstance(data, DatasetFrames):
        if success is not None:
            raise ValueError("DatasetFrames carry their own success labels (next.success); do not pass success=")
        make = lambda rows: frames_inputs(data, rows)  # noqa: E731
    else:
        raise TypeError(f"relabel needs DatasetFrames or Transitions, got {type(data).__name__}")
    rewards, successes = np.zeros(n, np.float32), np.zeros(n, bool)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        rewards[rows], successes[rows] = source(make(rows))
    if isinstance(data, DatasetFrames):
        return rewards, successes
    return replace(data, rewards=torch.from_numpy(rewards), masks=torch.from_numpy(1.0 - successes.astype(np.float32)))


def relabel_transitions(data: Transitions, dataset: Any, source: RewardSource, batch_size: int = 512
                        ) -> Transitions:
    """``data`` (the SDK's Transitions of ``dataset``, row for row, e.g. from ``lerobot_transitions``) with the
    rewards and masks (= 1 - success) of ``source``, scored on the dataset's own next frames: raw uint8 images,
    ``next.reward`` and ``next.success`` — exactly what the online env hands the same source."""
    frames = dataset_frames(dataset)
    if len(frames) != len(data):
        raise ValueError(f"{dataset.root}: {len(frames)} frames but the Transitions have {len(data)} rows; "
                         "relabel the Transitions built from this dataset")
    ends = np.flatnonzero(data.terminals.numpy() > 0.5)
    if not np.array_equal(ends, np.flatnonzero(frames.next_index() == np.arange(len(frames)))):
        raise ValueError(f"{dataset.root}: the Transitions' episode ends differ from the dataset's episodes")
    reward, success = relabel(frames, source, batch_size=batch_size)
    return replace(data, rewards=torch.from_numpy(reward), masks=torch.from_numpy(1.0 - success.astype(np.float32)))


def _bool_array(value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"success must have one flag per transition ({n}), got shape {arr.shape}")
    return arr.astype(bool)


# --------------------------------------------------------------------------------------------- online wrapper

def env_step_inputs(obs: Any, reward: float | None, info: dict[str, Any]) -> RewardInputs:
    """RewardInputs (N = 1) from a raw env step: LeRobot's MetaWorld obs ``{"pixels", "agent_pos"}`` (``pixels``
    a dict of cameras for a multi-camera robot, named ``observation.images.<cam>`` as LeRobot's
    ``preprocess_observation`` does) or a flat state vector."""
    images, state = None, None
    if isinstance(obs, dict):
        pix = obs.get("pixels")
        if isinstance(pix, dict):
            images = {f"observation.images.{k}": np.asarray(v)[None] for k, v in pix.items()}
        elif pix is not None:
            images = {IMAGE_KEY: np.asarray(pix)[None]}
        if "agent_pos" in obs:
            state = np.asarray(obs["agent_pos"], dtype=np.float32)[None]
    else:
        state = np.asarray(obs, dtype=np.float32).reshape(1, -1)
    flag = info.get("is_success", info.get("success"))
    return RewardInputs(images=images, state=state, env_reward=None if reward is None else np.array([reward]),
                        env_success=None if flag is None else np.array([bool(flag)]))


class RewardWrapper(gym.Wrapper):
    """Replaces the env's reward and termination by ``source``'s, scored on the step's next observation.

    ``terminate_on_success`` (default True): the source's success terminates the episode (mask 0) — for a learned
    detector on a real robot it is the only signal. False: the source only gives rewards; episodes end by the
    env alone. Either way, when the inner env ends an episode the source did not (LeRobot's env terminates and
    resets itself on true success), the step is returned as *truncated*: the episode is over, but the learner
    keeps bootstrapping. ``info`` keeps the env's own ``success`` / ``is_success`` (evaluation and the online
    counters report true success) and adds ``env_success``, ``reward_success`` and ``reward_source``.
    """

    def __init__(self, env: Any, source: RewardSource, terminate_on_success: bool = True):
        super().__init__(env)
        self.source, self.terminate_on_success = source, terminate_on_success

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        inputs = env_step_inputs(obs, env_reward, info)
        reward, success = self.source(inputs)
        new_terminated = bool(success[0]) and self.terminate_on_success
        info["env_success"] = bool(inputs.env_success[0]) if inputs.env_success is not None else None
        info["reward_success"] = bool(success[0])
        info["reward_source"] = self.source.name
        return obs, float(reward[0]), new_terminated, bool(truncated or (terminated and not new_terminated)), info
