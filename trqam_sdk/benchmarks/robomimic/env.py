"""Robomimic evaluation environments built with robosuite 1.5 from a dataset's ``env_args``.

Robomimic hdf5 files store the robosuite constructor arguments as JSON (``data.attrs["env_args"]``:
``env_name``, ``type``, ``env_kwargs``). Files recorded with robosuite ≤ 1.4 carry a single-arm controller
config (``{"type": "OSC_POSE", ...}``); robosuite 1.5 wants a composite config (``{"type": "BASIC",
"body_parts": {"right": {..., "gripper": {...}}}}``), so :func:`convert_controller_config` rewrites it.
Robomimic's own env wrapper imports ``mujoco_py`` (not installable here), so :class:`RobomimicEnv` is a small
gymnasium-style wrapper: flat low-dim observations in a fixed key order, optional normalisation with the
training data's statistics, success from ``is_success()["task"]``, and a recipe-set time limit.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
"""robomimic's low-dim observation keys; ``object`` is robosuite's ``object-state``"""

_ENV_KEY = {"object": "object-state"}
_PART_TYPES = ("OSC_POSE", "OSC_POSITION", "IK_POSE", "JOINT_POSITION", "JOINT_VELOCITY", "JOINT_TORQUE")
_RENAMED = {"damping": "damping_ratio", "damping_limits": "damping_ratio_limits"}


def convert_controller_config(cfg: dict[str, Any], arms: tuple[str, ...] = ("right",)) -> dict[str, Any]:
    """Old single-part controller config (robosuite ≤ 1.4) → robosuite 1.5 composite config; new ones pass.

    Renames ``damping``/``damping_limits`` to the ``*_ratio`` names, turns ``control_delta`` into
    ``input_type`` and keeps robosuite ≤ 1.4's world-frame interpretation of OSC deltas
    (``input_ref_frame="world"``; 1.5 defaults to the robot base frame).
    """
    if "body_parts" in cfg:
        return copy.deepcopy(cfg)
    if cfg.get("type") not in _PART_TYPES:
        raise ValueError(f"controller config of type {cfg.get('type')!r} is neither a composite config "
                         f"(with 'body_parts') nor an old part config {_PART_TYPES}")
    part = {_RENAMED.get(k, k): v for k, v in cfg.items() if k != "control_delta"}
    part["input_type"] = "delta" if cfg.get("control_delta", True) else "absolute"
    part.setdefault("input_ref_frame", "world")
    part.setdefault("gripper", {"type": "GRIP"})
    return {"type": "BASIC", "body_parts": {arm: copy.deepcopy(part) for arm in arms}}


def make_robosuite_env(env_args: dict[str, Any] | str) -> Any:
    """A robosuite 1.5 env from robomimic ``env_args`` (dict or JSON string), low-dim, no rendering."""
    import robosuite
    from robosuite.environments.base import REGISTERED_ENVS

    args = json.loads(env_args) if isinstance(env_args, str) else copy.deepcopy(env_args)
    name = args.get("env_name")
    if name not in REGISTERED_ENVS:
        raise ValueError(f"env_args names env {name!r}, which robosuite {robosuite.__version__} does not have")
    kwargs = dict(args.get("env_kwargs", {}))
    robots = kwargs.get("robots", "Panda")
    kwargs["controller_configs"] = convert_controller_config(kwargs["controller_configs"]) \
        if kwargs.get("controller_configs") else None
    kwargs.update(has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False, use_object_obs=True,
                  ignore_done=True)  # the wrapper owns the time limit
    accepted = set()
    for cls in inspect.getmro(REGISTERED_ENVS[name]):
        if "__init__" in cls.__dict__:
            accepted |= set(inspect.signature(cls.__init__).parameters)
    dropped = sorted(k for k in kwargs if k not in accepted)
    for k in dropped:  # e.g. camera options of image datasets, keys robosuite 1.5 renamed
        kwargs.pop(k)
    kwargs["robots"] = robots
    return robosuite.make(name, **kwargs)


@dataclass
class ObsNormalizer:
    """Per-dimension z-scoring with statistics of the training data (saved with the run as JSON)."""

    mean: list[float]
    std: list[float]
    keys: list[str] = field(default_factory=lambda: list(LOW_DIM_KEYS))

    @classmethod
    def fit(cls, obs: np.ndarray, keys: list[str], min_std: float = 1e-3) -> ObsNormalizer:
        """``min_std`` keeps constant dimensions (e.g. an unused quaternion sign) from dividing by ~0."""
        obs = np.asarray(obs, np.float64)  # float32 sums lose the small spread of e.g. a resting cube's height
        return cls(obs.mean(0).tolist(), np.maximum(obs.std(0), min_std).tolist(), list(keys))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return ((np.asarray(obs, np.float64) - self.mean) / np.asarray(self.std)).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps({"mean": self.mean, "std": self.std, "keys": self.keys})

    @classmethod
    def from_json(cls, text: str) -> ObsNormalizer:
        return cls(**json.loads(text))


def flatten_obs(obs: dict[str, np.ndarray], keys: tuple[str, ...] | list[str]) -> np.ndarray:
    """Concatenate robosuite observations in robomimic key order (``object`` → ``object-state``)."""
    missing = [k for k in keys if _ENV_KEY.get(k, k) not in obs]
    if missing:
        raise KeyError(f"observation keys {missing} are not in the env's observations {sorted(obs)}")
    return np.concatenate([np.asarray(obs[_ENV_KEY.get(k, k)], np.float32).ravel() for k in keys])


class RobomimicEnv:
    """Gymnasium-style wrapper: ``reset(seed)`` → (obs, info), ``step`` → (obs, r, terminated, truncated, info).

    Reward is the sparse robomimic task reward shifted to {-1, 0} (as the loaded data); an episode terminates
    at success (``info["success"]``), is truncated at ``max_episode_steps``.
    """

    def __init__(self, env_args: dict[str, Any] | str, max_episode_steps: int = 300,
                 obs_keys: tuple[str, ...] | list[str] = LOW_DIM_KEYS, normalizer: ObsNormalizer | None = None):
        self.env = make_robosuite_env(env_args)
        self.max_episode_steps, self.obs_keys, self.normalizer = max_episode_steps, tuple(obs_keys), normalizer
        self.action_dim = int(self.env.action_dim)
        self._t = 0

    def _obs(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        ob = flatten_obs(raw, self.obs_keys)
        return self.normalizer(ob) if self.normalizer is not None else ob

    def is_success(self) -> dict[str, bool]:
        return {"task": bool(self.env._check_success())}

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:  # robosuite's placement samplers share env.rng: reseed it in place
            self.env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self._t = 0
        return self._obs(self.env.reset()), {"success": 0.0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, np.float64)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action has shape {action.shape}, the env expects ({self.action_dim},)")
        raw, _, _, _ = self.env.step(action)
        self._t += 1
        success = self.is_success()["task"]
        info = {"success": float(success)}
        return self._obs(raw), float(success) - 1.0, success, self._t >= self.max_episode_steps, info

    def close(self) -> None:
        self.env.close()


@dataclass
class RobomimicEnvFactory:
    """Picklable env constructor for :func:`trqam_sdk.rollout.evaluation.evaluate`'s worker processes."""

    env_args: str
    max_episode_steps: int = 300
    obs_keys: tuple[str, ...] = LOW_DIM_KEYS
    normalizer: ObsNormalizer | None = None

    def __call__(self) -> RobomimicEnv:
        return RobomimicEnv(self.env_args, self.max_episode_steps, self.obs_keys, self.normalizer)
