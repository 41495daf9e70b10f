"""Checks that a policy and a dataset fit together, before any tensor is built."""

from __future__ import annotations

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.data.transitions import Transitions


def check_compatible(policy: FlowPolicy, data: Transitions) -> None:
    if data.action_dim != policy.spec.action_dim:
        raise ValueError(f"data actions have dim {data.action_dim}, the policy expects {policy.spec.action_dim}")
    if isinstance(data.observations, dict):  # the adapter validates dict observations in `condition`
        return
    obs_dim = getattr(getattr(policy, "config", None), "obs_dim", data.obs_dim)
    if obs_dim != data.obs_dim:
        raise ValueError(f"data observations have dim {data.obs_dim}, the policy expects {obs_dim}")
