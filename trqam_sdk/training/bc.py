"""BC pretraining of a prior: the BC method's loss in a plain loop (SPEC §6's first stage).

Kept apart from the Finetuner because a prior is trained once per seed before any fine-tuning, with its own
optimiser (Adam, no gradient clip unless ``grad_clip`` or ``conventions.bc_grad_clip`` — the authors' code clips
BC with the fine-tuning chain's 1.0, see trqam_sdk.conventions) and its own random stream (``seed + BC_SEED_OFFSET``).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.conventions import Conventions
from trqam_sdk.data.transitions import ChunkSampler, Transitions
from trqam_sdk.methods.bc import BCAgent
from trqam_sdk.training.checks import check_compatible
from trqam_sdk.training.nonfinite import NonFiniteTrainingError
from trqam_sdk.training.randomness import BC_SEED_OFFSET, draw_step


def pretrain_bc(policy: FlowPolicy, data: Transitions, steps: int, batch_size: int = 256, lr: float = 3e-4,
                seed: int = 0, progress: bool = True, grad_clip: float | None = None,
                conventions: Conventions | None = None) -> FlowPolicy:
    """Train ``policy`` in place by flow matching on dataset chunks; returns it.

    ``conventions`` (default: this SDK's) sets the BC loss scale, the chunk sampling, the action clip of the data
    and, unless ``grad_clip`` is given, the gradient clip. The network init is not applied here: build the policy
    with it (``MLP(..., init=...)`` or :func:`trqam_sdk.networks.mlp.reinit_`) before calling.
    """
    check_compatible(policy, data)
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"pretrain_bc: need steps >= 0, batch_size >= 1, lr > 0 (got {steps}, {batch_size}, {lr})")
    conv = conventions or Conventions()
    if grad_clip is None:
        grad_clip = conv.bc_grad_clip
    if conv.action_clip is not None:
        data = data.clip_actions(conv.action_clip)
    sampler = ChunkSampler(data, policy.spec.horizon, mode=conv.chunk_sampling)
    agent = BCAgent(policy, conventions=conv)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    spec = agent.noise_spec(batch_size)
    bar = tqdm(range(steps), desc="BC pretrain", disable=not progress, mininterval=1.0)
    for step in bar:
        idx, noise = draw_step(seed + BC_SEED_OFFSET, step, len(sampler), batch_size, spec)
        loss, _ = agent.loss(sampler.sample(idx), noise)
        if not torch.isfinite(loss):  # the prior anchors everything after it: never hand on a ruined one
            raise NonFiniteTrainingError(
                f"BC pretraining: the loss is {loss.item()} at step {step}, the prior's weights would be ruined; "
                "check the data's scale (normalise observations and actions), lr and batch_size")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return policy
