"""Record one evaluation episode to an mp4 (needs a GL backend: ``MUJOCO_GL=egl`` works here, ~2 fps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def record_episode(act_fn: Any, env_name: str, path: str | Path, seed: int = 0,
                   env_kwargs: dict[str, Any] | None = None, fps: int = 30) -> Path:
    """Roll one episode (chunks open-loop, as in evaluation) and write its rendered frames to ``path``."""
    import cv2
    import gymnasium
    import ogbench  # noqa: F401

    env = gymnasium.make(env_name, render_mode="rgb_array", **(env_kwargs or {}))
    if hasattr(act_fn, "reseed"):
        act_fn.reseed(seed)
    ob, _ = env.reset(seed=seed)
    frames, done = [env.render()], False
    while not done:
        chunk = act_fn(torch.as_tensor(np.asarray(ob, dtype=np.float32))[None])
        for action in np.asarray(chunk.detach().cpu())[0]:
            ob, _, terminated, truncated, _ = env.step(np.clip(action, -1.0, 1.0))
            frames.append(env.render())
            done = terminated or truncated
            if done:
                break
    env.close()
    path = Path(path)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"writing {path} failed (OpenCV mp4v codec unavailable?)")
    return path
