"""Transition data validated by meaning (issue 12, item 4): every bad input is a clear error naming the array,
key or file; valid data samples exactly as before; the caller's arrays are never touched."""

from __future__ import annotations

import dataclasses
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trqam_sdk.data.files import load_transitions
from trqam_sdk.data.replay import ReplayBuffer
from trqam_sdk.data.transitions import ChunkSampler, Transitions
from trqam_sdk.integrations.lerobot.data import lerobot_transitions
from trqam_sdk.testing.toy import random_episodes

N, LENGTH = 18, 6  # 3 episodes of 6 steps
STATE, IMG = "observation.state", "observation.images.top"


def _arrays() -> dict[str, np.ndarray]:
    return random_episodes(num_episodes=3, length=LENGTH, obs_dim=3, action_dim=2)


def _set(key: str, row: int, value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(a: dict[str, np.ndarray]) -> None:
        a[key] = a[key].copy()
        a[key].reshape(N, -1)[row, 0] = value
    return edit


def _put(key: str, make: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def edit(a: dict[str, Any]) -> None:
        a[key] = make(a)
    return edit


# (id, edit of valid arrays, error type, message pattern)
FROM_NUMPY = [
    ("masks-2", _put("masks", lambda a: a["masks"] * 2), ValueError,
     r"masks: 18 rows are neither 0 nor 1 \(first at row 0 = 2\)"),
    ("masks-negative", _set("masks", 4, -1), ValueError, r"masks: 1 rows are neither 0 nor 1 \(first at row 4 = -1\)"),
    ("terminals-0.4", _set("terminals", 2, 0.4), ValueError,
     r"terminals: 1 rows are neither 0 nor 1 \(first at row 2 = 0.4\)"),
    ("terminals-2", _set("terminals", 5, 2), ValueError, r"terminals: 1 rows .*row 5 = 2\)"),
    ("masks-nan", _set("masks", 3, np.nan), ValueError, r"masks: 1 rows contain NaN/inf \(first at row 3\)"),
    ("terminals-inf", _set("terminals", 1, np.inf), ValueError,
     r"terminals: 1 rows contain NaN/inf \(first at row 1\)"),
    ("rewards-nan", _set("rewards", 7, np.nan), ValueError, r"rewards: 1 rows contain NaN/inf \(first at row 7\)"),
    ("rewards-inf", _set("rewards", 0, -np.inf), ValueError, r"rewards: 1 rows contain NaN/inf \(first at row 0\)"),
    ("rewards-N1-nan", lambda a: (_put("rewards", lambda a: a["rewards"][:, None].copy())(a),
                                  _set("rewards", 9, np.nan)(a)), ValueError,
     r"rewards: 1 rows contain NaN/inf \(first at row 9\)"),
    ("masks-N1-2", _put("masks", lambda a: a["masks"][:, None] * 2), ValueError, r"masks: 18 rows are neither 0 nor 1"),
    ("rewards-N2", _put("rewards", lambda a: np.stack([a["rewards"]] * 2, 1)), ValueError,
     r"rewards must have shape \(N,\) or \(N, 1\).*got \(18, 2\)"),
    ("masks-N1x1", _put("masks", lambda a: a["masks"][:, None, None]), ValueError,
     r"masks must have shape .*\(18, 1, 1\)"),
    ("terminals-scalar", _put("terminals", lambda a: np.float32(1)), ValueError,
     r"terminals must have shape .*got \(\)"),
    ("rewards-short", _put("rewards", lambda a: a["rewards"][:-1]), ValueError,
     r"rewards has 17 rows, actions has 18"),
    ("masks-long", _put("masks", lambda a: np.ones(N + 2, np.float32)), ValueError,
     r"masks has 20 rows, actions has 18"),
    ("observations-short", _put("observations", lambda a: a["observations"][1:]), ValueError,
     r"observations has 17 rows, actions has 18"),
    ("next_observations-width", _put("next_observations", lambda a: a["next_observations"][:, :2]), ValueError,
     r"next_observations rows are float32 \(2,\) but observations rows are float32 \(3,\)"),
    ("next_observations-short", _put("next_observations", lambda a: a["next_observations"][:-3]), ValueError,
     r"next_observations has 15 rows, actions has 18"),
    ("next_observations-1d", _put("next_observations", lambda a: a["next_observations"][:, 0]), ValueError,
     r"next_observations must be 2-D \(N, obs_dim\), got shape \(18,\)"),
    ("next_observations-nan", _set("next_observations", 11, np.nan), ValueError,
     r"next_observations: 1 rows contain NaN/inf \(first at row 11\)"),
    ("next_observations-inf", _set("next_observations", 17, np.inf), ValueError,
     r"next_observations: 1 rows contain NaN/inf \(first at row 17\)"),
    ("observations-nan", _set("observations", 5, np.nan), ValueError,
     r"observations: 1 rows contain NaN/inf \(first at row 5\)"),
    ("observations-3d", _put("observations", lambda a: a["observations"][:, :, None]), ValueError,
     r"observations must be 2-D \(N, obs_dim\), got shape \(18, 3, 1\)"),
    ("actions-nan", _set("actions", 8, np.nan), ValueError, r"actions: 1 rows contain NaN/inf \(first at row 8\)"),
    ("actions-out-of-box", _set("actions", 2, 3.0), ValueError, r"actions reach \|a\| = 3 > 1.*action box"),
    ("actions-1d", _put("actions", lambda a: a["actions"][:, 0]), ValueError,
     r"actions must be 2-D \(N, action_dim\), got shape \(18,\)"),
    ("empty", lambda a: a.update({k: v[:0] for k, v in a.items()}), ValueError, r"transition data is empty \(0 rows\)"),
    ("missing-masks", lambda a: a.pop("masks"), KeyError, r"transition data lacks \['masks'\]"),
    ("rewards-strings", _put("rewards", lambda a: np.array(["x"] * N)), TypeError, r"rewards: not a numeric array"),
]


@pytest.mark.parametrize(("edit", "error", "pattern"), [c[1:] for c in FROM_NUMPY], ids=[c[0] for c in FROM_NUMPY])
def test_from_numpy_refuses(edit: Callable, error: type[Exception], pattern: str) -> None:
    arrays = _arrays()
    edit(arrays)
    with pytest.raises(error, match=pattern):
        Transitions.from_numpy(arrays)


def _dict_data(n: int = 6, **changes: Any) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)

    def obs() -> dict[str, torch.Tensor]:
        return {IMG: torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8),
                STATE: torch.randn(n, 3, generator=g)}

    terminals = torch.zeros(n)
    terminals[[2, n - 1] if n else []] = 1
    fields = {"observations": obs(), "actions": torch.rand(n, 2, generator=g) * 2 - 1,
              "rewards": torch.randn(n, generator=g), "masks": torch.ones(n), "terminals": terminals,
              "next_observations": obs()}
    fields.update(changes)
    return fields


def _dict_edit(field: str, key: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    def edit(f: dict) -> None:
        f[field] = {**f[field], key: fn(f[field][key])}
    return edit


def _nan_row(t: torch.Tensor, row: int = 4, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t[row, 0] = value
    return t


DIRECT = [
    ("dict-state-nan", _dict_edit("observations", STATE, _nan_row), ValueError,
     r"observations\['observation.state'\]: 1 rows contain NaN/inf \(first at row 4\)"),
    ("dict-next-state-inf", _dict_edit("next_observations", STATE, lambda t: _nan_row(t, 1, float("inf"))), ValueError,
     r"next_observations\['observation.state'\]: 1 rows contain NaN/inf \(first at row 1\)"),
    ("dict-next-missing-key", _put("next_observations", lambda f: {IMG: f["next_observations"][IMG]}), ValueError,
     r"next_observations has keys \['observation.images.top'\] but observations has .*missing \['observation.state'\]"),
    ("dict-next-is-tensor", _put("next_observations", lambda f: f["next_observations"][STATE]), ValueError,
     r"next_observations is a tensor but observations is a dict"),
    ("dict-entry-rows", _dict_edit("observations", IMG, lambda t: t[:5]), ValueError,
     r"observations\['observation.images.top'\] has 5 rows, actions has 6"),
    ("dict-next-entry-rows", _dict_edit("next_observations", STATE, lambda t: torch.cat([t, t])), ValueError,
     r"next_observations\['observation.state'\] has 12 rows, actions has 6"),
    ("dict-next-entry-shape", _dict_edit("next_observations", STATE, lambda t: t[:, :2]), ValueError,
     r"next_observations\['observation.state'\] rows are float32 \(2,\) but observations rows are float32 \(3,\)"),
    ("dict-next-image-dtype", _dict_edit("next_observations", IMG, lambda t: t.float() / 255), ValueError,
     r"next_observations\['observation.images.top'\] rows are float32 \(3, 4, 4\) but observations rows are uint8"),
    ("dict-entry-numpy", _dict_edit("observations", STATE, lambda t: t.numpy()), TypeError,
     r"observations\['observation.state'\] must be a torch.Tensor, got ndarray"),
    ("direct-masks-numpy", _put("masks", lambda f: np.ones(6)), TypeError,
     r"masks must be a torch.Tensor, got ndarray"),
    ("direct-masks-0.5", _put("masks", lambda f: torch.full((6,), 0.5)), ValueError,
     r"masks: 6 rows are neither 0 nor 1 \(first at row 0 = 0.5\)"),
    ("direct-rewards-N1-inf", _put("rewards", lambda f: _nan_row(f["rewards"][:, None], 3, float("inf"))), ValueError,
     r"rewards: 1 rows contain NaN/inf \(first at row 3\)"),
    ("direct-empty", lambda f: f.update(_dict_data(0)), ValueError, r"transition data is empty"),
]


@pytest.mark.parametrize(("edit", "error", "pattern"), [c[1:] for c in DIRECT], ids=[c[0] for c in DIRECT])
def test_direct_construction_refuses(edit: Callable, error: type[Exception], pattern: str) -> None:
    """The constructor the LeRobot loader and the replay buffer use validates too (``__post_init__``)."""
    fields = _dict_data()
    edit(fields)
    with pytest.raises(error, match=pattern):
        Transitions(**fields)


def test_replace_is_validated() -> None:
    """``dataclasses.replace`` (how reward relabelling makes its copy) runs the same checks."""
    data = Transitions(**_dict_data())
    with pytest.raises(ValueError, match=r"masks: 1 rows are neither 0 nor 1 \(first at row 0 = 3\)"):
        dataclasses.replace(data, masks=torch.tensor([3.0, 1, 1, 1, 1, 1]))


class _Frames:
    """A stand-in LeRobotDataset (frames as dicts) for :func:`lerobot_transitions`."""
    def __init__(self, bad: str | None) -> None:
        self.rows = [{STATE: torch.full((3,), float(i)), "action": torch.zeros(2),
                      "next.reward": torch.tensor([0.5]), "next.done": torch.tensor([i == 3]),
                      "episode_index": torch.tensor(i // 4), "task": "t"}
                     for i in range(8)]
        if bad == "reward":
            self.rows[5]["next.reward"] = torch.tensor([float("nan")])
        elif bad == "state":
            self.rows[6][STATE] = torch.tensor([0.0, float("inf"), 0.0])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


@pytest.mark.parametrize(("bad", "pattern"), [("reward", r"rewards: 1 rows contain NaN/inf \(first at row 5\)"),
                                              ("state", r"observations\['observation.state'\]: 1 rows .*row 6\)")],
                         ids=["lerobot-reward-nan", "lerobot-state-inf"])
def test_lerobot_loader_refuses(bad: str, pattern: str) -> None:
    identity = dict  # a pre-processor that passes every input through
    with pytest.raises(ValueError, match=pattern):
        lerobot_transitions(_Frames(bad), identity, batch_size=3, uint8_images=False)


def test_lerobot_loader_valid() -> None:
    data = lerobot_transitions(_Frames(None), dict, batch_size=3, uint8_images=False)
    assert data.terminals.tolist() == [0, 0, 0, 1, 0, 0, 0, 1] and data.masks.tolist() == [1, 1, 1, 0, 1, 1, 1, 1]


# -- files ----------------------------------------------------------------------------------------------------------
class _Planted:
    """Unpickling this would create the marker file: proof that a pickled member is never loaded."""
    marker: Path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


RAW = {"csv": b"observations,actions\n0.1,0.2\n", "empty": b"", "bad-zip": b"PK\x03\x04" + b"\x00garbage" * 20}
NPZ = {"missing-key": lambda a: {k: v for k, v in a.items() if k not in ("masks", "terminals")},
       "masks-2": lambda a: {**a, "masks": a["masks"] * 2},
       "rewards-nan": lambda a: {**a, "rewards": np.where(np.arange(N) == 3, np.nan, a["rewards"])},
       "next-observations-shape": lambda a: {**a, "next_observations": a["next_observations"][:, :1]},
       "valid": lambda a: {**a, "extra": np.zeros(3)}}


def _file_case(kind: str, tmp: Path) -> Path:
    """The file of each bad kind ("missing": none is written)."""
    p, a = tmp / ("data.csv" if kind == "csv" else "data.npy" if kind == "npy" else "data.npz"), _arrays()
    if kind in RAW:
        p.write_bytes(RAW[kind])
    elif kind in NPZ:
        np.savez(p, **NPZ[kind](a))
    elif kind == "directory":
        p.mkdir()
    elif kind == "npy":
        np.save(p, a["observations"])
    elif kind == "truncated":
        np.savez(p, **a)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "not-npy-member":
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("observations.npy", "hello")
    elif kind == "pickled":
        _Planted.marker = tmp / "unpickled"
        obj = np.empty(N, dtype=object)
        obj[:] = [_Planted()] * N
        np.savez(p, **{**a, "rewards": obj}, allow_pickle=True)
    return p


FILES = [
    ("missing", FileNotFoundError, r"transitions file not found: {path}"),
    ("directory", ValueError, r"{path}: is a directory"),
    ("csv", ValueError,
     r"{path}: not a readable .npz of transitions: not a zip archive \(it starts with b'observ'\)"),
    ("empty", ValueError, r"{path}: not a readable .npz of transitions: an empty file"),
    ("npy", ValueError, r"{path}: not a readable .npz of transitions: a single .npy array"),
    ("bad-zip", ValueError, r"{path}: not a readable .npz of transitions"),
    ("truncated", ValueError, r"{path}: not a readable .npz of transitions"),
    ("not-npy-member", ValueError, r"{path}: member 'observations.npy' is not a .npy array"),
    ("pickled", ValueError,
     r"{path}: \['rewards'\] hold Python objects \(object dtype, pickled\): refused, never loaded"),
    ("missing-key", KeyError, r"{path}: lacks \['masks', 'terminals'\]"),
    ("masks-2", ValueError, r"{path}: masks: 18 rows are neither 0 nor 1"),
    ("rewards-nan", ValueError, r"{path}: rewards: 1 rows contain NaN/inf \(first at row 3\)"),
    ("next-observations-shape", ValueError, r"{path}: next_observations rows are float32 \(1,\)"),
]


@pytest.mark.parametrize(("kind", "error", "pattern"), FILES, ids=[f"file-{c[0]}" for c in FILES])
def test_load_transitions_refuses(kind: str, error: type[Exception], pattern: str, tmp_path: Path) -> None:
    path = _file_case(kind, tmp_path)
    with pytest.raises(error, match=pattern.format(path=re.escape(str(path)))) as info:
        load_transitions(path)
    assert "allow_pickle" not in str(info.value)
    assert not (tmp_path / "unpickled").exists()


def test_planted_pickle_would_execute(tmp_path: Path) -> None:
    """The pickled case above is a real threat: numpy with pickles allowed runs its payload."""
    path = _file_case("pickled", tmp_path)
    with np.load(path, allow_pickle=True) as f:
        f["rewards"]
    assert (tmp_path / "unpickled").exists()


def test_load_transitions_valid(tmp_path: Path) -> None:
    data = load_transitions(_file_case("valid", tmp_path))
    assert len(data) == N and torch.equal(data.observations, torch.from_numpy(_arrays()["observations"]))


# -- chunk sampler --------------------------------------------------------------------------------------------------
def _episodes(lengths: list[int]) -> Transitions:
    n = sum(lengths)
    terminals = np.zeros(n, np.float32)
    terminals[np.cumsum(lengths) - 1] = 1
    return Transitions.from_numpy({"observations": np.arange(n, dtype=np.float32)[:, None],
                                   "actions": np.zeros((n, 1), np.float32), "rewards": np.arange(n, dtype=np.float32),
                                   "masks": np.ones(n, np.float32), "terminals": terminals,
                                   "next_observations": np.arange(1, n + 1, dtype=np.float32)[:, None]})


SAMPLER = [
    ("episode-all-short", [3, 4, 2], 5, "episode", r"H = 5: 3 episodes, the longest has 4 steps \(9 rows\): every "
     r"episode is shorter than the chunk, so every chunk would be invalid and the critic would never train"),
    ("reference-all-cross", [3, 3, 3, 3], 4, "reference", r"H = 4: 4 episodes, the longest has 3 steps \(12 rows\): "
     r"every window of H rows crosses an episode end .*the critic would never train"),
    ("horizon-0", [3, 3], 0, "episode", r"chunk horizon H must be >= 1, got 0"),
    ("reference-too-few-rows", [3], 5, "reference", r"reference chunk sampling needs at least H = 5 rows, got 3"),
]


@pytest.mark.parametrize(("lengths", "horizon", "mode", "pattern"), [c[1:] for c in SAMPLER],
                         ids=[c[0] for c in SAMPLER])
def test_chunk_sampler_refuses(lengths: list[int], horizon: int, mode: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ChunkSampler(_episodes(lengths), horizon, mode=mode)


def test_chunk_sampler_warns_when_few_chunks_fit() -> None:
    """One 5-step episode among 100 of 4 steps: 1 of 405 starts gives a complete 5-chunk."""
    with pytest.warns(UserWarning, match=r"only 1 of 405 chunk starts .* H = 5: 101 episodes, the longest has 5"):
        ChunkSampler(_episodes([4] * 100 + [5]), 5)


def test_chunk_sampler_exactly_one_fit_is_accepted() -> None:
    s = ChunkSampler(_episodes([2, 5, 2]), 5)
    assert s.sample(torch.arange(len(s)))["valid"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0]


def test_valid_data_samples_the_hand_computed_chunk() -> None:
    """Episodes [0..2] (terminated at row 1: mask 0) and [3..5]; H = 2, rewards = row index."""
    data = _episodes([3, 3])
    data.masks[1] = 0.0
    s = ChunkSampler(data, 2)
    b = s.sample(torch.tensor([0, 1, 2, 4, 5]))
    assert b["rewards"].tolist() == [[0, 1], [1, 0], [2, 0], [4, 5], [5, 0]]  # zeroed after the termination / end
    assert b["masks"].tolist() == [0, 0, 1, 1, 1]
    assert b["valid"].tolist() == [1, 1, 0, 1, 0]
    assert b["valid_steps"].tolist() == [[1, 1], [1, 1], [1, 0], [1, 1], [1, 0]]
    assert b["observations"].flatten().tolist() == [0, 1, 2, 4, 5]
    assert b["next_observations"].flatten().tolist() == [2, 3, 3, 6, 6]  # s_{t+H}, clamped at the episode end
    ref = ChunkSampler(data, 2, mode="reference").sample(torch.tensor([0, 1, 2, 4]))
    assert ref["rewards"].tolist() == [[0, 1], [1, 2], [2, 0], [4, 5]] and ref["valid"].tolist() == [1, 1, 0, 1]


@pytest.mark.parametrize("mode", ["episode", "reference"])
def test_rewards_n1_sample_like_n(mode: str) -> None:
    a = _arrays()
    flat = Transitions.from_numpy(a)
    column = Transitions.from_numpy({**a, "rewards": a["rewards"][:, None]})
    assert column.rewards.shape == (N,)
    idx = torch.arange(N - 3)
    got, want = ChunkSampler(column, 3, mode=mode).sample(idx), ChunkSampler(flat, 3, mode=mode).sample(idx)
    assert got["rewards"].shape == (N - 3, 3) and torch.equal(got["rewards"], want["rewards"])


def test_from_numpy_never_touches_the_callers_arrays() -> None:
    a = _arrays()
    a["terminals"][-1] = 0.0  # from_numpy ends the last episode: in its copy only
    before = {k: v.copy() for k, v in a.items()}
    data = Transitions.from_numpy(a, action_clip=0.5)
    assert data.terminals[-1] == 1 and float(data.actions.abs().max()) <= 0.5
    for k, v in a.items():
        assert np.array_equal(v, before[k]), k
    data.observations += 1  # later in-place edits of the Transitions do not reach the caller either
    data.rewards.zero_()
    assert np.array_equal(a["observations"], before["observations"]) and np.array_equal(a["rewards"], before["rewards"])


def test_valid_dict_data_and_unterminated_end_are_accepted() -> None:
    """uint8 images need no finiteness check; data whose last terminal is 0 (a buffer's storage) samples with the
    last row as its episode end."""
    fields = _dict_data()
    fields["terminals"] = torch.tensor([0.0, 0, 1, 0, 0, 0])
    s = ChunkSampler(Transitions(**fields), 3)
    assert s.episode_end.tolist() == [2, 2, 2, 5, 5, 5]


# -- replay buffer --------------------------------------------------------------------------------------------------
def _row() -> dict[str, np.ndarray]:
    return {IMG: np.zeros((3, 4, 4), np.uint8), STATE: np.zeros(3, np.float32)}


def _with(key: str, value: Any) -> dict[str, Any]:
    return {**_row(), key: value}


ADD = [
    ("reward-nan", {"reward": float("nan")}, ValueError, r"replay buffer add: reward is nan \(not finite\)"),
    ("reward-vector", {"reward": [1.0, 2.0]}, ValueError, r"replay buffer add: reward must be one number"),
    ("mask-2", {"mask": 2.0}, ValueError, r"replay buffer add: mask must be 0 or 1, got 2"),
    ("terminal-0.5", {"terminal": 0.5}, ValueError, r"replay buffer add: terminal must be 0 or 1, got 0.5"),
    ("obs-state-nan", {"obs": _with(STATE, np.array([0, np.nan, 0]))}, ValueError,
     r"replay buffer add: observations\['observation.state'\] contains NaN/inf"),
    ("next-obs-state-inf", {"next_obs": _with(STATE, np.array([np.inf, 0, 0]))}, ValueError,
     r"replay buffer add: next_observations\['observation.state'\] contains NaN/inf"),
    ("action-nan", {"action": np.array([np.nan, 0.0])}, ValueError, r"replay buffer add: actions contains NaN/inf"),
    ("obs-state-shape", {"obs": _with(STATE, np.zeros(4))}, ValueError,
     r"observations\['observation.state'\] has shape \(4,\), the buffer's is \(3,\)"),
]


@pytest.mark.parametrize(("change", "error", "pattern"), [c[1:] for c in ADD], ids=[f"add-{c[0]}" for c in ADD])
def test_replay_add_refuses(change: dict[str, Any], error: type[Exception], pattern: str) -> None:
    buf = ReplayBuffer(Transitions(**_dict_data()), horizon=3, capacity=4)
    kwargs = {"obs": _row(), "action": np.zeros(2), "reward": 0.0, "mask": 1.0, "terminal": False, "next_obs": _row(),
              **change}
    with pytest.raises(error, match=pattern):
        buf.add(**kwargs)
    assert len(buf) == 6 and buf.online_size == 0  # nothing was written


def test_replay_buffer_accepts_short_offline_episodes() -> None:
    """Online episodes may fit the chunk: the buffer does not refuse offline data the sampler would."""
    data = _episodes([2, 2])
    with pytest.raises(ValueError, match="never train"):
        ChunkSampler(data, 3)
    buf = ReplayBuffer(data, horizon=3, capacity=4)
    for i in range(3):
        buf.add([10.0 + i], [0.0], 1.0, 1.0, i == 2, [11.0 + i])
    assert buf.sample(torch.tensor([4]))["valid"].tolist() == [1.0]
