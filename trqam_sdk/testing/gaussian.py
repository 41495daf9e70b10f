"""A flow policy whose velocity field is known in closed form: the test double of SPEC §7's oracles.

For the linear path x_t = (1 − t) x0 + t x1 with x0 ~ N(0, I) and x1 ~ N(μ0, Σ0), x_t is Gaussian with mean t μ0
and covariance C_t = (1 − t)² I + t² Σ0, and the marginal velocity is E[x1 − x0 | x_t] =
μ0 + (t Σ0 − (1 − t) I) C_t⁻¹ (x_t − t μ0). Every method's closed-form toy (a tilt, a best-of-N shift, a noise-space
corner) starts from this prior.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trqam_sdk.adapters import ActionSpec, FlowPolicy


class GaussianPrior(FlowPolicy):
    """The exact flow velocity of N(μ0, Σ0) in 2-D (module docstring), as a condition-free FlowPolicy."""

    def __init__(self, mu: Tensor, cov: Tensor):
        super().__init__()
        self.spec = ActionSpec(1, 2)
        self.mu, self.cov = mu, cov

    def condition(self, obs: Tensor) -> Tensor:
        return obs

    def velocity(self, cond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        t = t.to(x.dtype)[:, None]
        s, mu = self.cov.to(x.dtype), self.mu.to(x.dtype)
        c00, c11, c01 = (1 - t) ** 2 + t**2 * s[0, 0], (1 - t) ** 2 + t**2 * s[1, 1], t**2 * s[0, 1]
        det = c00 * c11 - c01**2
        r = x - t * mu
        y0, y1 = (c11 * r[:, :1] - c01 * r[:, 1:]) / det, (c00 * r[:, 1:] - c01 * r[:, :1]) / det  # C_t⁻¹ r
        k00, k11, k01 = t * s[0, 0] - (1 - t), t * s[1, 1] - (1 - t), t * s[0, 1]
        return mu + torch.cat([k00 * y0 + k01 * y1, k01 * y0 + k11 * y1], dim=1)
