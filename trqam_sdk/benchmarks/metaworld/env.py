"""MetaWorld env settings and the one env class that data generation, the online phase, the SDK evaluator and
lerobot-eval all build, so every frame is rendered the same way.

The env *is* LeRobot's own ``lerobot.envs.metaworld.MetaworldEnv`` (observation ``{"pixels": (S, S, 3) uint8,
"agent_pos": (4,) float64}``, termination on success with an internal reset, ``info["is_success"]``); the
subclass only adds what LeRobot's wrapper lacks:

* rendering at ``image_size`` (LeRobot's wrapper always renders MetaWorld's 480 x 480, whatever
  ``observation_width`` says) and, with ``fast_render``, without shadows, reflections, skybox and offscreen
  multisampling (~3-4x faster in software rendering, see ENVIRONMENT.md);
* a time limit ``episode_length`` (``truncated=True`` at the limit; ``_max_episode_steps`` is what lerobot-eval
  reads);
* ``info["success"]`` as a float on every step;
* the 39-dim MetaWorld state the scripted experts need (:func:`state_vector`).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any

import mujoco
import numpy as np
from lerobot.envs.metaworld import TASK_DESCRIPTIONS, TASK_POLICY_MAPPING, MetaworldEnv

MAX_PATH_LENGTH = 500
"""MetaWorld's own per-episode step limit (``max_path_length``); the inner env refuses to step past it"""
FPS = 80
"""LeRobot's MetaWorld fps (``lerobot.envs.configs.MetaworldEnv.fps`` and the env's ``render_fps``)"""
FAST_RENDER_FLAGS = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX)
"""scene render flags switched off by ``fast_render``"""


def check_task(task: str) -> str:
    """The task name if MetaWorld (through LeRobot) knows it; otherwise a ValueError listing close names."""
    if task in TASK_DESCRIPTIONS:
        return task
    close = difflib.get_close_matches(task, list(TASK_DESCRIPTIONS), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ValueError(f"unknown MetaWorld task {task!r} (expected a v3 name from "
                     f"lerobot.envs.metaworld.TASK_DESCRIPTIONS such as 'reach-v3'){hint}")


@dataclass(frozen=True)
class EnvSettings:
    """Everything that decides what an episode looks like: one object shared by data, training and evaluation."""

    task: str
    """MetaWorld v3 task name, e.g. ``reach-v3``"""
    image_size: int = 64
    """square camera image side in pixels"""
    episode_length: int = 150
    """time limit in env steps (truncation); at most MetaWorld's 500"""
    fast_render: bool = True
    """shadows / reflections / skybox / offscreen multisampling off"""
    camera: str = "corner2"
    """MetaWorld camera name (LeRobot's default, flipped back by its wrapper)"""

    def __post_init__(self) -> None:
        check_task(self.task)
        for name, lo, hi in (("image_size", 8, 480), ("episode_length", 1, MAX_PATH_LENGTH)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"EnvSettings.{name} must be an int in [{lo}, {hi}], got {value!r}")
        if not isinstance(self.fast_render, bool):
            raise ValueError(f"EnvSettings.fast_render must be a bool, got {self.fast_render!r}")
        if not isinstance(self.camera, str) or not self.camera:
            raise ValueError(f"EnvSettings.camera must be a non-empty camera name, got {self.camera!r}")

    @property
    def task_description(self) -> str:
        """The language instruction LeRobot feeds a policy for this task (the dataset's ``task`` string)."""
        return TASK_DESCRIPTIONS[self.task]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvSettings:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not silently take a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EnvSettings keys {unknown}; known: {sorted(known)}")
        if "task" not in data:
            raise ValueError("EnvSettings needs a 'task'")
        return cls(**data)


def apply_render_settings(inner: Any, settings: EnvSettings) -> None:
    """Make a freshly built MetaWorld env render ``image_size`` pixels (and fast, if asked).

    Must run before the first render: MuJoCo's offscreen context copies ``model.vis`` when gymnasium's
    ``OffScreenViewer`` is created, so the viewer is created here, after the model settings, and its
    ``mjvScene`` flags are switched off on it (``mjv_updateScene`` keeps them).
    """
    renderer = inner.mujoco_renderer
    if renderer._viewers:
        raise RuntimeError("apply_render_settings must run before the env renders its first frame")
    model = inner.model
    names = [model.camera(i).name for i in range(model.ncam)]
    if settings.camera not in names:  # MuJoCo would otherwise render from a default free camera, silently
        raise ValueError(f"EnvSettings.camera {settings.camera!r} is not a camera of {settings.task}; it has {names}")
    size = settings.image_size
    renderer.width = renderer.height = size
    inner.width = inner.height = size
    model.vis.global_.offwidth = size
    model.vis.global_.offheight = size
    if settings.fast_render:
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
    viewer = renderer._get_viewer("rgb_array")
    if settings.fast_render:
        for flag in FAST_RENDER_FLAGS:
            viewer.scn.flags[flag] = 0


class TrqamMetaworldEnv(MetaworldEnv):
    """LeRobot's MetaWorld env with the SDK's :class:`EnvSettings` (see the module docstring).

    Semantics kept from LeRobot: ``terminated`` is success; on it the env resets itself *after* building the
    returned observation (so that observation is the terminal, pre-reset one) and the next step starts a new
    episode. Added: ``truncated=True`` once ``episode_length`` steps have been taken since the last reset.
    """

    def __init__(self, settings: EnvSettings, render_mode: str = "rgb_array") -> None:
        if not isinstance(settings, EnvSettings):
            raise TypeError(f"TrqamMetaworldEnv needs an EnvSettings, got {type(settings).__name__}")
        super().__init__(task=settings.task, camera_name=settings.camera, obs_type="pixels_agent_pos",
                         render_mode=render_mode, observation_width=settings.image_size,
                         observation_height=settings.image_size)
        self.settings = settings
        self._max_episode_steps = settings.episode_length
        self._elapsed_steps = 0
        self._raw_obs: np.ndarray | None = None

    def _ensure_env(self) -> None:
        if self._env is not None:
            return
        super()._ensure_env()
        apply_render_settings(self._env, self.settings)

    def _format_raw_obs(self, raw_obs: np.ndarray) -> dict[str, Any]:
        # LeRobot keeps only raw_obs[:4]; the scripted experts need all 39 dims.
        self._raw_obs = np.array(raw_obs, dtype=np.float64, copy=True)
        return super()._format_raw_obs(raw_obs)

    def reset(self, seed: int | None = None, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        self._elapsed_steps = 0
        obs, info = super().reset(seed=seed, **kwargs)
        info["success"] = 0.0
        return obs, info

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        # counted before LeRobot's step, whose internal reset on success zeroes the counter for the next episode
        self._elapsed_steps += 1
        steps = self._elapsed_steps
        obs, reward, terminated, truncated, info = super().step(np.asarray(action))
        info["success"] = float(info.get("success", 0.0))
        truncated = bool(truncated) or steps >= self.settings.episode_length
        return obs, float(reward), bool(terminated), truncated, info

    @property
    def elapsed_steps(self) -> int:
        """Steps taken since the last reset (explicit, or LeRobot's internal one on success)."""
        return self._elapsed_steps


def state_vector(env: Any) -> np.ndarray:
    """The 39-dim MetaWorld observation of the env's current state (what the scripted experts read).

    After a step that terminated, this is already the state after LeRobot's internal reset, i.e. the start
    of the next episode, consistent with where the next action will act.
    """
    inner = getattr(env, "unwrapped", env)
    if not isinstance(inner, TrqamMetaworldEnv):
        raise TypeError(f"state_vector needs a TrqamMetaworldEnv, got {type(inner).__name__}")
    if inner._raw_obs is None:
        raise RuntimeError("state_vector: reset the env first")
    return inner._raw_obs.copy()


def expert_policy(task: str) -> Any:
    """MetaWorld's scripted expert for ``task`` (LeRobot's ``TASK_POLICY_MAPPING``); ``get_action(state)``
    takes :func:`state_vector` and returns an action in [-1, 1]^4 (not clipped by the policy)."""
    return TASK_POLICY_MAPPING[check_task(task)]()


@dataclass(frozen=True)
class EnvFactory:
    """Picklable zero-argument env builder (spawn process pools, gymnasium vector envs)."""

    settings: EnvSettings

    def __call__(self) -> TrqamMetaworldEnv:
        return TrqamMetaworldEnv(self.settings)
