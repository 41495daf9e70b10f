"""Flow-policy adapters: one protocol, one time convention (t = 0 noise → t = 1 action)."""

from adapters.base import ADAPTERS, ActionSpec, FlowPolicy, load_policy, repeat_condition, tree_map
from adapters.lerobot import LeRobotPI0Policy, LeRobotPI05Policy, LeRobotSmolVLAPolicy
from adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
from adapters.prefix_transformer import PrefixTransformerConfig, PrefixTransformerPolicy
from adapters.wrappers import ResidualPolicy, ReversedTimePolicy

__all__ = [
    "ADAPTERS", "ActionSpec", "FlowPolicy", "LeRobotPI05Policy", "LeRobotPI0Policy", "LeRobotSmolVLAPolicy",
    "MLPFlowPolicy", "MLPPolicyConfig", "PrefixTransformerConfig",
    "PrefixTransformerPolicy", "ResidualPolicy", "ReversedTimePolicy", "load_policy", "repeat_condition",
    "tree_map",
]
