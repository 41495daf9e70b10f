"""Flow-policy adapters: one protocol, one time convention (t = 0 noise → t = 1 action)."""

from trqam_sdk.adapters.base import ADAPTERS, ActionSpec, FlowPolicy, load_policy, repeat_condition, tree_map
from trqam_sdk.adapters.lerobot import LeRobotPI0Policy, LeRobotPI05Policy, LeRobotSmolVLAPolicy
from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
from trqam_sdk.adapters.onestep import OneStepPolicy as OneStepPolicy  # registers "one_step" for load_policy
from trqam_sdk.adapters.wrappers import ResidualPolicy, ReversedTimePolicy

__all__ = [
    "ADAPTERS", "ActionSpec", "FlowPolicy", "LeRobotPI05Policy", "LeRobotPI0Policy", "LeRobotSmolVLAPolicy",
    "MLPFlowPolicy", "MLPPolicyConfig", "ResidualPolicy", "ReversedTimePolicy", "load_policy", "repeat_condition",
    "tree_map",
]
