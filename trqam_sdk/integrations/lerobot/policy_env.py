"""A LeRobot env speaking the SDK's language: model-ready observation rows in, normalised [-1, 1] actions out.

The SDK's one episode loop (:class:`trqam_sdk.rollout.episode.ChunkStepper`: evaluation, online collection,
video) steps envs whose observations are what the policy and the critic read and whose actions live in the
SDK's box. :class:`LeRobotPolicyEnv` puts a LeRobot env (``{"pixels", "agent_pos"}`` observations, raw actions)
behind that interface with the checkpoint's own processors, exactly as ``lerobot-eval`` feeds a policy:

* observation = ``preprocessor(preprocess_observation(raw) + task)`` — the same pipeline
  :func:`trqam_sdk.integrations.lerobot.data.lerobot_transitions` runs on a dataset frame, so an online row and
  an offline row of the same frame are identical — keeping the ``observation.*`` tensors, batch dim removed,
  images stored as uint8 (``round(255 x)``, exact because the env renders uint8 and the checkpoint's VISUAL
  normalisation is IDENTITY: checked, loudly);
* action: the SDK's normalised ``a`` in [-1, 1]^A goes through the checkpoint's ``policy_postprocessor``
  (MIN_MAX: ``(a + 1) / 2 · (max − min) + min``) before the inner env steps.

:class:`PolicyEnvFactory` is the picklable zero-argument factory the spawn pool of ``evaluate`` needs: it builds
the inner env and loads the processors from the checkpoint folder (lerobot's JSON + safetensors, no pickles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from trqam_sdk.integrations.lerobot.data import OBS_KEYS_PREFIX, is_image_key, pad_language, store_uint8_images

PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")


def load_processors(policy_folder: str | Path) -> tuple[Any, Any]:
    """The checkpoint's ``policy_preprocessor`` and ``policy_postprocessor`` (on the CPU), from its folder."""
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import (
        batch_to_transition,
        policy_action_to_transition,
        transition_to_batch,
        transition_to_policy_action,
    )

    folder = Path(policy_folder)
    missing = [f for f in PROCESSOR_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: not a LeRobot checkpoint folder with its processors")
    pre = PolicyProcessorPipeline.from_pretrained(str(folder), config_filename=PROCESSOR_FILES[0],
                                                  overrides={"device_processor": {"device": "cpu"}},
                                                  to_transition=batch_to_transition, to_output=transition_to_batch)
    post = PolicyProcessorPipeline.from_pretrained(str(folder), config_filename=PROCESSOR_FILES[1],
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    return pre, post


def _normalizer(pipeline: Any) -> Any | None:
    """The pipeline's (un)normaliser step (it knows the checkpoint's features and normalisation modes)."""
    return next((s for s in getattr(pipeline, "steps", []) if hasattr(s, "norm_map") and hasattr(s, "features")),
                None)


def _check_visual_identity(preprocessor: Any) -> None:
    """uint8 storage is only exact when the model reads images as x / 255 unchanged (VISUAL IDENTITY)."""
    from lerobot.configs import FeatureType, NormalizationMode

    step = _normalizer(preprocessor)
    if step is None:
        return
    mode = step.norm_map.get(FeatureType.VISUAL, NormalizationMode.IDENTITY)
    if mode != NormalizationMode.IDENTITY:
        raise ValueError(f"the checkpoint's preprocessor normalises images with {mode.value}: the SDK stores "
                         "images as uint8 and needs VISUAL IDENTITY normalisation (images as x / 255)")


def _space(value: np.ndarray) -> gym.spaces.Space:
    if value.dtype == np.uint8:
        return gym.spaces.Box(0, 255, value.shape, np.uint8)
    if value.dtype == np.bool_:
        return gym.spaces.MultiBinary(list(value.shape))
    if np.issubdtype(value.dtype, np.integer):
        info = np.iinfo(value.dtype)
        return gym.spaces.Box(info.min, info.max, value.shape, value.dtype)
    return gym.spaces.Box(-np.inf, np.inf, value.shape, value.dtype)


class LeRobotPolicyEnv(gym.Wrapper):
    """``env`` with observations = the checkpoint's model rows (numpy, no batch dim, uint8 images) and the
    action box [-1, 1]^A (unnormalised by ``postprocessor`` before the inner step). ``task`` is the language
    instruction (default: the inner env's ``task_description``, what ``lerobot-eval`` uses). ``token_length``
    right-pads the language tokens with 0 as ``lerobot_transitions`` pads a dataset's rows (SmolVLA tokenises to
    the longest prompt): pass the dataset's token width when online rows join its replay buffer."""

    def __init__(self, env: Any, preprocessor: Any, postprocessor: Any, task: str | None = None,
                 token_length: int | None = None):
        super().__init__(env)
        self.token_length = token_length
        self.preprocessor, self.postprocessor = preprocessor, postprocessor
        task = task if task is not None else getattr(env.unwrapped, "task_description", None)
        if not isinstance(task, str):
            raise ValueError("LeRobotPolicyEnv needs the task string (the language instruction): pass task=..., "
                             "or wrap an env with a `task_description`")
        self.task = task
        _check_visual_identity(preprocessor)
        norm = _normalizer(preprocessor)
        self.features = dict(norm.features) if norm is not None else {}
        shape = getattr(env.action_space, "shape", None)
        if not shape or len(shape) != 1:
            raise ValueError(f"LeRobotPolicyEnv needs a flat Box action space, the env has {env.action_space}")
        self.action_dim = int(shape[0])
        want = self.features.get("action")
        if want is not None and tuple(want.shape) != (self.action_dim,):
            raise ValueError(f"the checkpoint acts with {tuple(want.shape)} actions, the env takes "
                             f"({self.action_dim},)")
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        probe = self.observe(env.observation_space.sample()) if isinstance(env.observation_space,
                                                                          gym.spaces.Dict) else None
        if probe is not None:
            self.observation_space = gym.spaces.Dict({k: _space(v) for k, v in probe.items()})

    # -- observations -------------------------------------------------------------------------------------
    def observe(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """One raw env observation → the model row (what ``lerobot_transitions`` stores for the same frame)."""
        from lerobot.envs.utils import preprocess_observation

        if not isinstance(raw, dict):
            raise ValueError(f"LeRobotPolicyEnv: the env's observation must be a dict (pixels, agent_pos), "
                             f"got {type(raw).__name__}")
        if isinstance(raw.get("pixels"), np.ndarray) and raw["pixels"].dtype != np.uint8:
            raise ValueError(f"observation 'pixels': expected uint8 (H, W, 3) images, got {raw['pixels'].dtype}")
        batch = dict(preprocess_observation(raw))
        self._check_features(batch, sorted(raw))
        images = {k: v.clone() for k, v in batch.items() if is_image_key(k)}
        batch["task"] = [self.task]
        out = self.preprocessor(batch)
        row = {k: v for k, v in out.items() if k.startswith(OBS_KEYS_PREFIX) and isinstance(v, Tensor)}
        if self.token_length is not None:
            row.update({k: pad_language(k, v, self.token_length) for k, v in row.items()
                        if v.ndim == 2 and "language" in k})
        row = store_uint8_images(row, images, "LeRobotPolicyEnv")
        return {k: v[0].detach().cpu().numpy() for k, v in row.items()}

    def _check_features(self, batch: dict[str, Tensor], raw_keys: list[str]) -> None:
        """Every camera / state the checkpoint reads must come out of the env with its shape."""
        for key, ft in self.features.items():
            if not key.startswith(OBS_KEYS_PREFIX):
                continue
            if key not in batch:
                raise ValueError(f"the checkpoint reads {key!r}, which the env does not give (its observation "
                                 f"has {raw_keys} → {sorted(batch)})")
            got = tuple(batch[key].shape[1:])
            if got != tuple(ft.shape):
                raise ValueError(f"observation {key!r}: the env gives {got}, the checkpoint expects "
                                 f"{tuple(ft.shape)} (image size / state dim)")

    # -- actions ------------------------------------------------------------------------------------------
    def unnormalize(self, action: Any) -> np.ndarray:
        """SDK action(s) in [-1, 1] ((A,) or (B, A)) → the env's actions, via the checkpoint's postprocessor."""
        a = torch.as_tensor(np.asarray(action, dtype=np.float32))
        if a.shape[-1:] != (self.action_dim,) or a.ndim > 2:
            raise ValueError(f"action: expected ({self.action_dim},) or (B, {self.action_dim}), got {tuple(a.shape)}")
        out = self.postprocessor(a.reshape(-1, self.action_dim))
        return out.detach().cpu().numpy().reshape(a.shape)

    # -- gymnasium ----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observe(obs), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        act = np.asarray(action, dtype=np.float32)
        if act.shape != (self.action_dim,):
            raise ValueError(f"action: expected shape ({self.action_dim},), got {act.shape}")
        obs, reward, terminated, truncated, info = self.env.step(self.unnormalize(act))
        return self.observe(obs), reward, terminated, truncated, info


@dataclass(frozen=True)
class PolicyEnvFactory:
    """Picklable: builds ``env_factory()`` wrapped in :class:`LeRobotPolicyEnv` with the processors of the
    checkpoint in ``policy_folder`` (for ``evaluate``'s spawn workers, the online phase and video)."""

    env_factory: Callable[[], Any]
    policy_folder: str
    task: str | None = None
    token_length: int | None = None

    def __call__(self) -> LeRobotPolicyEnv:
        pre, post = load_processors(self.policy_folder)
        return LeRobotPolicyEnv(self.env_factory(), pre, post, self.task, self.token_length)
