"""Record one evaluation episode to an mp4 (needs a GL backend: ``MUJOCO_GL=egl`` works here, ~2 fps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.rollout.episode import ActFn, EnvFactory, Step, run_episode


def record_episode(act_fn: ActFn, env_factory: EnvFactory, path: str | Path, seed: int = 0, fps: int = 30) -> Path:
    """Roll one episode (the evaluation loop) in an env from ``env_factory`` (built with ``render_mode=
    "rgb_array"``) and write the reset frame plus one frame per step to ``path``."""
    import cv2

    env = env_factory()
    frames: list[Any] = []

    def frame(_: Step | None = None) -> None:
        img = env.render()
        if img is None:
            raise RuntimeError("env.render() returned None: build the video env with render_mode='rgb_array'")
        frames.append(img)

    try:
        run_episode(env, act_fn, seed, on_step=frame)  # the reset frame, then one per step
    finally:
        env.close()
    path = Path(path)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for img in frames:
        writer.write(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"writing {path} failed (OpenCV mp4v codec unavailable?)")
    return path
