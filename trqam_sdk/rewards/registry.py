"""Reward sources by name: the inputs they score, their base class and the registry that builds them strictly.

A reward source maps a batch of transitions' *next* frames to ``(reward (N,) float32, success (N,) bool)``. The
same call relabels an offline dataset (N = every frame) and scores one online step (N = 1), so offline and online
rewards agree by construction. ``success`` is what ends an episode for that source (mask 0 / termination).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from trqam_sdk.registry_names import check_registry_name

IMAGE_KEY = "observation.image"
"""the image key of the SDK's MetaWorld data (LeRobot's ``preprocess_observation`` name for one camera)"""


def _as_numpy(value: Any) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (no copy when it already is one)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def as_uint8_hwc(image: Any, key: str) -> np.ndarray:
    """(N, H, W, 3) uint8 from uint8 channel-last or channel-first images, or float images in [0, 1] (what a
    LeRobotDataset item holds: PNG bytes / 255, so the conversion back is exact)."""
    arr = _as_numpy(image)
    if arr.ndim != 4:
        raise ValueError(f"image {key!r} must be (N, H, W, 3) or (N, 3, H, W), got shape {arr.shape}")
    if arr.shape[-1] != 3 and arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] != 3:
        raise ValueError(f"image {key!r} has no 3-channel axis: shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"float image {key!r} must lie in [0, 1] (got [{arr.min():.3g}, {arr.max():.3g}]): "
                             "pass uint8 pixels, not normalised model inputs")
        return np.round(arr * 255.0).astype(np.uint8)
    raise ValueError(f"image {key!r} must be uint8 (or float in [0, 1]), got dtype {arr.dtype}")


@dataclass
class RewardInputs:
    """What a reward source may read about the frames *after* N actions; absent parts are None.

    ``images``: key → (N, H, W, 3) uint8 (one array is taken as :data:`IMAGE_KEY`); ``state`` (N, d);
    ``env_reward`` (N,) the env's reward (None on a real robot); ``env_success`` (N,) bool (None when unknown).
    """

    images: dict[str, np.ndarray] | None = None
    state: np.ndarray | None = None
    env_reward: np.ndarray | None = None
    env_success: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images is not None and not isinstance(self.images, Mapping):
            self.images = {IMAGE_KEY: self.images}
        if self.images is not None:
            self.images = {k: as_uint8_hwc(v, k) for k, v in self.images.items()}
        if self.state is not None:
            self.state = _as_numpy(self.state).astype(np.float32, copy=False)
            if self.state.ndim != 2:
                raise ValueError(f"state must be (N, d), got shape {self.state.shape}")
        if self.env_reward is not None:
            self.env_reward = _as_numpy(self.env_reward).astype(np.float32, copy=False).reshape(-1)
        if self.env_success is not None:
            s = _as_numpy(self.env_success).reshape(-1)
            if s.dtype != np.bool_ and not np.isin(s, (0, 1)).all():
                raise ValueError(f"env_success must be boolean (0/1), got values {np.unique(s)[:5]}")
            self.env_success = s.astype(bool)
        sizes = {name: len(v) for name, v in (("state", self.state), ("env_reward", self.env_reward),
                                              ("env_success", self.env_success)) if v is not None}
        sizes.update({f"images[{k!r}]": len(v) for k, v in (self.images or {}).items()})
        if not sizes:
            raise ValueError("RewardInputs is empty: give images, state, env_reward or env_success")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"RewardInputs parts disagree on N: {sizes}")
        self.n = next(iter(sizes.values()))

    def image(self, key: str = IMAGE_KEY) -> np.ndarray:
        """The (N, H, W, 3) uint8 image ``key``; a clear error when there is none."""
        if not self.images or key not in self.images:
            have = sorted(self.images) if self.images else "no images"
            raise KeyError(f"this reward source reads image {key!r}, the inputs have {have}")
        return self.images[key]


class RewardSource:
    """Base of every reward source: ``Options`` (a dataclass of its parameters) and ``__call__``.

    Subclasses set ``Options`` and implement :meth:`score`; :meth:`__call__` checks the outputs' shapes and dtypes
    so a user source cannot hand the learner a wrong-shaped reward.
    """

    Options: ClassVar[type] = type("Options", (), {})
    name: ClassVar[str] = "unnamed"

    def __init__(self, options: Any | None = None):
        self.options = options if options is not None else self.Options()

    def score(self, inputs: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, inputs: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        reward, success = self.score(inputs)
        reward = np.asarray(reward, dtype=np.float32).reshape(-1)
        success = np.asarray(success).reshape(-1).astype(bool)
        if reward.shape != (inputs.n,) or success.shape != (inputs.n,):
            raise ValueError(f"reward source {self.name!r} returned reward {reward.shape} and success "
                             f"{success.shape} for N = {inputs.n} frames")
        return reward, success

    def describe(self) -> dict[str, Any]:
        """Name and options (what a run records as its reward source)."""
        opts = dataclasses.asdict(self.options) if dataclasses.is_dataclass(self.options) else {}
        return {"name": self.name, **opts}


REWARDS: dict[str, type[RewardSource]] = {}


def register_reward[C: type[RewardSource]](name: str) -> Callable[[C], C]:
    """Class decorator: ``@register_reward("mine")`` makes ``make_reward("mine", **options)`` work."""
    check_registry_name(name, "reward source")

    def wrap(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, RewardSource)):
            raise TypeError(f"@register_reward({name!r}) needs a RewardSource subclass, got {cls!r}")
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"reward source {cls.__qualname__} needs an Options dataclass of its parameters")
        if name in REWARDS and REWARDS[name] is not cls:
            raise ValueError(f"reward source {name!r} is already registered ({REWARDS[name].__qualname__})")
        REWARDS[name] = cls
        cls.name = name
        return cls

    return wrap


def reward_names() -> list[str]:
    """Every registered reward source (the built-ins register when ``trqam_sdk.rewards`` is imported)."""
    return sorted(REWARDS)


def _check_type(source: str, field: str, hint: Any, value: Any) -> Any:
    """Check a scalar option against its annotation (int → float is allowed); other annotations pass."""
    origin = typing.get_origin(hint)
    allowed = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return value
    for t in allowed:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t in (int, str, bool) and type(value) is t:
            return value
    if any(t in (int, float, str, bool) for t in allowed):
        raise TypeError(f"reward source {source!r}: option {field!r} must be {hint}, got {value!r}")
    return value


def make_reward(name: str, **options: Any) -> RewardSource:
    """Build the source ``name`` with ``options`` validated against its Options (unknown names / options, missing
    required ones and wrong scalar types are errors that list what is valid)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward source {name!r}; known: {reward_names()} "
                         "(register your own with trqam_sdk.rewards.register_reward)")
    cls = REWARDS[name]
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"reward source {name!r} has no option(s) {unknown}; its options: {sorted(fields)}")
    missing = [k for k, f in fields.items() if k not in options and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"reward source {name!r} needs option(s) {missing}")
    hints = typing.get_type_hints(cls.Options)
    checked = {k: _check_type(name, k, hints.get(k, Any), v) for k, v in options.items()}
    return cls(cls.Options(**checked))
