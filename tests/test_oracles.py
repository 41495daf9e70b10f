"""Closed-form oracles of SPEC §7: tilt, KL identity, adjoint, dual. Run ``pytest -s`` to see the numbers.

The toy: a 2-D Gaussian prior N(μ0, Σ0) whose flow velocity for the linear path x_t = (1 - t) x0 + t x1,
x0 ~ N(0, I), is known exactly. With m_t = t μ0, C_t = Cov(x_t) = (1 - t)² I + t² Σ0 and
Cov(x1 - x0, x_t) = t Σ0 - (1 - t) I, the conditional mean is
    v(x, t) = E[x1 - x0 | x_t = x] = μ0 + (t Σ0 - (1 - t) I) C_t⁻¹ (x - t μ0).
With Q(a) = wᵀa the tilt π0 · exp(Q/Λ) is N(μ0 + Σ0 w / Λ, Σ0), and a_T = -w everywhere (no clip: the
flow and objective functions are called directly, as the agent would, minus the critic).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, kl_divergence
from trqam_sdk.adapters import MLPFlowPolicy, MLPPolicyConfig, ResidualPolicy

from trqam_sdk.core.dual import DualState, dual_update
from trqam_sdk.core.flow import lean_adjoint, memoryless_g, sample_memoryless, sample_ode, time_grid
from trqam_sdk.core.losses import adjoint_matching_loss, path_kl
from trqam_sdk.testing.gaussian import GaussianPrior

MU0 = torch.tensor([0.2, -0.1])
SIGMA0 = torch.tensor([[0.3, -0.1], [-0.1, 0.4]])
W = torch.tensor([3.0, -1.5])  # Σ0 w = (1.05, -0.9): both components well resolved


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one thread is fastest on a busy box


def test_gaussian_prior_velocity_is_exact() -> None:
    """Sanity of the oracle itself: equals a generic linear solve; a fine Euler ODE lands on N(μ0, Σ0)."""
    prior = GaussianPrior(MU0.double(), SIGMA0.double())
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(64, 2, generator=gen, dtype=torch.float64), torch.rand(64, generator=gen).double()
    eye, tt = torch.eye(2, dtype=torch.float64), t[:, None, None]
    c = (1 - tt) ** 2 * eye + tt**2 * SIGMA0.double()
    k = tt * SIGMA0.double() - (1 - tt) * eye
    want = MU0.double() + (k @ torch.linalg.solve(c, (x - t[:, None] * MU0.double())[..., None]))[..., 0]
    torch.testing.assert_close(prior.velocity(None, x, t), want)
    x1 = sample_ode(prior.velocity_fn(None), torch.randn(100_000, 2, generator=gen, dtype=torch.float64), 400)
    print(f"\n[prior] ODE(T=400) mean {x1.mean(0).tolist()} cov {torch.cov(x1.T).flatten().tolist()}")
    torch.testing.assert_close(x1.mean(0), MU0.double(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x1.T), SIGMA0.double(), atol=0.01, rtol=0)


# -- Tilt ---------------------------------------------------------------------------------------------------


def trqam_temperature(lam: float, lam_scale: float) -> float:
    """TRQAM's Λ = lam_scale · λ (TRQAMAgent.temperature), in the agent's float32."""
    return float(lam_scale * torch.tensor(lam))


@dataclass
class TiltResult:
    big_lambda: float
    shift: Tensor
    target: Tensor
    std_ratio: Tensor
    kl_ema: float
    seconds: float

    @property
    def shift_error(self) -> float:
        return float((self.shift - self.target).norm() / self.target.norm())


def finetune_tilt(*, lam: float, lam_scale: float, steps: int, flow_steps: int = 50, batch: int = 64,
                  lr: float = 2e-3, kl_budget: float | None = None, lam_lr: float = 0.01,
                  seed: int = 0) -> TiltResult:
    """SPEC §3 steps 1, 3–7 on the toy with a residual MLP v_θ = v_base + f_θ (f zero-initialised) and Adam.

    λ is frozen unless ``kl_budget`` is given, in which case ``dual_update`` moves it after every step.
    Returns the ODE-sample mean shift (fine-tuned − base, same x0, same T) against Σ0 w / Λ_final.
    """
    torch.manual_seed(seed)
    base = GaussianPrior(MU0, SIGMA0)
    policy = ResidualPolicy(base, MLPFlowPolicy(MLPPolicyConfig(0, 1, 2, width=64, depth=2)))
    T, h = flow_steps, 1.0 / flow_steps
    ts = time_grid(T)
    g = memoryless_g(ts, h)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=lr)
    v_base = base.velocity_fn(None)
    v_theta = policy.velocity_fn(policy.condition(torch.zeros(batch, 0)))
    cond_flat = policy.condition(torch.zeros(T * batch, 0))
    a_T = -W.expand(batch, 2)
    state = DualState(lam=lam, kl_ema=0.0)
    start = time.perf_counter()
    for _ in range(steps):
        big_lambda = trqam_temperature(state.lam, lam_scale)
        sigma = g / math.sqrt(big_lambda)
        xs = sample_memoryless(v_theta, v_base, torch.randn(batch, 2), torch.randn(T - 1, batch, 2))
        adj = lean_adjoint(v_base, xs[:-1], a_T)
        x_flat, t_flat = xs[:-1].reshape(T * batch, 2), ts.repeat_interleave(batch)
        vf = policy.velocity(cond_flat, x_flat, t_flat).view(T, batch, 2)
        vr = base.velocity(None, x_flat, t_flat).view(T, batch, 2)
        loss = adjoint_matching_loss(vf, vr, adj, sigma).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if kl_budget is not None:  # after the gradient step, with this step's D̂
            kl = float(path_kl(vf.detach(), vr, g, h, horizon=1).mean())
            state = dual_update(state, kl, kl_budget, lam_lr=lam_lr)
    seconds = time.perf_counter() - start
    n = 8192
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    x_base = sample_ode(v_base, x0, T)
    x_ft = sample_ode(policy.velocity_fn(policy.condition(torch.zeros(n, 0))), x0, T)
    big_lambda = trqam_temperature(state.lam, lam_scale)
    return TiltResult(big_lambda, x_ft.mean(0) - x_base.mean(0), SIGMA0 @ W / big_lambda,
                      x_ft.std(0) / x_base.std(0), state.kl_ema, seconds)


def _report(name: str, r: TiltResult) -> None:
    print(f"\n[tilt:{name}] Λ={r.big_lambda:.4f} shift={[round(v, 4) for v in r.shift.tolist()]} "
          f"target Σ0w/Λ={[round(v, 4) for v in r.target.tolist()]} shift_err={100 * r.shift_error:.2f}% "
          f"std_ratio={[round(v, 4) for v in r.std_ratio.tolist()]} ({r.seconds:.1f}s train)")


@pytest.mark.parametrize("lam", [2.0 / 3.0, 4.0 / 3.0], ids=["Lambda2", "Lambda4"])  # Λ = 3 λ
def test_tilt_frozen_lambda(lam: float) -> None:
    """Fixed λ: the fine-tuned ODE mean moves by Σ0 w / Λ (5 %) and the spread is unchanged (5 %)."""
    r = finetune_tilt(lam=lam, lam_scale=3.0, steps=400)
    _report(f"frozen λ={lam:.3f}", r)
    assert r.big_lambda == pytest.approx(3.0 * lam)
    assert r.shift_error < 0.05
    assert torch.all((r.std_ratio - 1).abs() < 0.05)


def _optimal_kl_coefficient(flow_steps: int) -> float:
    """D̂ of the exact optimum u_i = -g_i² a_i / (2Λ) is K / Λ² with K = Σ_i h g_i² ||a_i||² / 2 (H = 1)."""
    T, h = flow_steps, 1.0 / flow_steps
    g = memoryless_g(time_grid(T).double(), h)
    base = GaussianPrior(MU0.double(), SIGMA0.double())
    adj = lean_adjoint(base.velocity_fn(None), torch.zeros(T, 1, 2, dtype=torch.float64), -W.double()[None])
    return float((h * g.square() * adj[:, 0].square().sum(-1)).sum() / 2)


def test_tilt_with_dual_trqam() -> None:
    """TRQAM: Λ = 3 λ with λ by dual_update toward ε. At convergence the shift is Σ0 w / Λ_final (5 %) and
    the KL EMA is ε (10 %); Λ_final also matches the analytic Λ* = sqrt(K / ε) of the exact optimum (5 %).

    ε = 0.15 puts Λ* ≈ 4 (λ* ≈ 4/3) from λ_0 = 1; η_λ = 0.1 (10× SPEC's) so λ settles within ~250 steps.
    """
    eps = 0.15
    r = finetune_tilt(lam=1.0, lam_scale=3.0, steps=600, kl_budget=eps, lam_lr=0.1)
    lam_star = math.sqrt(_optimal_kl_coefficient(50) / eps)
    _report("dual", r)
    print(f"[tilt:dual] ε={eps} analytic Λ*={lam_star:.4f} final Λ={r.big_lambda:.4f} "
          f"KL-EMA error {100 * abs(r.kl_ema - eps) / eps:.2f}%")
    assert r.shift_error < 0.05
    assert torch.all((r.std_ratio - 1).abs() < 0.05)
    assert abs(r.kl_ema - eps) < 0.1 * eps
    assert r.big_lambda == pytest.approx(lam_star, rel=0.05)


# -- KL identity ---------------------------------------------------------------------------------------------

LinearField = Callable[[float], tuple[Tensor, Tensor]]


def _euler_chain_gaussian(field: LinearField, T: int, D: int) -> tuple[Tensor, Tensor]:
    """Mean and scale_tril of the joint Gaussian of (x_0, ..., x_T) for
    x_{i+1} = x_i + h (2 (A_i x_i + b_i) - x_i / (t_i + h)) + sqrt(h) g_i z_i,  x_0 ~ N(0, I).
    Writes x_i = L_i ζ + m_i with ζ = (x_0, z_0, ..., z_{T-1}) standard normal.
    """
    h = 1.0 / T
    eye = torch.eye(D, dtype=torch.float64)
    big = torch.zeros(D, (T + 1) * D, dtype=torch.float64)
    big[:, :D] = eye
    m = torch.zeros(D, dtype=torch.float64)
    rows, means = [big], [m]
    for i in range(T):
        t = i * h
        a, b = field(t)
        step = eye + h * (2 * a - eye / (t + h))
        g = math.sqrt(2 * (1 - t + h) / (t + h))
        big = step @ big
        big[:, (i + 1) * D: (i + 2) * D] += math.sqrt(h) * g * eye
        m = step @ m + 2 * h * b
        rows.append(big)
        means.append(m)
    return torch.cat(means), torch.cat(rows)


def _field_p(t: float) -> tuple[Tensor, Tensor]:
    a = torch.tensor([[-0.5 + t, 0.3], [-0.2, 0.4 * t]], dtype=torch.float64)
    return a, torch.tensor([0.3 * math.cos(2 * t), -0.2], dtype=torch.float64)


def _field_q(t: float) -> tuple[Tensor, Tensor]:
    a = torch.tensor([[-0.5, 0.1 * t], [0.1, 0.2]], dtype=torch.float64)
    return a, torch.tensor([0.1, 0.1 * t], dtype=torch.float64)


def test_kl_identity_summed_step_kl_equals_joint_gaussian_kl() -> None:
    """Two Gaussian Euler chains (linear drifts, same covariance h g_i² I): E_P[path_kl] (Monte Carlo over
    P's paths) = exact KL of the joint Gaussians of the whole paths = Monte-Carlo log-ratio, within 2 %."""
    T, D, n = 10, 2, 200_000
    h = 1.0 / T
    mp, lp = _euler_chain_gaussian(_field_p, T, D)
    mq, lq = _euler_chain_gaussian(_field_q, T, D)
    exact = float(kl_divergence(MultivariateNormal(mp, scale_tril=lp), MultivariateNormal(mq, scale_tril=lq)))
    # simulate P's paths step by step; evaluate both drifts on them
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)
    g = memoryless_g(time_grid(T).double(), h)
    vp, vq, log_ratio = [], [], torch.zeros(n, dtype=torch.float64)
    for i in range(T):
        t = i * h
        (ap, bp), (aq, bq) = _field_p(t), _field_q(t)
        vpi, vqi = x @ ap.T + bp, x @ aq.T + bq
        vp.append(vpi)
        vq.append(vqi)
        std = math.sqrt(h) * float(g[i])
        x_next = x + h * (2 * vpi - x / (t + h)) + std * torch.randn(n, D, generator=gen, dtype=torch.float64)
        mean_p, mean_q = x + h * (2 * vpi - x / (t + h)), x + h * (2 * vqi - x / (t + h))
        log_ratio += (torch.distributions.Normal(mean_p, std).log_prob(x_next)
                      - torch.distributions.Normal(mean_q, std).log_prob(x_next)).sum(-1)
        x = x_next
    est = path_kl(torch.stack(vp), torch.stack(vq), g, h, horizon=1)
    est_h = path_kl(torch.stack(vp), torch.stack(vq), g, h, horizon=3)
    mc_est, mc_lr = float(est.mean()), float(log_ratio.mean())
    print(f"\n[kl-identity] exact joint-Gaussian KL={exact:.5f}  E[path_kl] (MC)={mc_est:.5f} "
          f"({100 * (mc_est / exact - 1):+.2f}%)  MC log-ratio={mc_lr:.5f} "
          f"({100 * (mc_lr / exact - 1):+.2f}%)")
    assert exact > 0.3  # a KL that is resolved, not ~0
    assert mc_est == pytest.approx(exact, rel=0.02)
    assert mc_lr == pytest.approx(exact, rel=0.02)
    torch.testing.assert_close(est_h, est / 3)  # per chunk step: /H


def test_kl_identity_is_exact_in_expectation() -> None:
    """The same identity without Monte Carlo: Σ_i (2h/g_i²) E||ΔA_i x_i + Δb_i||² from the joint moments
    equals the joint-Gaussian KL to 1e-8 (validates the oracle that the Monte-Carlo test relies on)."""
    T, D = 10, 2
    h = 1.0 / T
    mp, lp = _euler_chain_gaussian(_field_p, T, D)
    mq, lq = _euler_chain_gaussian(_field_q, T, D)
    exact = kl_divergence(MultivariateNormal(mp, scale_tril=lp), MultivariateNormal(mq, scale_tril=lq))
    cov = lp @ lp.T
    total = torch.zeros((), dtype=torch.float64)
    for i in range(T):
        t = i * h
        (ap, bp), (aq, bq) = _field_p(t), _field_q(t)
        da, db = ap - aq, bp - bq
        m, s = mp[i * D: (i + 1) * D], cov[i * D: (i + 1) * D, i * D: (i + 1) * D]
        second_moment = (da @ m + db).square().sum() + torch.trace(da @ s @ da.T)
        total += 2 * h / memoryless_g(t, h) ** 2 * second_moment
    torch.testing.assert_close(total, exact, rtol=1e-8, atol=0)


# -- Adjoint -------------------------------------------------------------------------------------------------


def _linear_time_field(x: Tensor, t: Tensor) -> Tensor:
    """v(x, t) = A(t) x + c(t), A(t) = A0 + t A1 non-symmetric (a transposed Jacobian would show)."""
    a0 = torch.tensor([[-0.3, 0.8, 0.0], [0.1, 0.2, -0.5], [0.4, 0.0, -0.6]], dtype=x.dtype)
    a1 = torch.tensor([[1.0, -0.4, 0.3], [0.0, -0.7, 0.9], [-0.2, 0.5, 0.1]], dtype=x.dtype)
    tt = t[:, None, None].to(x.dtype)
    c = torch.stack([torch.cos(3 * t), t**2, -t], dim=-1).to(x.dtype)
    return ((a0 + tt * a1) @ x[..., None])[..., 0] + c


_MLP_GEN = torch.Generator().manual_seed(7)
_W1 = torch.randn(4, 16, generator=_MLP_GEN, dtype=torch.float64) / 2
_W2 = torch.randn(16, 3, generator=_MLP_GEN, dtype=torch.float64) / 4


def _nonlinear_time_field(x: Tensor, t: Tensor) -> Tensor:
    """A small tanh MLP of [x, t]: along its own base chain the lean adjoint is still exact backprop."""
    return torch.tanh(torch.cat([x, t[:, None].to(x.dtype)], dim=-1) @ _W1) @ _W2


def _q(x: Tensor) -> Tensor:
    """A non-linear critic, so a_T = -∇Q(x_T) depends on where the chain ends."""
    w = torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype)
    return x @ w + 0.3 * torch.sin(x).sum(-1) + 0.1 * x.square().sum(-1)


@pytest.mark.parametrize("field", [_linear_time_field, _nonlinear_time_field], ids=["linear", "tanh-mlp"])
def test_lean_adjoint_equals_autograd_through_base_chain(field: Callable[[Tensor, Tensor], Tensor]) -> None:
    """a_i = ∂(-Q(x_T))/∂x_i through x_{i+1} = x_i + h (2 v_base(x_i, t_i + h) - x_i / (t_i + h)), to 1e-5."""
    T, B, D = 10, 5, 3
    h = 1.0 / T
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64).requires_grad_(True)
    xs = [x]
    for i in range(T):
        s = torch.full((B,), i * h + h, dtype=torch.float64)
        x = x + h * (2 * field(x, s) - x / s[:, None])
        xs.append(x)
    grads = torch.autograd.grad(-_q(xs[-1]).sum(), xs[:-1])
    x_T = xs[-1].detach().requires_grad_(True)
    a_T = -torch.autograd.grad(_q(x_T).sum(), x_T)[0]
    path = torch.stack([v.detach() for v in xs[:-1]])
    adj = lean_adjoint(field, path, a_T)
    # per step, relative to that step's scale (a_0 = 2h J_0ᵀ a_1 is small: the -x/(t+h) term cancels at i = 0)
    errs = [float((adj[i] - grads[i]).abs().max() / grads[i].abs().max()) for i in range(T)]
    print(f"\n[adjoint:{field.__name__}] max relative |lean adjoint - autograd| over steps = {max(errs):.2e} "
          f"(|a_0| ~ {float(adj[0].abs().max()):.3g}, |a_T-1| ~ {float(adj[-1].abs().max()):.3g})")
    assert max(errs) < 1e-5
    if field is _linear_time_field:  # linear: the states the VJPs are taken at do not matter
        other = lean_adjoint(field, torch.randn(T, B, D, dtype=torch.float64), a_T)
        torch.testing.assert_close(other, adj, rtol=0, atol=1e-12)


# -- Dual ----------------------------------------------------------------------------------------------------


def test_dual_drives_kl_to_budget_for_a_lambda_dependent_control() -> None:
    """A fixed control family u_Λ(x, t) = -g(t)² (a(t) + 0.5 x) / (2Λ) (the tilt's optimal control plus an
    x-dependent term, so D̂ is noisy), D̂ by path_kl on the controlled SDE, λ by dual_update with SPEC's
    defaults: the KL EMA settles at ε within 10 % and Λ at the analytic root of E[D̂](Λ) = ε."""
    T, B, eps, steps = 10, 64, 1.0, 1500
    h = 1.0 / T
    ts = time_grid(T)
    g = memoryless_g(ts, h)
    base = GaussianPrior(MU0, SIGMA0)
    v_base = base.velocity_fn(None)
    a_grid = lean_adjoint(v_base, torch.zeros(T, 1, 2), -W[None])[:, 0]  # x-independent for the Gaussian
    gen = torch.Generator().manual_seed(0)

    def control(x: Tensor, t: Tensor, big_lambda: float) -> Tensor:
        i = torch.round(t * T).long()
        return -(g[i].square()[:, None] * (a_grid[i] + 0.5 * x)) / (2 * big_lambda)

    state, emas, lams = DualState(), [], []
    for _ in range(steps):
        big_lambda = trqam_temperature(state.lam, 3.0)

        def v_ctrl(x: Tensor, t: Tensor, big_lambda: float = big_lambda) -> Tensor:
            return v_base(x, t) + control(x, t, big_lambda)

        xs = sample_memoryless(v_ctrl, v_base, torch.randn(B, 2, generator=gen),
                               torch.randn(T - 1, B, 2, generator=gen))
        x_flat, t_flat = xs[:-1].reshape(T * B, 2), ts.repeat_interleave(B)
        u = control(x_flat, t_flat, big_lambda).view(T, B, 2)
        kl_hat = float(path_kl(u, torch.zeros_like(u), g, h, horizon=1).mean())
        state = dual_update(state, kl_hat, eps)
        emas.append(state.kl_ema)
        lams.append(state.lam)
    tail = torch.tensor(emas[-200:])
    big_lambda = 3.0 * state.lam
    print(f"\n[dual] ε={eps} final KL-EMA={state.kl_ema:.4f} (last-200 mean {float(tail.mean()):.4f}, "
          f"max dev {float((tail - eps).abs().max() / eps) * 100:.1f}%) λ: 1 → {state.lam:.4f} "
          f"(Λ={big_lambda:.3f})")
    assert abs(state.kl_ema - eps) < 0.1 * eps
    assert float((tail - eps).abs().max()) < 0.1 * eps
    assert abs(lams[-1] - lams[-200]) < 0.05 * lams[-1]  # λ has settled, not drifting through ε
    # E[D̂] at the final Λ, from a large fresh batch of controlled paths, is ε too (10 %)
    nb = 20_000

    def v_final(x: Tensor, t: Tensor) -> Tensor:
        return v_base(x, t) + control(x, t, big_lambda)

    xs = sample_memoryless(v_final, v_base, torch.randn(nb, 2, generator=gen),
                           torch.randn(T - 1, nb, 2, generator=gen))
    u = control(xs[:-1].reshape(T * nb, 2), ts.repeat_interleave(nb), big_lambda).view(T, nb, 2)
    kl_final = float(path_kl(u, torch.zeros_like(u), g, h, horizon=1).mean())
    print(f"[dual] E[D̂] at final Λ = {kl_final:.4f}")
    assert abs(kl_final - eps) < 0.1 * eps
