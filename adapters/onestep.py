"""A one-step, noise-conditioned policy μ(s, z) built from any flow adapter (FQL's distilled actor).

FQL (Park et al. 2025; QAM paper App. C.1 eq. 42) acts with a one-step map μ_ω(s, z), z ~ N(0, I), instead of
integrating a flow. Writing it as one Euler step of an inner flow, μ(s, z) = z + v_inner(s, z, t = 0), makes
it start as the prior's own one-step map and work for any adapter (an MLP, a VLA), and lets it be saved,
loaded (``load_policy``) and sampled alone like every other policy.
"""

from __future__ import annotations

import torch
from torch import Tensor
from trqam_sdk.adapters.base import Cond
from trqam_sdk.adapters.wrappers import InnerWrapper


class OneStepPolicy(InnerWrapper):
    """μ(s, z) = z + inner.velocity(inner.condition(s), z, 0): one Euler step of length 1 from the noise z.

    As a :class:`FlowPolicy`, its ``velocity`` is the inner field frozen at t = 0, so a T = 1 Euler ODE from z
    is exactly μ(s, z). :meth:`sample` always takes that single step: it **ignores** ``flow_steps`` (a one-step
    policy has no finer integration to offer) and returns clip(μ(s, z)) with z drawn from the generator.
    """

    type_name = "one_step"

    def velocity(self, cond: Cond, x: Tensor, t: Tensor) -> Tensor:
        """The inner velocity at t = 0 whatever ``t``: one unit Euler step from z gives μ(s, z)."""
        return self.inner.velocity(cond, x, torch.zeros_like(t))

    def one_step(self, cond: Cond, z: Tensor) -> Tensor:
        """μ(s, z) (B, H·A), unclipped and differentiable (FQL distils this, and clips it for the critic)."""
        return z + self.inner.velocity(cond, z, z.new_zeros(z.shape[0]))

    @torch.no_grad()
    def sample(self, obs: Tensor, flow_steps: int = 10, generator: torch.Generator | None = None) -> Tensor:
        """clip(μ(s, z)) as (B, H, A) chunks, z ~ N(0, I) drawn by :meth:`FlowPolicy.draw_noise`;
        ``flow_steps`` is ignored (one step)."""
        a = self.one_step(self.condition(obs), self.draw_noise(obs, generator))
        return a.clamp(self.spec.low, self.spec.high).view(-1, self.spec.horizon, self.spec.action_dim)
