"""Pluggable reward sources: the env's reward, sparse success, a learned success detector (LeRobot's reward
classifier), or your own (``@register_reward``). See docs/rewards.md."""

from trqam_sdk.rewards.classifier import (
    ClassifierReward,
    build_tiny_backbone,
    load_success_classifier,
    success_pairs,
    train_success_classifier,
)
from trqam_sdk.rewards.registry import (
    IMAGE_KEY,
    RewardInputs,
    RewardSource,
    make_reward,
    register_reward,
    reward_names,
)
from trqam_sdk.rewards.sources import (
    DatasetFrames,
    EnvReward,
    RewardWrapper,
    SparseReward,
    dataset_frames,
    load_frames,
    next_frame_index,
    relabel,
    relabel_transitions,
)

__all__ = ["IMAGE_KEY", "ClassifierReward", "DatasetFrames", "EnvReward", "RewardInputs", "RewardSource",
           "RewardWrapper", "SparseReward", "build_tiny_backbone", "dataset_frames", "load_frames",
           "load_success_classifier", "make_reward", "next_frame_index", "register_reward", "relabel",
           "relabel_transitions", "reward_names", "success_pairs", "train_success_classifier"]
