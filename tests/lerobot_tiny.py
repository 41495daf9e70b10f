"""Shared tiny LeRobot models for the VLA tests: built once per session, saved once as lerobot checkpoints.

Not a test module: test_lerobot_adapters.py and test_hub.py import it. lerobot must be importable — a missing
lerobot fails these tests loudly instead of skipping them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS, LeRobotFlowPolicy

from trqam_sdk.testing.tiny_lerobot import IMAGE_KEY, build_tiny_lerobot

KINDS = ["pi0", "pi05", "smolvla"]
STATE_DIM, ACTION_DIM, CHUNK, IMAGE = 4, 3, 8, 32
TASKS = ["pick the cube", "push the block left", "place it on the plate"]


@dataclass
class Tiny:
    kind: str
    policy: Any
    """the lerobot policy"""
    pre: Any
    post: Any
    adapter: LeRobotFlowPolicy
    checkpoint: Path
    """lerobot checkpoint folder (config.json, model.safetensors, processors) of ``adapter``"""

    def fresh(self) -> LeRobotFlowPolicy:
        return copy.deepcopy(self.adapter)

    def raw(self, batch: int, g: torch.Generator) -> dict[str, Any]:
        """A raw (unprocessed) lerobot observation batch."""
        return {IMAGE_KEY: torch.rand(batch, 3, IMAGE, IMAGE, generator=g),
                "observation.state": torch.randn(batch, STATE_DIM, generator=g),
                "task": [TASKS[int(i)] for i in torch.randint(len(TASKS), (batch,), generator=g)]}

    def obs(self, batch: int, dtype: torch.dtype = torch.float32, g: torch.Generator | None = None) -> dict:
        """A pre-processed observation batch (what the adapter's ``condition`` takes)."""
        out = self.pre(self.raw(batch, g or torch.Generator().manual_seed(0)))
        return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in out.items()
                if k.startswith("observation.") and isinstance(v, Tensor)}


_CACHE: dict[str, Tiny] = {}


def tiny(kind: str, root: Path) -> Tiny:
    """The session's tiny ``kind`` model (built under ``root`` on first use)."""
    if kind not in _CACHE:
        torch.manual_seed(0)
        policy, pre, post = build_tiny_lerobot(kind, root / kind, chunk_size=CHUNK, state_dim=STATE_DIM,
                                               action_dim=ACTION_DIM, image_size=IMAGE)
        adapter = LEROBOT_ADAPTERS[kind](policy, pre, post)
        with torch.no_grad():  # random init has tiny output layers: make the expert's field non-trivial
            out = adapter.policy.model.action_out_proj
            out.weight.normal_(0.0, 0.15, generator=torch.Generator().manual_seed(1))
        checkpoint = adapter.save_pretrained(root / f"{kind}-checkpoint")
        _CACHE[kind] = Tiny(kind, adapter.policy, pre, post, adapter, checkpoint)
    return _CACHE[kind]
