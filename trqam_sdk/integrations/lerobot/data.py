"""LeRobotDataset (a local root) → the SDK's :class:`Transitions`, through the checkpoint's own pre-processor.

Every frame goes through the policy's lerobot pre-processor once (normalisation, tokenisation — pi0.5's state
tokens included), so the fine-tune sees exactly the inputs lerobot's training would. Rewards come from
``next.reward`` and termination from ``next.done`` (mask 0: no bootstrapping past it); episode ends from
``episode_index``. The observation after an episode's last frame is not stored by LeRobot, so the last frame's
own observation stands in for it (it only matters for truncated, not terminated, episodes). The whole dataset
is materialised in memory: fine for the small fine-tuning sets this is for, not for 100k-frame image sets.
Camera images are stored as uint8 (``round(255 x)``, exact: LeRobot decodes 8-bit images as ``k / 255``), a
quarter of the float32 bytes; the adapters and the critic convert them back to ``float / 255`` where they read
them, bit-identically. That needs a checkpoint whose pre-processor leaves images unchanged (VISUAL IDENTITY
normalisation), which is checked frame by frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trqam_sdk.data.transitions import Transitions

REWARD, DONE = "next.reward", "next.done"
OBS_KEYS_PREFIX = "observation."


def _stack(rows: list[dict[str, Any]], key: str) -> Tensor:
    return torch.stack([torch.as_tensor(r[key]) for r in rows])


def is_image_key(key: str) -> bool:
    """LeRobot's camera keys: ``observation.image`` (one camera) and ``observation.images.<name>``."""
    return key == "observation.image" or key.startswith("observation.images.")


def quantise_images(out: dict[str, Tensor], raw: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
    """``out`` (pre-processed rows) with each camera of ``raw`` (the float [0, 1] images fed to the pre-processor)
    as uint8 ``round(255 x)``, and None; or ``out`` unchanged and the reason that would not be lossless: the
    pre-processor must pass the image through unchanged (VISUAL IDENTITY normalisation, no resize) and the image
    must be 8-bit (values k / 255, as LeRobot decodes images and ``preprocess_observation`` converts them)."""
    from trqam_sdk.networks.encoders import unit_image

    new = dict(out)
    for key, img in raw.items():
        if key not in out:
            continue
        if out[key].shape != img.shape or out[key].dtype != img.dtype or not torch.equal(out[key], img):
            return out, (f"the checkpoint's pre-processor changes {key!r} (VISUAL normalisation other than "
                         "IDENTITY, or a resize / cast): images can only be stored as uint8 when the model reads "
                         "x / 255 unchanged")
        u8 = (img.float() * 255).round().clamp(0, 255).to(torch.uint8)
        if not torch.equal(unit_image(u8, key), img.float()):
            return out, f"{key!r} is not an 8-bit image (its values are not k / 255)"
        new[key] = u8
    return new, None


def store_uint8_images(out: dict[str, Tensor], raw: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """:func:`quantise_images`, raising (naming ``where`` and the key) when uint8 storage would not be exact."""
    new, why = quantise_images(out, raw)
    if why is not None:
        raise ValueError(f"{where}: {why}")
    return new


def lerobot_transitions(dataset: Any, preprocessor: Any, batch_size: int = 64,
                        action_bound: float = 1.0, uint8_images: bool | None = None) -> Transitions:
    """Convert a LeRobotDataset into Transitions with dict observations (pre-processed model inputs).

    Camera images are stored as uint8 when that is exact (:func:`quantise_images`): ``uint8_images=True``
    requires it (raises otherwise), ``False`` keeps the pre-processor's float images, None (default) decides on
    the first batch — uint8 for LeRobotDatasets of 8-bit images with a VISUAL IDENTITY checkpoint."""
    n = len(dataset)
    if n == 0:
        raise ValueError("the LeRobotDataset is empty")
    first = dataset[0]
    for key in (REWARD, DONE, "action", "episode_index", "task"):
        if key not in first:
            raise KeyError(f"the LeRobotDataset has no {key!r} feature (has {sorted(first)}): TRQAM needs "
                           f"rewards ({REWARD}) and done flags ({DONE})")
    obs_parts: list[dict[str, Tensor]] = []
    actions, rewards, dones, episodes = [], [], [], []
    for start in range(0, n, batch_size):
        rows = [dataset[i] for i in range(start, min(n, start + batch_size))]
        raw = {k: _stack(rows, k) for k in rows[0] if k.startswith(OBS_KEYS_PREFIX)}
        raw["action"] = _stack(rows, "action")
        images = {k: v.clone() for k, v in raw.items() if is_image_key(k)} if uint8_images is not False else {}
        raw["task"] = [r["task"] for r in rows]
        out = preprocessor(raw)
        part = {k: v for k, v in out.items() if k.startswith(OBS_KEYS_PREFIX) and isinstance(v, Tensor)}
        if images:
            quantised, why = quantise_images(part, images)
            if why is None:
                part, uint8_images = quantised, True
            elif uint8_images:
                raise ValueError(f"lerobot_transitions (frames {start}..{start + len(rows) - 1}): {why} "
                                 "(uint8_images=False keeps float images)")
            else:
                uint8_images = False
        obs_parts.append(part)
        actions.append(out["action"].float())
        rewards.append(_stack(rows, REWARD).float().reshape(-1))
        dones.append(_stack(rows, DONE).float().reshape(-1))
        episodes.append(_stack(rows, "episode_index").reshape(-1))
    obs = _concat_obs(obs_parts)
    act = torch.cat(actions)
    amax = float(act.abs().max())
    if amax > action_bound + 1e-5:
        raise ValueError(f"normalised actions reach |a| = {amax:.4g} > {action_bound}: the SDK needs actions in "
                         "[-1, 1] — use MIN_MAX or QUANTILES action normalisation with statistics that cover the data")
    act = act.clamp(-action_bound, action_bound)
    ep = torch.cat(episodes)
    terminals = torch.ones(n)
    terminals[:-1] = (ep[1:] != ep[:-1]).float()
    nxt = torch.arange(n) + 1 - terminals.long()  # s_{i+1} inside an episode, the last frame at its end
    next_obs = {k: v[nxt] for k, v in obs.items()}
    return Transitions(observations=obs, actions=act, rewards=torch.cat(rewards), masks=1.0 - torch.cat(dones),
                       terminals=terminals, next_observations=next_obs)


def _concat_obs(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate per-batch observation dicts; language tokens are right-padded to a common length."""
    out = {}
    for key in parts[0]:
        vals = [p[key] for p in parts]
        if vals[0].ndim == 2 and "language" in key:
            width = max(v.shape[1] for v in vals)
            vals = [pad_language(key, v, width) for v in vals]
        out[key] = torch.cat(vals)
    return out


def pad_language(key: str, value: Tensor, width: int) -> Tensor:
    """(B, L) language tokens / attention mask right-padded with 0 (id 0, mask False) to ``width`` — how rows of
    different prompt lengths (SmolVLA pads to the longest in a batch) share one tensor."""
    if value.shape[1] > width:
        raise ValueError(f"{key!r}: {value.shape[1]} tokens do not fit the {width} of the stored rows (a longer "
                         "task string than any in the dataset): raise the token length")
    return torch.nn.functional.pad(value, (0, width - value.shape[1]))


def write_synthetic_dataset(root: str | Path, repo_id: str = "local/trqam-synthetic", episodes: int = 4,
                            length: int = 12, state_dim: int = 4, action_dim: int = 3, image_size: int = 32,
                            fps: int = 10, seed: int = 0) -> Any:
    """A LeRobotDataset on disk with rewards and done flags (test and benchmark tooling).

    Actions are uniform in [-1.8, 1.8] per dim (inside the tiny models' [-2, 2] normalisation range); the reward
    is the first action dim divided by 2, so a critic learns that larger a[0] is better; odd episodes end
    with ``next.done`` (a true termination), even ones are truncated.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(seed)
    features = {
        "observation.images.top": {"dtype": "image", "shape": (image_size, image_size, 3),
                                   "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (state_dim,), "names": None},
        "action": {"dtype": "float32", "shape": (action_dim,), "names": None},
        REWARD: {"dtype": "float32", "shape": (1,), "names": None},
        DONE: {"dtype": "bool", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id, fps, features, root=str(root), use_videos=False)
    tasks = ["pick the cube", "push the block left"]
    for e in range(episodes):
        for i in range(length):
            action = rng.uniform(-1.8, 1.8, action_dim).astype(np.float32)
            ds.add_frame({
                "observation.images.top": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
                "observation.state": rng.normal(size=state_dim).astype(np.float32),
                "action": action,
                REWARD: np.array([action[0] / 2.0], dtype=np.float32),
                DONE: np.array([e % 2 == 1 and i == length - 1]),
                "task": tasks[e % len(tasks)],
            })
        ds.save_episode()
    ds.finalize()
    return LeRobotDataset(repo_id, root=str(root))
