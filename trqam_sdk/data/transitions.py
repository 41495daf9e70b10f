"""Offline transition data and action-chunk sampling that respects episode ends (SPEC §5).

Two chunk semantics (``ChunkSampler(mode=...)``, see trqam_sdk.conventions): ``episode`` (this SDK's default) keeps
every chunk inside its episode; ``reference`` reproduces the authors' sampler (SPEC §5.1).

Every :class:`Transitions`, however it is built (``from_numpy``, the LeRobot loader, a direct constructor call,
``dataclasses.replace``, the replay buffer's storage), is validated by meaning in ``__post_init__``
(:meth:`Transitions.validate`): a wrong array is an error naming it, never a silently wrong critic.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from trqam_sdk.adapters.base import tree_map

KEYS = ("observations", "actions", "rewards", "masks", "terminals", "next_observations")
PER_ROW = ("rewards", "masks", "terminals")  # one scalar per row: (N,), or (N, 1) squeezed
BINARY = ("masks", "terminals")
FEW_VALID = 0.01  # warn when fewer than this fraction of chunk starts give a complete chunk


def _leaves(name: str, value: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
    """``{"observations": t}`` or ``{"observations['key']": t, ...}``: the names errors use."""
    if isinstance(value, dict):
        return {f"{name}[{k!r}]": v for k, v in value.items()}
    return {name: value}


def _first_bad_row(name: str, bad: Tensor, what: str, values: Tensor | None = None) -> str:
    """``bad`` (N,) bool: the message naming the array, the count and the first bad row (and its value)."""
    rows = bad.nonzero().flatten()
    first = int(rows[0])
    shown = f" = {float(values[first]):g}" if values is not None else ""
    return f"{name}: {len(rows)} rows {what} (first at row {first}{shown})"


def check_finite(name: str, value: Tensor) -> None:
    """Raise naming ``name`` when a floating tensor holds NaN/inf (one vectorised pass; integer tensors pass)."""
    if not value.is_floating_point() or not value.numel():
        return
    lo, hi = torch.aminmax(value)  # min/max propagate NaN: ~10x faster than isfinite(value).all() on 1M x 30
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return
    bad = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1) if value.ndim else torch.ones(1, dtype=bool)
    raise ValueError(_first_bad_row(name, bad, "contain NaN/inf"))


def check_binary(name: str, value: Tensor) -> None:
    """Raise naming ``name`` unless every entry is 0 or 1 (a mask of 2 or a terminal of 0.4 means nothing)."""
    bad = (value != 0) & (value != 1)
    if bool(bad.any()):
        raise ValueError(_first_bad_row(name, bad, "are neither 0 nor 1", value) + ": masks and terminals are "
                         "flags (mask 0 = true termination, terminal 1 = last step of an episode)")


@dataclass
class Transitions:
    """Flat arrays over N steps of concatenated episodes.

    ``terminals[i] = 1`` marks the last step of an episode (end of data for that episode); ``masks[i] = 0``
    marks a true termination (no bootstrapping past it), e.g. task success in OGBench singletask.
    Observations may be a dict of (N, ...) tensors (a VLA's images, tokens, state; see lerobot_data.py).
    ``rewards``, ``masks`` and ``terminals`` are (N,); (N, 1) is accepted and squeezed to (N,).
    """

    observations: Tensor | dict[str, Tensor]
    actions: Tensor
    rewards: Tensor
    masks: Tensor
    terminals: Tensor
    next_observations: Tensor | dict[str, Tensor]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the data by meaning (errors name the array, dict key, row and value); squeeze (N, 1) per-row
        arrays to (N,). Called on construction; call it again after editing the tensors in place.

        Structure: tensors (observations may be a dict of tensors), ``actions`` (N, action_dim) with N > 0, every
        array and dict entry N rows, ``next_observations`` the same structure, keys, per-row shapes and dtypes as
        ``observations``. Meaning: every floating array finite (uint8 images and token ids need no check),
        ``masks`` and ``terminals`` 0 or 1. The action bound is the loader's (:meth:`from_numpy`)."""
        for k in KEYS:
            for name, v in _leaves(k, getattr(self, k)).items():
                if not isinstance(v, Tensor):
                    raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if self.actions.ndim != 2:
            raise ValueError(f"actions must be 2-D (N, action_dim), got shape {tuple(self.actions.shape)}")
        n = self.actions.shape[0]
        if n == 0:
            raise ValueError("transition data is empty (0 rows): nothing to train on")
        for k in PER_ROW:
            v = getattr(self, k)
            if v.ndim == 2 and v.shape[1] == 1:
                v = v.squeeze(1)
                setattr(self, k, v)
            if v.ndim != 1:
                raise ValueError(f"{k} must have shape (N,) or (N, 1) — one value per row —, got {tuple(v.shape)}")
        self._check_next_observations()
        for k in KEYS:
            for name, v in _leaves(k, getattr(self, k)).items():
                if v.ndim == 0 or v.shape[0] != n:
                    rows = "no rows (a scalar)" if v.ndim == 0 else f"{v.shape[0]} rows"
                    raise ValueError(f"{name} has {rows}, actions has {n}")
                check_finite(name, v)
        for k in BINARY:
            check_binary(k, getattr(self, k))

    def _check_next_observations(self) -> None:
        obs, nxt = self.observations, self.next_observations
        if isinstance(obs, dict) != isinstance(nxt, dict):
            kind = {True: "a dict", False: "a tensor"}
            raise ValueError(f"next_observations is {kind[isinstance(nxt, dict)]} but observations is "
                             f"{kind[isinstance(obs, dict)]}: they must have the same structure")
        if isinstance(obs, dict) and obs.keys() != nxt.keys():
            raise ValueError(f"next_observations has keys {sorted(nxt)} but observations has {sorted(obs)} "
                             f"(missing {sorted(set(obs) - set(nxt))}, unexpected {sorted(set(nxt) - set(obs))})")
        have, want = _leaves("next_observations", nxt), _leaves("observations", obs)
        for (name, v), w in zip(have.items(), want.values(), strict=True):
            if v.shape[1:] != w.shape[1:] or v.dtype != w.dtype:
                raise ValueError(f"{name} rows are {str(v.dtype).removeprefix('torch.')} {tuple(v.shape[1:])} but "
                                 f"observations rows are {str(w.dtype).removeprefix('torch.')} {tuple(w.shape[1:])}")

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray], action_bound: float = 1.0,
                   action_clip: float | None = None) -> Transitions:
        """Copy into float32 tensors and validate (:meth:`validate`, plus 2-D observations and actions within
        ±``action_bound``); ``action_clip`` then clips actions to ±action_clip (the authors' 1 - 1e-5, SPEC
        §5.1) — after the bound check, so mis-scaled data is still an error rather than silently clipped.
        The last row always ends an episode (terminal 1). The caller's arrays are never modified nor shared."""
        missing = [k for k in KEYS if k not in arrays]
        if missing:
            raise KeyError(f"transition data lacks {missing}; has {sorted(arrays)}")
        t = {}
        for k in KEYS:
            try:  # torch.tensor always copies: no view of the caller's memory is ever written or kept
                t[k] = torch.tensor(np.asarray(arrays[k]), dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(f"{k}: not a numeric array ({e})") from None
        for k in ("observations", "next_observations"):
            if t[k].ndim != 2:
                raise ValueError(f"{k} must be 2-D (N, obs_dim), got shape {tuple(t[k].shape)} (dict or image "
                                 "observations: build Transitions(...) directly)")
        if t["terminals"].ndim in (1, 2) and t["terminals"].numel():
            t["terminals"].view(-1)[-1] = 1.0  # the data ends an episode (our copy, not the caller's array)
        out = cls(**t)
        amax = float(out.actions.abs().max())
        if amax > action_bound + 1e-6:
            raise ValueError(f"actions reach |a| = {amax:.4g} > {action_bound}: rescale them into the action box")
        return out.clip_actions(action_clip) if action_clip is not None else out

    def clip_actions(self, bound: float) -> Transitions:
        """A copy (other arrays shared) with actions clipped to ±``bound``; idempotent. Clamping keeps the data
        valid, so the copy is not validated again (no second pass over a large dataset)."""
        if not 0 < bound <= 1:
            raise ValueError(f"action clip must be in (0, 1], got {bound}")
        out = copy.copy(self)
        out.actions = self.actions.clamp(-bound, bound)
        return out

    def __len__(self) -> int:
        return self.actions.shape[0]

    @property
    def obs_dim(self) -> int:
        if isinstance(self.observations, dict):
            raise TypeError(f"dict observations ({sorted(self.observations)}) have no single obs_dim: "
                            "give the Finetuner a critic with an observation encoder (trqam_sdk.networks.encoders)")
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]


ChunkMode = Literal["episode", "reference"]


def episode_ends(terminals: Tensor) -> Tensor:
    """For each row, the index of its episode's last row: the first terminal at or after it (the last row ends
    the data's final episode even when its terminal is 0, as in a replay buffer's storage)."""
    n = terminals.shape[0]
    ends = torch.nonzero(terminals > 0.5).flatten()
    if not len(ends) or int(ends[-1]) != n - 1:
        ends = torch.cat([ends, torch.tensor([n - 1])])
    return ends[torch.searchsorted(ends, torch.arange(n))]


def complete_chunk_starts(episode_end: Tensor, horizon: int) -> int:
    """How many start rows have all ``horizon`` steps inside their episode (``valid`` = 1 in both modes: in
    ``reference`` mode a window is valid exactly when no episode ends before its last step)."""
    return int((episode_end - torch.arange(len(episode_end)) >= horizon - 1).sum())


class ChunkSampler:
    """Sample (s_t, a_{t:t+H}, r_{t:t+H}, s_{t+H}); ``len`` is the number of valid start indices.

    ``mode="episode"`` (default): starts over all N rows; steps past the episode end are clamped to its last step
    and flagged: ``valid_steps`` (B, H) per step, ``valid`` (B,) when the whole chunk lies inside the episode.
    ``masks`` is 0 if any step of the chunk terminated; rewards after a termination are zeroed.

    ``mode="reference"`` (the authors', SPEC §5.1): starts uniform in [0, N - H], so a chunk may run into the next
    episode (its rows unclamped); ``valid_steps[i] = 1 - any episode end among steps 0..i-1``; rewards are kept
    on valid steps even after a task termination (mask 0); ``masks`` = min of the masks over valid steps;
    ``next_observations`` of the last valid step. The losses weight such chunks whole by ``valid`` (the last
    step's validity): see :func:`trqam_sdk.methods.bc.bc_flow_matching` and ``critic_loss``.

    Data where no start gives a complete chunk (every episode shorter than H) is refused: every chunk would have
    ``valid`` = 0 and neither the critic nor BC would ever train. Under 1% complete starts is a warning.
    """

    mode: ChunkMode = "episode"  # a class default, so subclasses that skip __init__ (ReplayBuffer) keep it

    def __init__(self, data: Transitions, horizon: int, mode: ChunkMode = "episode"):
        if mode not in ("episode", "reference"):
            raise ValueError(f"chunk sampling mode must be 'episode' or 'reference', got {mode!r}")
        if horizon < 1:
            raise ValueError(f"chunk horizon H must be >= 1, got {horizon}")
        if mode == "reference" and len(data) < horizon:
            raise ValueError(f"reference chunk sampling needs at least H = {horizon} rows, got {len(data)}")
        self.data, self.horizon, self.mode = data, horizon, mode
        self.episode_end = episode_ends(data.terminals)
        self._check_chunks_fit()

    def _check_chunks_fit(self) -> None:
        complete = complete_chunk_starts(self.episode_end, self.horizon)
        if complete >= FEW_VALID * len(self):
            return
        ends = torch.unique(self.episode_end)
        longest = int(torch.diff(ends, prepend=torch.tensor([-1])).max())
        where = (f"H = {self.horizon}: {len(ends)} episodes, the longest has {longest} steps "
                 f"({len(self.data)} rows)")
        if complete == 0:
            why = ("every episode is shorter than the chunk" if self.mode == "episode" else
                   "every window of H rows crosses an episode end (reference sampling)")
            raise ValueError(f"no action chunk fits in the data with {where}: {why}, so every chunk would be "
                             "invalid and the critic would never train; use a shorter horizon or longer episodes")
        warnings.warn(f"only {complete} of {len(self)} chunk starts ({100 * complete / len(self):.2g}%) give a "
                      f"complete chunk with {where}: the critic trains on few chunks", stacklevel=3)

    def __len__(self) -> int:
        return len(self.data) - self.horizon + 1 if self.mode == "reference" else len(self.data)

    def sample(self, idx: Tensor) -> dict[str, Tensor]:
        if self.mode == "reference":
            return self._sample_reference(idx)
        d, h = self.data, self.horizon
        steps = idx[:, None] + torch.arange(h)[None]
        end = self.episode_end[idx][:, None]
        valid_steps = (steps <= end).float()
        steps = torch.minimum(steps, end)
        alive = torch.cumprod(d.masks[steps], dim=1)  # 0 from the first terminated step on
        alive_before = torch.cat([torch.ones_like(alive[:, :1]), alive[:, :-1]], dim=1)
        return {
            "observations": tree_map(lambda o: o[idx], d.observations),
            "actions": d.actions[steps],
            "rewards": d.rewards[steps] * alive_before * valid_steps,
            "masks": alive[:, -1],
            "valid": valid_steps[:, -1],
            "valid_steps": valid_steps,
            "next_observations": tree_map(lambda o: o[steps[:, -1]], d.next_observations),
        }

    def _sample_reference(self, idx: Tensor) -> dict[str, Tensor]:
        """The authors' sequence sampler (SPEC §5.1), vectorised; ``idx`` in [0, N - H]."""
        d, h = self.data, self.horizon
        steps = idx[:, None] + torch.arange(h)[None]
        ended = torch.cummax(d.terminals[steps], dim=1).values  # an episode end at or before step i
        valid_steps = torch.cat([torch.ones_like(ended[:, :1]), 1.0 - ended[:, :-1]], dim=1)
        masks = torch.where(valid_steps > 0, d.masks[steps], torch.ones_like(valid_steps)).amin(dim=1)
        last = steps.gather(1, (valid_steps.sum(dim=1, keepdim=True) - 1).long()).squeeze(1)
        return {
            "observations": tree_map(lambda o: o[idx], d.observations),
            "actions": d.actions[steps],
            "rewards": d.rewards[steps] * valid_steps,
            "masks": masks,
            "valid": valid_steps[:, -1],
            "valid_steps": valid_steps,
            "next_observations": tree_map(lambda o: o[last], d.next_observations),
        }
