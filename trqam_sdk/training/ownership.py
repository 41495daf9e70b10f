"""Which tensors of an agent a checkpoint writes where: the policy once, the algorithm's own state apart.

LeRobot's ``RLAlgorithm.state_dict()`` contract is the model: the algorithm file holds everything the method
owns *except* the policy (critics, targets, λ and its EMA, a base or reference only where it trains), so the
policy stays loadable alone and a frozen backbone shared by the policy and the method's copies (a VLA's VLM) is
never written twice. Copies that never change (a frozen reference) are not written at all: they are rebuilt
from the prior passed on resume and checked against a fingerprint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trqam_sdk.methods.base import Agent


def _ptr(t: Tensor) -> int | None:
    return t.untyped_storage().data_ptr() if t.numel() else None


def policy_save_is_exact(agent: Agent) -> bool:
    """True when ``policy.save_pretrained`` round-trips every tensor of the policy exactly (not, e.g., a merged
    LoRA), so the checkpoint's ``policy/`` folder restores it."""
    return bool(getattr(agent.policy, "save_is_exact", True))


def split_state(agent: Agent) -> tuple[dict[str, Tensor], list[str]]:
    """(tensors the algorithm file holds, keys restored from elsewhere and fingerprinted instead).

    Policy tensors are written by ``policy/`` — except its trainable ones when that save is not exact; tensors
    sharing storage with the policy (a frozen VLM inside the base and the reference) come back with it; keys
    under the agent's ``frozen_prefixes()`` never change."""
    prefix = agent.policy_attr + "."
    exact = policy_save_is_exact(agent)
    trainable = {prefix + n for n, p in agent.policy.named_parameters() if p.requires_grad}
    policy_ptrs = {_ptr(t) for t in agent.policy.state_dict().values()} - {None}
    frozen = agent.frozen_prefixes()
    own: dict[str, Tensor] = {}
    rebuilt: list[str] = []
    for key, value in agent.state_dict().items():
        if key.startswith(prefix):
            if not exact and key in trainable:
                own[key] = value
            elif not exact:
                rebuilt.append(key)  # a frozen part of the policy: from the prior on resume
        elif _ptr(value) in policy_ptrs:
            continue  # shares the policy's storage: restored with the policy (or the prior)
        elif frozen and key.startswith(frozen):
            rebuilt.append(key)
        else:
            own[key] = value
    return own, rebuilt


def fingerprint(agent: Agent, keys: list[str]) -> dict[str, float]:
    """Cheap per-key fingerprints (float64 sum and sum of squares) of tensors a resume rebuilds from the prior."""
    sd = agent.state_dict()
    out: dict[str, float] = {}
    for k in keys:
        t = sd[k]
        if t.is_floating_point():
            out[k] = float(t.sum(dtype=torch.float64)) + float(t.double().square().sum()) * 1e-3
    return out


def check_fingerprint(saved: dict[str, Any], agent: Agent, where: str) -> None:
    """Refuse a resume whose prior differs from the one the run started from."""
    now = fingerprint(agent, sorted(saved))
    bad = [k for k in saved if k not in now or abs(now[k] - saved[k]) > 1e-6 * (1.0 + abs(saved[k]))]
    if bad:
        raise ValueError(f"{where}: the frozen copies rebuilt from the prior differ from the run's ({bad[:3]}...): "
                         "resume with the same pretrained policy the run started from")
