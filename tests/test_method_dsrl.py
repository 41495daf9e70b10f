"""DSRL (QAM paper App. C.1, eqs 80–83) on MLP policies: the method contract, then what makes it DSRL.

Actions are the *target* BC flow's clipped ODE of the noise policy's z; z stays in [−σ_z, σ_z]; every loss term
reaches only its own networks; the TD target decodes z' ~ π_ω(s') through the target flow; the distilled critic
regresses to the mean action critic; and a closed-form toy (Gaussian prior, whose Euler ODE map is affine,
a = m + L z, and a linear critic Q(a) = wᵀa) drives the noise policy to the corner σ_z · sign(Lᵀw) of the box.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from trqam_sdk.config import CriticConfig, FinetuneConfig
from trqam_sdk.core.flow import sample_ode
from trqam_sdk.core.losses import critic_loss, td_target
from trqam_sdk.data.transitions import Transitions
from trqam_sdk.methods.dsrl import DSRLAgent
from trqam_sdk.testing.gaussian import GaussianPrior
from trqam_sdk.testing.method_contract import MethodContract
from trqam_sdk.testing.toy import random_episodes
from trqam_sdk.training.finetuner import Finetuner

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIGMA_Z = 0.8


class TestDSRLContract(MethodContract):
    method = "dsrl"
    options = {"sigma_z": SIGMA_Z}


class TestDSRLFrozenFlowContract(MethodContract):
    """The original DSRL (BC flow frozen), distilling on N(0, I) and policy noise, acting with σ_z tanh(μ)."""

    method = "dsrl"
    options = {"sigma_z": 1.2, "train_flow": False, "distill_noise": "both", "eval_noise": "mean"}
    changes_policy = False


# -- helpers ---------------------------------------------------------------------------------------------------
def trained(tmp_path: Path, steps: int = 6, **options: Any) -> Finetuner:
    """A DSRL run on toy data after ``steps`` updates at a large lr, so the online flow has left its EMA target."""
    c = TestDSRLContract()
    data = c.make_data()
    ft = Finetuner(c.make_config(tmp_path, lr=3e-2, method_options={"sigma_z": SIGMA_Z, **options}),
                   c.make_policy(data), data)
    for _ in range(steps):
        ft.train_step()
    return ft


def target_ode(agent: DSRLAgent, flow: Any, obs: Any, z: Tensor) -> Tensor:
    """clip(ODE(v(s, ·, ·), z)) computed here from the flow alone, as (B, H, A)."""
    x = sample_ode(flow.velocity_fn(flow.condition(obs)), z, agent.flow_steps).clamp(-1.0, 1.0)
    return x.view(-1, agent.spec.horizon, agent.spec.action_dim)


def policy_noise(agent: DSRLAgent, obs: Tensor, eps: Tensor) -> Tensor:
    """z = σ_z tanh(μ_ω(s) + σ_ω(s) ε), written out from the noise policy's head."""
    mean, log_std = agent.noise_actor(obs)
    return agent.opts.sigma_z * torch.tanh(mean + log_std.exp() * eps)


def grads(module: nn.Module) -> list[Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None]


def untouched(module: nn.Module) -> bool:
    return all(float(g.abs().sum()) == 0.0 for g in grads(module))


def touched(module: nn.Module) -> bool:
    return any(float(g.abs().sum()) > 0.0 for g in grads(module))


# -- acting ----------------------------------------------------------------------------------------------------
def test_actions_are_the_target_flows_ode_of_the_policy_noise(tmp_path: Path) -> None:
    """act = clip(ODE(v_θ̃, z)), z = σ_z tanh(μ + σ ε) with ε from the generator: equal bit for bit; not the
    online flow's once the two have diverged; the pickled acting policy gives the same chunks."""
    ft = trained(tmp_path)
    agent = ft.agent
    obs = ft.data.observations[:7]
    assert any(not torch.equal(p, q) for p, q in zip(agent.actor.parameters(), agent.target_actor.parameters(),
                                                       strict=True)), "the target flow should lag the online one"
    a = agent.act(obs, torch.Generator().manual_seed(5))
    eps = torch.randn(7, agent.spec.flat_dim, generator=torch.Generator().manual_seed(5))
    z = policy_noise(agent, obs, eps)
    want = target_ode(agent, agent.target_actor, obs, z)
    assert torch.equal(a, want)
    online = target_ode(agent, agent.actor, obs, z)
    assert float((online - a).abs().max()) > 1e-4, "actions must come from the target flow, not the online one"
    actor = agent.make_actor(0)
    actor.reseed(5)
    assert torch.equal(actor(obs), want)
    agent.opts.eval_noise = "mean"  # deterministic acting: z = σ_z tanh(μ)
    mean, _ = agent.noise_actor(obs)
    assert torch.equal(agent.act(obs, None), target_ode(agent, agent.target_actor, obs, SIGMA_Z * torch.tanh(mean)))


def test_noise_stays_in_the_box_even_with_huge_means(tmp_path: Path) -> None:
    """|z| ≤ σ_z for μ = ±1e4 (tanh saturates exactly at the bound), log π finite, actions in [−1, 1]."""
    ft = trained(tmp_path, steps=1)
    agent = ft.agent
    obs = ft.data.observations[:6]
    d = agent.spec.flat_dim
    with torch.no_grad():
        out = agent.noise_actor.net.out
        out.weight.zero_()
        out.bias[:d] = torch.tensor([1e4, -1e4] * (d // 2))
    eps = torch.randn(6, d, generator=torch.Generator().manual_seed(0)) * 3
    z, log_prob = agent.noise(obs, eps)
    z = z.detach()
    assert bool(z.abs().max() <= torch.tensor(SIGMA_Z)) and torch.isfinite(log_prob).all()  # σ_z in float32
    assert torch.equal(z.abs(), torch.full_like(z, SIGMA_Z))  # pinned to the corner
    a = agent.act(obs, torch.Generator().manual_seed(1))
    assert float(a.abs().max()) <= 1.0
    assert torch.equal(a, target_ode(agent, agent.target_actor, obs, z))  # the pinned z, whatever ε


def test_entropy_is_measured_on_the_unit_box_whatever_sigma_z(tmp_path: Path) -> None:
    """The same noise network at σ_z = 0.4 and 1.4 has the same log π (of z/σ_z), so one target entropy fits all
    σ_z; the default target is −0.5 · D."""
    ft = trained(tmp_path, steps=1)
    agent = ft.agent
    other = copy.deepcopy(agent)
    obs, eps = ft.data.observations[:5], torch.randn(5, agent.spec.flat_dim, generator=torch.Generator())
    agent.opts.sigma_z, other.opts.sigma_z = 0.4, 1.4
    (z1, lp1), (z2, lp2) = agent.noise(obs, eps), other.noise(obs, eps)
    torch.testing.assert_close(z1 / 0.4, z2 / 1.4)
    torch.testing.assert_close(lp1, lp2)
    assert agent.target_entropy == -0.5 * agent.spec.flat_dim


# -- each term trains only its own networks --------------------------------------------------------------------
def test_each_loss_term_reaches_only_its_own_networks(tmp_path: Path) -> None:
    """The policy term (81) leaves Q_φ, Q^z_ψ, v_θ, v_θ̃ and log α gradient-free; the temperature term moves log α
    only; the distillation (82) Q^z_ψ only; the TD loss Q_φ only."""
    ft = trained(tmp_path, steps=1)
    agent = ft.agent
    batch, noise = ft.shard(3)
    obs = batch["observations"]
    others = {"critic": agent.critic, "noise_critic": agent.noise_critic, "actor": agent.actor,
              "noise_actor": agent.noise_actor}

    def run(term: str) -> None:
        agent.zero_grad(set_to_none=True)
        if term in ("policy", "alpha"):
            pi_loss, alpha_loss, _, _ = agent.noise_policy_objective(obs, noise["actor_eps"])
            (pi_loss if term == "policy" else alpha_loss).backward()
        elif term == "distill":
            z = policy_noise(agent, obs, noise["actor_eps"])
            agent.distill_objective(obs, noise["distill_z"], z)[0].backward()
        else:
            agent.critic_objective(batch, noise["next_eps"])[0].backward()

    run("policy")
    assert touched(agent.noise_actor)
    assert all(untouched(m) for k, m in others.items() if k != "noise_actor")
    assert agent.log_alpha.grad is None or float(agent.log_alpha.grad) == 0.0
    run("alpha")
    assert agent.log_alpha.grad is not None and float(agent.log_alpha.grad) != 0.0
    assert all(untouched(m) for m in others.values())
    run("distill")
    assert touched(agent.noise_critic) and all(untouched(m) for k, m in others.items() if k != "noise_critic")
    run("critic")
    assert touched(agent.critic) and all(untouched(m) for k, m in others.items() if k != "critic")
    assert not any(p.requires_grad for p in [*agent.target_actor.parameters(), *agent.target_critic.parameters()])


# -- the two regression targets --------------------------------------------------------------------------------
def test_critic_target_uses_policy_noise_at_next_state_and_the_target_flow(tmp_path: Path) -> None:
    """(83): y = R + γ^H m (mean − ρ std) Q̄(s', clip(ODE(v_θ̃(s'), z'))), z' = σ_z tanh(μ(s') + σ(s') ε').
    Rebuilt here it gives the agent's loss exactly; z' ~ N(0, I), z' from s, or the online flow do not."""
    ft = trained(tmp_path)
    agent, c = ft.agent, ft.cfg.critic
    batch, noise = ft.shard(4)
    s, s_next, eps = batch["observations"], batch["next_observations"], noise["next_eps"]
    loss, _ = agent.critic_objective(batch, eps)
    q = agent.critic(s, batch["actions"]).detach()

    def loss_with(flow: Any, z: Tensor) -> Tensor:
        y = td_target(batch["rewards"], batch["masks"], agent.target_critic(s_next, target_ode(agent, flow, s_next, z)),
                      c.discount, c.rho)
        return critic_loss(q, y, batch["valid"])

    with torch.no_grad():
        z_next = policy_noise(agent, s_next, eps)
        torch.testing.assert_close(loss.detach(), loss_with(agent.target_actor, z_next), rtol=1e-6, atol=0)
        for wrong in (loss_with(agent.target_actor, eps), loss_with(agent.target_actor, policy_noise(agent, s, eps)),
                      loss_with(agent.actor, z_next)):
            assert abs(float(wrong - loss)) > 1e-4 * float(loss), "the target must use z' ~ π_ω(s') and v_θ̃"


@pytest.mark.parametrize("distill_noise", ["normal", "policy", "both"])
def test_noise_critic_regresses_to_the_mean_critic_through_the_target_flow(tmp_path: Path, distill_noise: str) -> None:
    """(82): ‖Q^z_ψ(s, z) − mean_k Q_φ,k(s, clip(ODE(v_θ̃, z)))‖² over the chosen z; the online flow differs."""
    ft = trained(tmp_path, distill_noise=distill_noise)
    agent = ft.agent
    batch, noise = ft.shard(5)
    s = batch["observations"]
    z_pol = policy_noise(agent, s, noise["actor_eps"]).detach()
    z = {"normal": noise["distill_z"], "policy": z_pol, "both": torch.cat([noise["distill_z"], z_pol])}[distill_noise]
    s_z = torch.cat([s] * (z.shape[0] // s.shape[0]))
    loss, _ = agent.distill_objective(s, noise["distill_z"], z_pol)

    def loss_with(flow: Any) -> Tensor:
        target = agent.critic(s_z, target_ode(agent, flow, s_z, z)).mean(0)
        return (agent.noise_critic(s_z, z) - target).square().mean()

    with torch.no_grad():
        torch.testing.assert_close(loss.detach(), loss_with(agent.target_actor), rtol=1e-6, atol=0)
        assert abs(float(loss_with(agent.actor) - loss)) > 1e-4 * float(loss)


# -- closed-form toy -------------------------------------------------------------------------------------------
MU = torch.tensor([0.1, -0.1])
COV = torch.tensor([[0.3, 0.25], [0.25, 0.3]])
W = torch.tensor([1.0, -0.3])  # sign(w) = (+, −) but sign(Lᵀw) = (+, +): the test sees whether L enters


class LinearCritic(nn.Module):
    """A fixed Q(s, a) = wᵀa for each of 2 identical members (no parameters: nothing trains it)."""

    def forward(self, obs: Tensor, chunk: Tensor) -> Tensor:
        return (chunk.flatten(1) @ W).expand(2, -1)


def affine_ode_map(prior: GaussianPrior, steps: int) -> tuple[Tensor, Tensor]:
    """m, L of the Euler ODE map a = m + L z of the exact Gaussian velocity (affine in z), found numerically."""
    v = prior.velocity_fn(None)
    m = sample_ode(v, torch.zeros(1, 2), steps)[0]
    cols = sample_ode(v, torch.eye(2), steps) - m
    return m, cols.T


def test_toy_noise_policy_goes_to_the_corner_sigma_z_sign_Ltw(tmp_path: Path) -> None:
    """Q(a) = wᵀa and a = m + L z give Q = wᵀm + (Lᵀw)ᵀz, maximised over the box at z* = σ_z sign(Lᵀw). With a
    small entropy weight the learned σ_z tanh(μ(s)) reaches z*: right signs and |z| ≥ 0.9 σ_z in every dim; the
    distilled critic's slope in z is Lᵀw (within 0.06)."""
    sigma_z, steps = 1.0, 10
    prior = GaussianPrior(MU, COV)
    m, L = affine_ode_map(prior, steps)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample_ode(prior.velocity_fn(None), z, steps), m + z @ L.T, rtol=1e-5, atol=1e-5)
    corner = sigma_z * torch.sign(L.T @ W)
    assert torch.equal(corner, torch.tensor([1.0, 1.0])) and float((m + L @ corner).abs().max()) < 1.0  # no clip
    data = Transitions.from_numpy(random_episodes(num_episodes=4, length=16, obs_dim=3, action_dim=2))
    cfg = FinetuneConfig(method="dsrl", batch_size=64, steps=300, flow_steps=steps, lr=3e-3, trackers=[],
                         output_dir=str(tmp_path), critic=CriticConfig(num_critics=2, width=64, depth=2),
                         method_options={"sigma_z": sigma_z, "init_alpha": 1e-3, "target_entropy": -8.0})
    ft = Finetuner(cfg, prior, data, critic=LinearCritic())
    start = time.perf_counter()
    for _ in range(cfg.steps):
        metrics = ft.train_step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        mean, _ = ft.agent.noise_actor(data.observations)
        z_mean = (sigma_z * torch.tanh(mean)).mean(0)
        slope = torch.autograd.functional.jacobian(lambda x: ft.agent.noise_critic(data.observations[:1], x).mean(),
                                                   torch.zeros(1, 2))[0]
    print(f"\n[dsrl toy] Lᵀw {(L.T @ W).tolist()}, corner {corner.tolist()}, learned σ_z tanh μ {z_mean.tolist()}, "
          f"Q^z slope at 0 {slope.tolist()}, α {metrics['actor/alpha']:.2e}, |z| {metrics['actor/z_abs']:.3f}, "
          f"{cfg.steps} updates in {seconds:.1f} s")
    assert torch.equal(torch.sign(z_mean), torch.sign(corner))
    assert float((z_mean.abs() / sigma_z).min()) >= 0.9, z_mean
    torch.testing.assert_close(slope, L.T @ W, atol=0.06, rtol=0)  # Q^z_ψ learned Q ∘ ODE: slope Lᵀw
    assert math.isfinite(metrics["critic/noise_critic_loss"]) and metrics["actor/alpha"] < 1e-2  # stayed small
