"""Adapters for LeRobot 0.6's flow VLAs — pi0, pi0.5 and SmolVLA — behind the SDK's FlowPolicy protocol.

:mod:`.base` holds what every LeRobot flow policy shares (loading a checkpoint and its processors, the
observation check, action padding, the time convention, what trains, LoRA, saving in lerobot's format);
:mod:`.prefix` what assumes a vision-language prefix cached as a KV cache (the pi0 family and SmolVLA).
lerobot itself is imported only when a checkpoint is loaded or a prefix computed.
"""

from __future__ import annotations

from pathlib import Path

from trqam_sdk.adapters.lerobot.base import VLM_DTYPES, LeRobotFlowPolicy, lerobot_type, resolve_checkpoint
from trqam_sdk.adapters.lerobot.prefix import (
    KVPrefixPolicy,
    LeRobotPI0Policy,
    LeRobotPI05Policy,
    LeRobotSmolVLAPolicy,
)

LEROBOT_ADAPTERS: dict[str, type[LeRobotFlowPolicy]] = {
    c.lerobot_type: c for c in (LeRobotPI0Policy, LeRobotPI05Policy, LeRobotSmolVLAPolicy)}


def from_pretrained(path_or_repo: str | Path, revision: str | None = None, lora_rank: int = 0, *,
                    vlm_dtype: str = "float32", gradient_checkpointing: bool = False) -> LeRobotFlowPolicy:
    """Load any supported lerobot checkpoint (pi0, pi05, smolvla) as an SDK adapter.

    ``vlm_dtype="bfloat16"`` stores and runs the frozen VLM / prefix in bf16 (the expert stays fp32);
    ``gradient_checkpointing`` recomputes the expert's layers in the backward of every pass with a graph."""
    folder = resolve_checkpoint(path_or_repo, revision)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a LeRobot checkpoint folder")
    kind = lerobot_type(folder)
    if kind not in LEROBOT_ADAPTERS:
        raise ValueError(f"{folder}/config.json has lerobot type {kind!r}; supported: {sorted(LEROBOT_ADAPTERS)}")
    return LEROBOT_ADAPTERS[kind].from_pretrained(folder, lora_rank=lora_rank, vlm_dtype=vlm_dtype,
                                                  gradient_checkpointing=gradient_checkpointing)


__all__ = ["LEROBOT_ADAPTERS", "VLM_DTYPES", "KVPrefixPolicy", "LeRobotFlowPolicy", "LeRobotPI05Policy",
           "LeRobotPI0Policy", "LeRobotSmolVLAPolicy", "from_pretrained"]
