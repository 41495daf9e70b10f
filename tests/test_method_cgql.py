"""CGQL-Linex (``cgql_linex``): the method contract; ϑ = 0 acts exactly as the BC flow; the Linex loss's minimiser is
the soft maximum (MSE's the mean); the guidance of a linear critic is ϑ((1 − u)τw + x)/u exactly and, on a
Gaussian prior, moves the sample mean along w by the amount the Euler recursion predicts (checking the time
convention and the u = 0 guard); the TD loss is taken at u = 1 with the guided next action; each term trains
only what it should."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from trqam_sdk.config import FinetuneConfig
from trqam_sdk.core.flow import sample_ode
from trqam_sdk.core.losses import critic_loss, linex_loss, td_target
from trqam_sdk.methods.base import AgentActor, FlowActor
from trqam_sdk.methods.bc import bc_flow_matching
from trqam_sdk.methods.cgql import CGQLAgent, guidance_term, noisy_regression_loss
from trqam_sdk.testing.gaussian import GaussianPrior
from trqam_sdk.testing.method_contract import MethodContract

OPTIONS = {"guidance": 0.5, "tau": 1.0, "noisy_weight": 0.1}


class TestCGQLLinex(MethodContract):
    method = "cgql_linex"
    options = OPTIONS


def _finetuner(tmp_path: Path, **options: object):  # noqa: ANN202
    contract = TestCGQLLinex()
    contract.options = {**OPTIONS, **options}
    return contract.finetuner(tmp_path)


def test_zero_guidance_samples_exactly_the_bc_policy(tmp_path: Path) -> None:
    ft = _finetuner(tmp_path, guidance=0.0)
    agent, obs = ft.agent, ft.data.observations[:12]
    want = agent.actor.sample(obs, agent.flow_steps, torch.Generator().manual_seed(3))
    assert torch.equal(agent.act(obs, torch.Generator().manual_seed(3)), want)
    actor, bc = agent.make_actor(0), FlowActor(agent.actor, agent.flow_steps)
    assert isinstance(actor, AgentActor)
    actor.reseed(4)
    bc.reseed(4)
    assert torch.equal(actor(obs), bc(obs))
    guided = _finetuner(tmp_path / "g").agent  # same weights, ϑ = 0.5: the guidance really acts
    assert not torch.allclose(guided.act(obs, torch.Generator().manual_seed(3)), want)


def test_linex_minimiser_is_the_soft_maximum_and_mse_gives_the_mean() -> None:
    """eq. 66: argmin_c E[Linex(τ(y − c))] = (1/τ) log E[exp(τ y)] over samples; the squared error gives E[y]."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(4000, generator=gen, dtype=torch.float64)
    tau = 1.5
    valid = torch.ones_like(y)

    def argmin(loss_fn) -> float:  # noqa: ANN001
        c = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([c], lr=1.0, max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16,
                                line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = loss_fn(c.expand_as(y))
            loss.backward()
            return loss

        opt.step(closure)
        return float(c.detach())

    soft_max = float(torch.logsumexp(tau * y, 0) - torch.log(torch.tensor(float(y.numel())))) / tau
    c_linex = argmin(lambda c: noisy_regression_loss(c, y, tau, valid, clip=30.0))
    c_mse = argmin(lambda c: ((y - c) ** 2).mean())
    print(f"\n[linex] argmin {c_linex:.6f} soft max {soft_max:.6f}; mse argmin {c_mse:.6f} mean {float(y.mean()):.6f}")
    assert abs(c_linex - soft_max) < 1e-6 and abs(c_mse - float(y.mean())) < 1e-6
    assert soft_max - float(y.mean()) > 0.5  # the two really differ (≈ τσ²/2 = 0.75 here)
    # with eq. 70's clip (Δ = 5) the optimum is unchanged while no sample reaches the linear part
    assert float((tau * (y - c_linex)).max()) < 5.0
    assert abs(argmin(lambda c: noisy_regression_loss(c, y, tau, valid)) - soft_max) < 1e-6
    # the scale: 2/τ² · Linex ≈ the squared error for small gaps
    small = torch.tensor([1e-3], dtype=torch.float64)
    gap = noisy_regression_loss(small, torch.zeros(1, dtype=torch.float64), tau, torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(gap, small[0] ** 2, rtol=2e-3, atol=0)
    torch.testing.assert_close(linex_loss(torch.tensor([0.0])), torch.tensor([0.0]))


class LinearQ(nn.Module):
    """Q(s, x, u) = wᵀx for every member and noise level, fixed (K = 2 identical members)."""

    def __init__(self, w: Tensor):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, obs: Tensor, x: Tensor, u: Tensor) -> Tensor:
        return (x.flatten(1) @ self.w).expand(2, -1)


def test_guidance_of_a_linear_critic_is_exact() -> None:
    w = torch.tensor([1.0, -0.5, 2.0])
    gen = torch.Generator().manual_seed(0)
    x, u = torch.randn(64, 3, generator=gen), 0.05 + 0.95 * torch.rand(64, generator=gen)
    got = guidance_term(LinearQ(w), torch.zeros(64, 1), x, u, tau=3.0, vartheta=0.2)
    want = 0.2 * ((1 - u[:, None]) * 3.0 * w + x) / u[:, None]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not got.requires_grad


@pytest.mark.parametrize("guard", ["t1", "shift"])
def test_guided_sample_mean_moves_along_w_as_the_euler_recursion_predicts(guard: str) -> None:
    """Isotropic Gaussian prior N(0, c I): v_β(x, t) = k(t) x, so the guided Euler map is affine, x_T = A x0 + b, and
    with antithetic noise the sample mean is b, which the scalar recursion below gives (guidance from t_1 = h on,
    or at u = t_i + h on every step). No sample reaches the clip."""
    c, tau, vartheta, steps = 0.01, 10.0, 0.1, 10
    w = torch.tensor([1.0, -0.5])
    cfg = FinetuneConfig(method="cgql_linex", flow_steps=steps, trackers=[],
                         method_options={"guidance": vartheta, "tau": tau, "guidance_start": guard})
    agent = CGQLAgent.build(cfg, GaussianPrior(torch.zeros(2), c * torch.eye(2)), None, critic=LinearQ(w))
    z = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    x0 = torch.cat([z, -z])
    obs = torch.zeros(x0.shape[0], 1)
    guided = agent.sample_guided(obs, x0)
    assert float(guided.abs().max()) < 1.0
    h, m = 1.0 / steps, torch.zeros(2, dtype=torch.float64)
    wd = w.double()
    for i in range(steps):
        t = i * h
        k = (t * c - (1 - t)) / ((1 - t) ** 2 + t**2 * c)
        step = k * m
        u = t + h if guard == "shift" else t
        if u > 0:
            step = step + vartheta * ((1 - u) * tau * wd + m) / u
        m = m + h * step
    print(f"\n[cgql {guard}] guided mean {guided.mean(0).tolist()} recursion {m.tolist()}")
    torch.testing.assert_close(guided.mean(0).double(), m, atol=2e-5, rtol=1e-4)
    assert float(m @ wd) > 0.1 and abs(float(m[0] * wd[1] - m[1] * wd[0])) < 1e-9  # along w
    bc = sample_ode(agent.actor.velocity_fn(obs), x0, steps)  # the BC flow alone: centred, so b is the guidance's
    torch.testing.assert_close(bc.mean(0), torch.zeros(2), atol=1e-6, rtol=0)


def test_td_loss_uses_u_one_and_the_guided_next_action(tmp_path: Path) -> None:
    ft = _finetuner(tmp_path)
    agent, cfg = ft.agent, ft.cfg
    batch, noise = ft.shard(0)
    td, noisy, metrics = agent.critic_objective(batch, noise["target_x0"], noise["noisy_z"], noise["noisy_u"])
    s, s_next, a = batch["observations"], batch["next_observations"], batch["actions"]
    b, h, vartheta, tau = a.shape[0], 1.0 / cfg.flow_steps, OPTIONS["guidance"], OPTIONS["tau"]
    ones = torch.ones(b)
    x = noise["target_x0"]
    for i in range(cfg.flow_steps):  # eq. 72 written out, guidance from t_1 on, ∇ of the target ensemble mean
        t = torch.full((b,), i * h)
        v = agent.actor.velocity(s_next, x, t)
        if i > 0:
            xg = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(agent.target_critic(s_next, xg, t).mean(0).sum(), xg)
            v = v + vartheta * ((1 - t[:, None]) * tau * grad + x) / t[:, None]
        x = (x + h * v).detach()
    a_next = x.clamp(-1, 1)
    c = cfg.critic
    with torch.no_grad():
        y = td_target(batch["rewards"], batch["masks"], agent.target_critic(s_next, a_next, ones), c.discount, c.rho)
        want_td = critic_loss(agent.critic(s, a, ones), y, batch["valid"])
        u, z = noise["noisy_u"], noise["noisy_z"]
        a_u = (1 - u[:, None]) * z + u[:, None] * a.flatten(1)
        want_noisy = (2 / tau**2) * (linex_loss(tau * (agent.target_critic(s, a, ones) - agent.critic(s, a_u, u)))
                                     * batch["valid"]).mean()
        # controls: Q_φ at u = 1/2, or the unguided next action, give other numbers
        at_half = critic_loss(agent.critic(s, a, ones / 2), y, batch["valid"])
    torch.testing.assert_close(metrics["critic/target_mean"], y.mean())
    torch.testing.assert_close(td.detach(), want_td)
    torch.testing.assert_close(noisy.detach(), want_noisy)
    assert abs(float(at_half - want_td)) > 1e-4
    agent.opts.guidance = 0.0
    _, _, unguided = agent.critic_objective(batch, noise["target_x0"], noise["noisy_z"], noise["noisy_u"])
    assert abs(float(unguided["critic/target_mean"] - y.mean())) > 1e-4


@pytest.mark.parametrize("guidance_critic", ["target", "online"])
def test_each_term_trains_only_its_own_networks(tmp_path: Path, guidance_critic: str) -> None:
    """TD + ϱ·Linex reach only φ (even when φ guides the TD target's ODE), BC reaches only v_β, Q̄ gets nothing."""
    ft = _finetuner(tmp_path, guidance_critic=guidance_critic)
    agent = ft.agent
    batch, noise = ft.shard(0)
    td, noisy, _ = agent.critic_objective(batch, noise["target_x0"], noise["noisy_z"], noise["noisy_u"])
    (td + noisy).backward()
    assert all(p.grad is None for p in agent.actor.parameters())
    assert all(p.grad is None for p in agent.target_critic.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in agent.critic.parameters())
    agent.zero_grad(set_to_none=True)
    bc_flow_matching(agent.actor, batch, noise["bc_x0"], noise["bc_t"], ft.cfg.conventions).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in agent.actor.parameters())
    assert all(p.grad is None for m in (agent.critic, agent.target_critic) for p in m.parameters())
