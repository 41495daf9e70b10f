"""Offline-to-online: a replay buffer that starts as the offline dataset and grows with environment steps.

SPEC §6: after the offline phase the policy acts in the environment, every transition goes into one buffer
that already holds the offline data, and batches are drawn uniformly over the union (offline and online
mixed uniformly). The buffer *is* a :class:`ChunkSampler`, so the Finetuner samples chunks from it exactly as
from offline data, episode ends respected: rows of the episode still being collected treat the newest row as
their end (chunks that reach past it are marked invalid). The env side is :mod:`trqam_sdk.rollout.online`.
The buffer does not refuse offline data whose episodes are all shorter than the chunk (as ChunkSampler does):
online episodes may be long enough; the Finetuner's own sampler checks the offline data before any update.

Observations are a tensor or a dict of tensors (a VLA's uint8 images, int token ids, float state): every leaf
keeps the offline data's dtype and all ``capacity`` online rows are allocated up front, so memory is bounded
and known before the first step (:meth:`ReplayBuffer.memory_report`).

Persistence (docs/online.md): :meth:`ReplayBuffer.save` appends the online rows added since the last save as one
new shard ``rows-<start>-<end>.safetensors`` (temp file, fsync, rename) and then rewrites ``manifest.json``
atomically; old shards are never rewritten. :meth:`ReplayBuffer.load` restores exactly the first ``rows``
online rows the learner's checkpoint recorded and drops what was written after it. The offline part is not
saved (it is rebuilt from the dataset): its row count and a fingerprint are, and a mismatch is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

from trqam_sdk.core.pytree import tree_map
from trqam_sdk.data.transitions import KEYS, ChunkSampler, Transitions, episode_ends
from trqam_sdk.io import atomic_write_text, read_json

MANIFEST = "manifest.json"
FORMAT = 1
SHARD = re.compile(r"^rows-(\d{8})-(\d{8})\.safetensors$")
TEMP = re.compile(r"^\.rows-\d{8}-\d{8}\.safetensors\.tmp\d+$")


def _flat(name: str, value: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
    """``observations`` → ``{"observations": t}`` or ``{"observations.<key>": t, ...}`` (one level, as Transitions)."""
    return {name: value} if isinstance(value, Tensor) else {f"{name}.{k}": v for k, v in value.items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _leaf(value: Any, like: Tensor, name: str) -> Tensor:
    """One row of a buffer field as ``like``'s dtype; shape and dtype kind are checked (floats never go into an
    integer field: that would silently truncate an image or a token id)."""
    try:
        t = value.detach().cpu() if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: cannot store a {type(value).__name__} in the replay buffer ({e})") from None
    if tuple(t.shape) != tuple(like.shape[1:]):
        raise ValueError(f"transition shapes: {name} has shape {tuple(t.shape)}, the buffer's is "
                         f"{tuple(like.shape[1:])}")
    want = like.dtype
    if t.is_complex():
        raise TypeError(f"{name}: complex values for a {_dtype_name(want)} buffer field")
    if not want.is_floating_point:
        if t.dtype.is_floating_point:
            raise TypeError(f"{name}: {_dtype_name(t.dtype)} values for a {_dtype_name(want)} buffer field "
                            "(images are stored as uint8, token ids as integers: convert before adding)")
        if t.numel() and t.dtype != want:
            lo, hi = (0, 1) if want == torch.bool else (torch.iinfo(want).min, torch.iinfo(want).max)
            t_min, t_max = int(t.min()), int(t.max())
            if t_min < lo or t_max > hi:
                raise ValueError(f"{name}: values in [{t_min}, {t_max}] do not fit the buffer's "
                                 f"{_dtype_name(want)}")
    return t.to(want)


def _check_row(row: Tensor | dict[str, Tensor], name: str) -> None:
    """A NaN/inf online row would poison every critic batch that draws it: refused at :meth:`ReplayBuffer.add`."""
    for key, t in (row.items() if isinstance(row, dict) else [(None, row)]):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"replay buffer add: {name if key is None else f'{name}[{key!r}]'} contains NaN/inf")


def _scalar(value: Any, name: str) -> float:
    """``reward`` / ``mask`` / ``terminal`` of one step as a finite float (a 1-element array is accepted)."""
    try:
        v = float(np.asarray(value, dtype=np.float64).reshape(()))
    except (TypeError, ValueError) as e:
        raise ValueError(f"replay buffer add: {name} must be one number, got {value!r} ({e})") from None
    if not math.isfinite(v):
        raise ValueError(f"replay buffer add: {name} is {v} (not finite)")
    return v


class ReplayBuffer(ChunkSampler):
    """Offline transitions followed by up to ``capacity`` online ones; ``len`` counts the filled rows."""

    def __init__(self, offline: Transitions, horizon: int, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        n = len(offline)
        obs, nxt = offline.observations, offline.next_observations
        if isinstance(obs, dict) != isinstance(nxt, dict) or (isinstance(obs, dict) and obs.keys() != nxt.keys()):
            raise ValueError("offline observations and next_observations must have the same structure "
                             f"(keys {sorted(obs) if isinstance(obs, dict) else 'tensor'} vs "
                             f"{sorted(nxt) if isinstance(nxt, dict) else 'tensor'})")
        full = {}
        for k in KEYS:
            for name, v in _flat(k, getattr(offline, k)).items():
                if v.shape[0] != n:
                    raise ValueError(f"offline {name} has {v.shape[0]} rows, actions has {n}")
            full[k] = tree_map(lambda v: torch.cat([v, v.new_zeros((capacity, *v.shape[1:]))]), getattr(offline, k))
        self.data, self.horizon = Transitions(**full), horizon
        self.episode_end = torch.cat([episode_ends(offline.terminals),
                                      torch.zeros(capacity, dtype=torch.long)])
        self.offline_size, self.size, self.capacity, self.episode_start = n, n, n + capacity, n
        self._fingerprint: str | None = None
        self._saved_to: Path | None = None
        self._saved_rows = 0
        self._shards: list[dict[str, Any]] = []
        self._truncated: set[int] = set()
        """online rows whose episode :meth:`close_episode` ended after they were saved (kept in the manifest)"""

    def __len__(self) -> int:
        return self.size

    @property
    def online_size(self) -> int:
        return self.size - self.offline_size

    @property
    def online_capacity(self) -> int:
        return self.capacity - self.offline_size

    @property
    def episode_in_progress(self) -> bool:
        """Whether the newest online rows belong to an episode that has not ended."""
        return self.size > self.episode_start

    def fields(self) -> dict[str, Tensor]:
        """Every preallocated storage by flat name (``observations.<key>`` for dict observations)."""
        out: dict[str, Tensor] = {}
        for k in KEYS:
            out.update(_flat(k, getattr(self.data, k)))
        return out

    # -- memory ---------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of every preallocated array (offline + online capacity, episode index included)."""
        return sum(t.nelement() * t.element_size() for t in [*self.fields().values(), self.episode_end])

    def memory_report(self) -> dict[str, Any]:
        """Bytes per row of each field, per row in all, and the totals (allocated, not just filled)."""
        per = {name: math.prod(t.shape[1:]) * t.element_size() for name, t in self.fields().items()}
        per["episode_end"] = self.episode_end.element_size()
        row = sum(per.values())
        return {"bytes_per_row": per, "row_bytes": row, "offline_rows": self.offline_size,
                "online_rows": self.online_size, "online_capacity": self.online_capacity,
                "offline_bytes": row * self.offline_size, "online_bytes": row * self.online_capacity,
                "total_bytes": self.nbytes}

    # -- adding -----------------------------------------------------------------------------------------------
    def _row(self, value: Any, like: Tensor | dict[str, Tensor], name: str) -> Tensor | dict[str, Tensor]:
        if not isinstance(like, dict):
            return _leaf(value, like, name)
        if not isinstance(value, Mapping):
            raise TypeError(f"{name}: the buffer holds dict observations {sorted(like)}, got a "
                            f"{type(value).__name__}")
        if set(value) != set(like):
            raise KeyError(f"{name}: keys {sorted(value)} do not match the buffer's {sorted(like)} (missing "
                           f"{sorted(set(like) - set(value))}, unexpected {sorted(set(value) - set(like))})")
        return {k: _leaf(value[k], like[k], f"{name}[{k!r}]") for k in like}

    def add(self, obs: Any, action: Any, reward: float, mask: float, terminal: bool, next_obs: Any) -> None:
        """Append one transition; ``terminal`` ends the episode (success or time limit), ``mask`` = 0 only on
        a true termination (no bootstrap). Dict rows are checked key by key (shape, dtype kind); NaN/inf values and
        a mask or terminal other than 0 / 1 are refused before anything is written."""
        if self.size >= self.capacity:
            raise IndexError(f"replay buffer full: all {self.online_capacity} online rows (after "
                             f"{self.offline_size} offline ones) are used; build it with a larger capacity")
        i, d = self.size, self.data
        o = self._row(obs, d.observations, "observations")
        a = _leaf(action, d.actions, "actions")
        no = self._row(next_obs, d.next_observations, "next_observations")
        _check_row(o, "observations")
        _check_row(a, "actions")
        _check_row(no, "next_observations")
        reward, mask, terminal = _scalar(reward, "reward"), _scalar(mask, "mask"), _scalar(terminal, "terminal")
        for name, v in (("mask", mask), ("terminal", terminal)):
            if v not in (0.0, 1.0):
                raise ValueError(f"replay buffer add: {name} must be 0 or 1, got {v:g}")
        for store, row in ((d.observations, o), (d.next_observations, no)):
            if isinstance(store, dict):
                for k, t in row.items():
                    store[k][i] = t
            else:
                store[i] = row
        d.actions[i] = a
        d.rewards[i], d.masks[i], d.terminals[i] = reward, mask, terminal
        self.size += 1
        self.episode_end[self.episode_start:self.size] = i  # the ongoing episode ends (for now) at row i
        if terminal:
            self.episode_start = self.size

    def close_episode(self) -> bool:
        """End the episode in progress at its newest row as a time-limit truncation (terminal 1, mask kept at 1:
        it still bootstraps); the next row starts a new episode. False when no episode is in progress."""
        if not self.episode_in_progress:
            return False
        i = self.size - 1
        self.data.terminals[i] = 1.0
        self.episode_start = self.size
        if i - self.offline_size < self._saved_rows:
            self._truncated.add(i - self.offline_size)  # already in a shard: the manifest records the edit
        return True

    def _reindex(self) -> None:
        """Episode ends of the online rows from their terminals (the ongoing episode ends at the newest row)."""
        n, s = self.offline_size, self.size
        ends = torch.nonzero(self.data.terminals[n:s] > 0.5).flatten() + n
        self.episode_start = int(ends[-1]) + 1 if len(ends) else n
        if s > self.episode_start:
            ends = torch.cat([ends, torch.tensor([s - 1])])
        self.episode_end[n:s] = ends[torch.searchsorted(ends, torch.arange(n, s))]

    # -- persistence ------------------------------------------------------------------------------------------
    def offline_fingerprint(self) -> str:
        """BLAKE2b of the offline rows (every field's bytes, shape and dtype): a resumed run must rebuild the same."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            for name, t in self.fields().items():
                part = t[:self.offline_size].contiguous()
                h.update(f"{name}:{_dtype_name(t.dtype)}:{tuple(part.shape)};".encode())
                h.update(part.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def layout(self) -> dict[str, dict[str, Any]]:
        """Per-row shape and dtype of every field: what a shard must hold."""
        return {name: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape[1:])} for name, t in self.fields().items()}

    def _manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "rows": self._saved_rows, "offline_rows": self.offline_size,
                "offline_fingerprint": self.offline_fingerprint(), "layout": self.layout(),
                "shards": self._shards, "truncated_rows": sorted(self._truncated)}

    def _write_shard(self, folder: Path, start: int, end: int) -> dict[str, Any]:
        n = self.offline_size
        rows = {name: t[n + start:n + end].clone() for name, t in self.fields().items()}
        blob = safetensors.torch.save(rows)
        name = f"rows-{start:08d}-{end:08d}.safetensors"
        tmp = folder / f".{name}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, folder / name)
        return {"file": name, "start": start, "end": end, "sha256": hashlib.sha256(blob).hexdigest()}

    def _prune(self, folder: Path) -> None:
        """Remove shard and temp files the manifest does not list (written after the restored checkpoint)."""
        keep = {s["file"] for s in self._shards}
        for p in folder.iterdir():
            if (SHARD.match(p.name) and p.name not in keep) or TEMP.match(p.name):
                p.unlink(missing_ok=True)

    def save(self, folder: str | Path) -> dict[str, Any]:
        """Append the online rows added since the last save (or load) as one new shard, then the manifest.

        A buffer not yet saved to or loaded from ``folder`` starts a new series there (earlier shards go)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self._saved_to is None or self._saved_to.resolve() != folder.resolve():
            self._saved_to, self._saved_rows, self._shards, self._truncated = folder, 0, [], set()
            (folder / MANIFEST).unlink(missing_ok=True)
            self._prune(folder)
        end = self.online_size
        if end > self._saved_rows:
            self._shards.append(self._write_shard(folder, self._saved_rows, end))
            self._saved_rows = end
        manifest = self._manifest()
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
        return manifest

    def load(self, folder: str | Path, rows: int, tidy: bool = True) -> None:
        """Restore exactly the first ``rows`` online rows saved in ``folder`` (the count a learner checkpoint
        recorded); with ``tidy`` (the one writing process) shards written after it and torn temp files are
        removed and the manifest cut to ``rows``. Mismatches name the file."""
        folder = Path(folder)
        mpath = folder / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"{mpath} is missing: no replay buffer was saved in {folder}")
        m = read_json(mpath, "replay-buffer manifest")
        lacking = [k for k in ("format", "rows", "offline_rows", "offline_fingerprint", "layout", "shards")
                   if k not in m]
        if lacking:
            raise ValueError(f"{mpath}: not a replay manifest (lacks {lacking})")
        if m["format"] != FORMAT:
            raise ValueError(f"{mpath}: unknown replay format {m['format']!r} (expected {FORMAT})")
        if m["offline_rows"] != self.offline_size or m["offline_fingerprint"] != self.offline_fingerprint():
            raise ValueError(f"{mpath}: saved over {m['offline_rows']} offline rows (fingerprint "
                             f"{m['offline_fingerprint']}), this buffer has {self.offline_size} "
                             f"({self.offline_fingerprint()}): the offline dataset is not the one of the run")
        have, want = m["layout"], self.layout()
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise ValueError(f"{mpath}: the saved rows' fields differ from this buffer's at {diff}: saved "
                             f"{[have.get(k) for k in diff]}, buffer {[want.get(k) for k in diff]}")
        if not 0 <= rows <= min(m["rows"], self.online_capacity):
            raise ValueError(f"{mpath}: cannot restore {rows} rows: {m['rows']} are saved, the buffer has room "
                             f"for {self.online_capacity}")
        kept, loaded, partial = [], 0, None
        n, fields = self.offline_size, self.fields()
        for shard in m["shards"]:
            if shard["start"] >= rows:
                break
            path = folder / shard["file"]
            if shard["start"] != loaded or not path.is_file():
                raise ValueError(f"{mpath}: shard {shard['file']} is missing or does not start at row {loaded}")
            blob = path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != shard["sha256"]:
                raise ValueError(f"{path}: checksum mismatch (the file is corrupt or was replaced)")
            tensors = safetensors.torch.load(blob)
            count = shard["end"] - shard["start"]
            if set(tensors) != set(fields):
                raise ValueError(f"{path}: holds {sorted(tensors)}, the buffer needs {sorted(fields)}")
            take = min(shard["end"], rows) - shard["start"]
            for name, t in tensors.items():
                if t.dtype != fields[name].dtype or tuple(t.shape) != (count, *fields[name].shape[1:]):
                    raise ValueError(f"{path}: {name} is {_dtype_name(t.dtype)} {tuple(t.shape)}, expected "
                                     f"{_dtype_name(fields[name].dtype)} {(count, *fields[name].shape[1:])}")
                fields[name][n + loaded:n + loaded + take] = t[:take]
            loaded += take
            if take == count:
                kept.append(shard)
            else:
                partial = shard["start"]
        if loaded != rows:
            raise ValueError(f"{mpath}: its shards hold {loaded} rows, {rows} are to be restored")
        self.size = n + rows
        self._truncated = {r for r in m.get("truncated_rows", []) if r < rows}
        for r in self._truncated:
            self.data.terminals[n + r] = 1.0
        self._reindex()
        self._saved_to, self._saved_rows, self._shards = folder, rows, kept
        if not tidy:
            return
        if partial is not None:  # a shard reached past the checkpoint: its prefix becomes a shard of its own
            self._shards.append(self._write_shard(folder, partial, rows))
        atomic_write_text(mpath, json.dumps(self._manifest(), indent=1))
        self._prune(folder)


def _publish(tmp: Path, final: Path) -> None:
    """Rename a fully written shard into place (a separate function so tests can inject a crash before it)."""
    os.replace(tmp, final)
