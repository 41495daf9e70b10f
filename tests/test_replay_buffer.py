"""ReplayBuffer over dict observations: dtypes kept, memory bounded and reported, rows checked key by key, and
incremental crash-safe saving (one new shard per save, old shards never rewritten, exact ``load(rows=k)``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from trqam_sdk.data import replay
from trqam_sdk.data.replay import ReplayBuffer
from trqam_sdk.data.transitions import Transitions

IMG, TOK, STATE = "observation.image", "observation.language.tokens", "observation.state"


def _offline(n: int = 6, seed: int = 0, size: int = 8) -> Transitions:
    g = torch.Generator().manual_seed(seed)

    def obs() -> dict[str, torch.Tensor]:
        return {IMG: torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                TOK: torch.randint(0, 1000, (n, 5), generator=g), STATE: torch.randn(n, 4, generator=g)}

    term = torch.zeros(n)
    term[[2, n - 1]] = 1
    return Transitions(observations=obs(), actions=torch.rand(n, 2, generator=g) * 2 - 1,
                       rewards=torch.randn(n, generator=g), masks=torch.ones(n), terminals=term,
                       next_observations=obs())


def _row(i: int, size: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + i)
    return {IMG: rng.integers(0, 256, (3, size, size), dtype=np.uint8), TOK: rng.integers(0, 1000, 5),
            STATE: rng.normal(size=4)}  # float64 state, int64 tokens: as an env / tokenizer gives them


def _fill(buf: ReplayBuffer, rows: range, ends: tuple[int, ...] = (3,)) -> None:
    """Online steps ``rows``; an episode ends (truncated) after each index in ``ends``."""
    for i in rows:
        buf.add(_row(i), np.full(2, i / 100), -float(i), 1.0, i in ends, _row(i + 1000))


def test_dict_rows_keep_dtypes_and_sample_the_right_rows() -> None:
    buf = ReplayBuffer(_offline(), horizon=3, capacity=8)
    _fill(buf, range(5))  # online rows 6..10: an episode of 4 (ends at row 9), then one in progress
    d = buf.data
    assert {k: v.dtype for k, v in d.observations.items()} == {IMG: torch.uint8, TOK: torch.int64,
                                                              STATE: torch.float32}
    assert torch.equal(d.observations[IMG][6], torch.as_tensor(_row(0)[IMG]))
    assert torch.equal(d.observations[STATE][6], torch.as_tensor(_row(0)[STATE]).float())
    b = buf.sample(torch.tensor([6, 8, 10]))
    assert b["observations"][IMG].dtype == torch.uint8 and b["observations"][TOK].dtype == torch.int64
    assert torch.equal(b["observations"][TOK][1], torch.as_tensor(_row(2)[TOK]))
    # next observation of the chunk's last step, not the step's own observation: row 8 + 2 = 10 crosses the
    # episode end at row 9, so the chunk is cut there (next obs of row 9 = _row(1003))
    assert torch.equal(b["next_observations"][IMG][0], torch.as_tensor(_row(1002)[IMG]))
    assert torch.equal(b["next_observations"][IMG][1], torch.as_tensor(_row(1003)[IMG]))
    assert b["valid"].tolist() == [1.0, 0.0, 0.0]  # row 10: the episode in progress ends (for now) at row 10
    assert b["rewards"][1].tolist() == [-2.0, -3.0, 0.0]


def test_memory_is_preallocated_and_reported() -> None:
    buf = ReplayBuffer(_offline(n=6), horizon=3, capacity=10)
    before = buf.nbytes
    r = buf.memory_report()
    per = r["bytes_per_row"]
    assert per[f"observations.{IMG}"] == per[f"next_observations.{IMG}"] == 3 * 8 * 8  # uint8: 1 byte a pixel
    assert per[f"observations.{TOK}"] == 5 * 8 and per[f"observations.{STATE}"] == 4 * 4
    assert per["actions"] == 8 and per["rewards"] == per["masks"] == per["terminals"] == 4 and per["episode_end"] == 8
    assert r["row_bytes"] == 2 * (192 + 40 + 16) + 8 + 12 + 8 == sum(per.values())
    assert r["total_bytes"] == before == r["row_bytes"] * 16 and r["offline_bytes"] == r["row_bytes"] * 6
    assert (r["offline_rows"], r["online_rows"], r["online_capacity"]) == (6, 0, 10)
    _fill(buf, range(10))
    assert buf.nbytes == before and buf.memory_report()["online_rows"] == 10  # no growth while filling
    with pytest.raises(IndexError, match="full: all 10 online rows"):
        _fill(buf, range(10, 11))


def test_bad_rows_name_the_key() -> None:
    buf = ReplayBuffer(_offline(), horizon=3, capacity=4)
    good = _row(0)
    with pytest.raises(ValueError, match=r"shapes: observations\['observation.image'\] has shape \(3, 8, 9\)"):
        buf.add({**good, IMG: np.zeros((3, 8, 9), np.uint8)}, np.zeros(2), 0, 1, False, good)
    with pytest.raises(TypeError, match=r"observations\['observation.image'\]: float32 values for a uint8"):
        buf.add({**good, IMG: np.zeros((3, 8, 8), np.float32)}, np.zeros(2), 0, 1, False, good)
    with pytest.raises(ValueError, match=r"next_observations\['observation.image'\]: values in \[300, 300\]"):
        buf.add(good, np.zeros(2), 0, 1, False, {**good, IMG: np.full((3, 8, 8), 300)})
    with pytest.raises(KeyError, match=r"missing \['observation.state'\]"):
        buf.add({IMG: good[IMG], TOK: good[TOK]}, np.zeros(2), 0, 1, False, good)
    with pytest.raises(ValueError, match=r"shapes: actions has shape \(3,\)"):
        buf.add(good, np.zeros(3), 0, 1, False, good)
    with pytest.raises(TypeError, match="holds dict observations"):
        buf.add(np.zeros(4), np.zeros(2), 0, 1, False, good)
    assert len(buf) == 6  # nothing was half-added


def test_save_appends_shards_and_never_rewrites(tmp_path: Path) -> None:
    buf = ReplayBuffer(_offline(), horizon=3, capacity=10)
    _fill(buf, range(4))
    buf.save(tmp_path)
    first = tmp_path / "rows-00000000-00000004.safetensors"
    stat, data = first.stat(), first.read_bytes()
    _fill(buf, range(4, 7))
    m = buf.save(tmp_path)
    buf.save(tmp_path)  # nothing new: no empty shard
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", first.name,
                                                          "rows-00000004-00000007.safetensors"]
    assert first.stat().st_mtime_ns == stat.st_mtime_ns and first.read_bytes() == data
    assert m["rows"] == 7 and [(s["start"], s["end"]) for s in m["shards"]] == [(0, 4), (4, 7)]
    assert json.loads((tmp_path / "manifest.json").read_text()) == m


@pytest.mark.parametrize("k", [0, 4, 5, 7])
def test_load_restores_exactly_k_rows(tmp_path: Path, k: int) -> None:
    buf = ReplayBuffer(_offline(), horizon=3, capacity=10)
    _fill(buf, range(4))
    buf.save(tmp_path)
    _fill(buf, range(4, 7))
    buf.save(tmp_path)
    _fill(buf, range(7, 9))
    buf.save(tmp_path / "elsewhere")  # another folder: a series of its own, the first untouched
    ref = ReplayBuffer(_offline(), horizon=3, capacity=10)  # what an uninterrupted buffer holds after k steps
    _fill(ref, range(k))
    got = ReplayBuffer(_offline(), horizon=3, capacity=10)
    got.load(tmp_path, rows=k)
    assert len(got) == len(ref) == 6 + k and got.episode_start == ref.episode_start
    for name, t in ref.fields().items():
        assert torch.equal(got.fields()[name][:6 + k], t[:6 + k]), name
    assert torch.equal(got.episode_end[:6 + k], ref.episode_end[:6 + k])
    shards = json.loads((tmp_path / "manifest.json").read_text())["shards"]
    assert [(s["start"], s["end"]) for s in shards] == {0: [], 4: [(0, 4)], 5: [(0, 4), (4, 5)],
                                                         7: [(0, 4), (4, 7)]}[k]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("rows")) == sorted(s["file"] for s in shards)
    _fill(got, range(k, 9))  # collecting on: the next save appends after row k
    got.save(tmp_path)
    again = ReplayBuffer(_offline(), horizon=3, capacity=10)
    again.load(tmp_path, rows=9)
    for name, t in buf.fields().items():
        assert torch.equal(again.fields()[name][:15], t[:15]), name


def test_torn_shard_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = ReplayBuffer(_offline(), horizon=3, capacity=10)
    _fill(buf, range(3))
    buf.save(tmp_path)
    _fill(buf, range(3, 6))

    def crash(tmp: Path, final: Path) -> None:
        raise KeyboardInterrupt("killed between the temp write and the rename")

    monkeypatch.setattr(replay, "_publish", crash)
    with pytest.raises(KeyboardInterrupt):
        buf.save(tmp_path)
    torn = [p.name for p in tmp_path.iterdir() if p.name.startswith(".rows-00000003-00000006")]
    assert torn and json.loads((tmp_path / "manifest.json").read_text())["rows"] == 3
    monkeypatch.undo()
    got = ReplayBuffer(_offline(), horizon=3, capacity=10)
    got.load(tmp_path, rows=3)
    assert len(got) == 9 and not (tmp_path / torn[0]).exists()
    with pytest.raises(ValueError, match="cannot restore 4 rows: 3 are saved"):
        ReplayBuffer(_offline(), horizon=3, capacity=10).load(tmp_path, rows=4)


def test_closed_episode_survives_a_reload(tmp_path: Path) -> None:
    """A resumed run closes the interrupted episode on a row already in a shard: the manifest keeps the edit."""
    buf = ReplayBuffer(_offline(), horizon=3, capacity=10)
    _fill(buf, range(3), ends=())
    buf.save(tmp_path)
    assert buf.close_episode() and not buf.close_episode()
    assert buf.data.terminals[8] == 1 and buf.data.masks[8] == 1  # truncated: terminal, still bootstraps
    _fill(buf, range(3, 5), ends=())
    buf.save(tmp_path)
    got = ReplayBuffer(_offline(), horizon=3, capacity=10)
    got.load(tmp_path, rows=5)
    assert got.data.terminals[6:11].tolist() == [0, 0, 1, 0, 0] and got.episode_end[6:11].tolist() == [8, 8, 8, 10, 10]


def test_load_refuses_mismatches_naming_the_file(tmp_path: Path) -> None:
    buf = ReplayBuffer(_offline(), horizon=3, capacity=10)
    _fill(buf, range(4))
    buf.save(tmp_path)
    with pytest.raises(ValueError, match="offline dataset is not the one of the run"):
        ReplayBuffer(_offline(seed=1), horizon=3, capacity=10).load(tmp_path, rows=4)
    shard = tmp_path / "rows-00000000-00000004.safetensors"
    good = shard.read_bytes()
    tensors = safetensors.torch.load(good)  # a shard whose image is float: refused, naming file and field
    tensors[f"observations.{IMG}"] = tensors[f"observations.{IMG}"].float()
    forged = safetensors.torch.save(tensors)
    shard.write_bytes(forged)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(forged).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"{shard}: observations.{IMG} is float32 \(4, 3, 8, 8\), expected uint8"):
        ReplayBuffer(_offline(), horizon=3, capacity=10).load(tmp_path, rows=4)
    shard.write_bytes(good)
    manifest["shards"][0]["sha256"] = hashlib.sha256(good).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"{shard}: checksum mismatch"):
        ReplayBuffer(_offline(), horizon=3, capacity=10).load(tmp_path, rows=4)
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        ReplayBuffer(_offline(), horizon=3, capacity=10).load(tmp_path / "none", rows=0)
