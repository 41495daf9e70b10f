"""FQL (trqam_sdk/methods/fql.py) and its one-step policy adapter (adapters/onestep.py).

Beyond the shared contract: the one-step adapter round-trips and samples alone; with α → ∞ μ_ω(s, z) distils
the BC ODE map of the *same* z; the actor term never trains the critic (nor the critic term the actor); the
TD target evaluates μ_ω at s' (not the BC flow); and the closed-form optimum of the one-step objective on the
Gaussian-prior / linear-critic toy (SPEC §7): μ*(z) = ODE(z) + w·c/(2α), c = H·A for the mean reduction, 1 for
the sum. Run ``pytest -s`` to see the numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from trqam_sdk.adapters import MLPFlowPolicy, MLPPolicyConfig, ResidualPolicy, load_policy
from trqam_sdk.adapters.onestep import OneStepPolicy

from trqam_sdk.core.flow import sample_ode
from trqam_sdk.core.losses import critic_loss, td_target
from trqam_sdk.methods.fql import FQLAgent
from trqam_sdk.testing.gaussian import GaussianPrior
from trqam_sdk.testing.method_contract import MethodContract

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one thread is fastest on a busy box


class TestFQLContract(MethodContract):
    method = "fql"
    options = {"alpha": 10.0}


class TestFQLFreshPolicyContract(MethodContract):
    method = "fql"
    options = {"alpha": 3.0, "distill_reduction": "sum", "normalize_q_loss": True, "policy_init": "fresh"}


def _grads(module: nn.Module) -> list[Tensor | None]:
    return [p.grad for p in module.parameters()]


def _all_zero(module: nn.Module) -> bool:
    return all(g is None or float(g.abs().max()) == 0.0 for g in _grads(module))


def _some_nonzero(module: nn.Module) -> bool:
    return any(g is not None and float(g.abs().max()) > 0.0 for g in _grads(module))


# -- the one-step adapter ---------------------------------------------------------------------------------


def test_one_step_policy_is_one_euler_step_saves_and_samples_alone(tmp_path: Path) -> None:
    """μ(s, z) = z + v(s, z, 0); its velocity run as a T = 1 ODE is μ; sample() ignores T and returns
    clip(μ(s, z)) for z drawn from the generator as FlowPolicy.sample draws x0; save/load_policy is exact."""
    torch.manual_seed(0)
    inner = MLPFlowPolicy(MLPPolicyConfig(3, 2, 2, width=16, depth=1))
    pol = OneStepPolicy(inner)
    obs = torch.randn(7, 3)
    z = torch.randn(7, 4)
    mu = pol.one_step(pol.condition(obs), z)
    torch.testing.assert_close(mu, z + inner.velocity(obs, z, torch.zeros(7)))
    torch.testing.assert_close(sample_ode(pol.velocity_fn(pol.condition(obs)), z, 1), mu)
    a = pol.sample(obs, 10, torch.Generator().manual_seed(4))
    z4 = torch.randn(7, 4, generator=torch.Generator().manual_seed(4))
    want = pol.one_step(obs, z4).clamp(-1, 1).view(7, 2, 2)
    torch.testing.assert_close(a, want)
    torch.testing.assert_close(pol.sample(obs, 1, torch.Generator().manual_seed(4)), a)  # T is ignored
    loaded = load_policy(pol.save_pretrained(tmp_path / "p"))
    assert isinstance(loaded, OneStepPolicy) and isinstance(loaded.inner, MLPFlowPolicy)
    torch.testing.assert_close(loaded.sample(obs, 10, torch.Generator().manual_seed(4)), a, rtol=0, atol=0)


# -- the agent on the contract's tiny problem ------------------------------------------------------------


class _Tiny(MethodContract):
    method = "fql"
    options = {"alpha": 10.0}


def test_fresh_init_draws_new_weights_and_prior_init_is_the_one_step_map(tmp_path: Path) -> None:
    tiny = _Tiny()
    prior_agent = tiny.finetuner(tmp_path / "a").agent
    for k, v in prior_agent.bc_flow.state_dict().items():  # prior init: μ's inner flow is the prior itself
        assert torch.equal(prior_agent.actor.inner.state_dict()[k], v), k
    fresh = tiny.finetuner(tmp_path / "b", method_options={"alpha": 10.0, "policy_init": "fresh"}).agent
    assert any(not torch.equal(fresh.actor.inner.state_dict()[k], v) for k, v in fresh.bc_flow.state_dict().items())


def test_alpha_to_infinity_distils_the_bc_ode_map_of_the_same_noise(tmp_path: Path) -> None:
    """α = 1e4 (the Q term negligible): after 500 Adam steps on the agent's whole loss (μ_ω's parameters; the BC
    flow held at the prior so the ODE map is a fixed target) μ_ω(s, z) ≈ ODE(v_θ(s), z) for the same z: RMSE
    < 0.1, under 0.3 × its start and 0.1 × the RMSE against the ODE map of *other* noise (the same marginal)."""
    tiny = _Tiny()
    data = tiny.make_data()
    torch.manual_seed(0)
    prior = MLPFlowPolicy(MLPPolicyConfig(data.obs_dim, 2, data.action_dim, width=64, depth=2))
    from trqam_sdk.training.finetuner import Finetuner

    cfg = tiny.make_config(tmp_path, method_options={"alpha": 1e4}, batch_size=64, flow_steps=5)
    ft = Finetuner(cfg, prior, data)
    agent = ft.agent
    obs = data.observations[:30].repeat(20, 1)
    z = torch.randn(obs.shape[0], agent.spec.flat_dim, generator=torch.Generator().manual_seed(5))
    other = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(1))]

    def rmse(noise_for_target: Tensor) -> float:
        with torch.no_grad():
            mu = agent.actor.one_step(agent.actor.condition(obs), z)
            return float((mu - agent.bc_ode(obs, noise_for_target)).square().mean().sqrt())

    start = rmse(z)
    opt = torch.optim.Adam(agent.actor.parameters(), lr=3e-3)
    for step in range(500):
        loss, _ = agent.loss(*ft.shard(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    same, shuffled = rmse(z), rmse(other)
    print(f"\n[fql α→∞] RMSE μ vs ODE(same z): {start:.4f} → {same:.4f}; vs ODE(other z): {shuffled:.4f}")
    assert same < 0.1 and same < 0.3 * start and same < 0.1 * shuffled


def test_actor_term_leaves_the_critic_gradient_zero_and_critic_term_the_actor(tmp_path: Path) -> None:
    ft = _Tiny().finetuner(tmp_path)
    agent = ft.agent
    batch, noise = ft.shard(0)
    loss, _ = agent.actor_objective(batch["observations"], noise["z"])
    loss.backward()
    assert _all_zero(agent.critic) and _all_zero(agent.target_critic), "−Q(s, μ) trained the critic"
    assert _all_zero(agent.bc_flow), "the distillation target is not detached"
    assert _some_nonzero(agent.actor)
    agent.zero_grad(set_to_none=True)
    q_loss, _ = agent.critic_objective(batch, noise["target_z"])
    q_loss.backward()
    assert _some_nonzero(agent.critic) and _all_zero(agent.actor) and _all_zero(agent.bc_flow)


def test_critic_target_uses_the_one_step_policy_at_next_state(tmp_path: Path) -> None:
    """TD loss = the one computed by hand with a' = clip(μ_ω(s', z')), and not the one with the BC flow's ODE."""
    ft = _Tiny().finetuner(tmp_path)
    agent = ft.agent
    with torch.no_grad():  # move μ_ω away from the prior so the two candidate targets differ clearly
        agent.actor.inner.net.out.bias.add_(0.4)
    batch, noise = ft.shard(0)
    loss, metrics = agent.critic_objective(batch, noise["target_z"])
    s2, z2, c = batch["next_observations"], noise["target_z"], agent.cfg.critic
    q = agent.critic(batch["observations"], batch["actions"])

    def loss_with(a_next: Tensor) -> tuple[Tensor, Tensor]:
        y = td_target(batch["rewards"], batch["masks"], agent.target_critic(s2, a_next.view_as(batch["actions"])),
                      c.discount, c.rho)
        return critic_loss(q, y, batch["valid"]), y

    with torch.no_grad():
        want, y = loss_with((z2 + agent.actor.inner.velocity(s2, z2, torch.zeros(len(z2)))).clamp(-1, 1))
        bc, _ = loss_with(agent.bc_ode(s2, z2))
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(metrics["critic/target_mean"], y.mean())
    assert abs(float(loss.detach() - bc)) > 1e-3 * float(want), "the BC flow's target gives the same loss"


# -- closed-form toy (SPEC §7 style) ----------------------------------------------------------------------

MU_T = torch.tensor([0.1, -0.1])
COV_T = torch.tensor([[0.010, 0.003], [0.003, 0.020]])  # narrow, so every action stays inside the box
W_T = torch.tensor([1.0, -0.5])


class LinearCritic(nn.Module):
    """Q_k(s, a) = wᵀa for two identical members (a fixed critic with parameters, to see none move)."""

    def __init__(self, w: Tensor, scale: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(w.clone() * scale)

    def forward(self, obs: Tensor, chunk: Tensor) -> Tensor:
        return (chunk.flatten(1) @ self.w).expand(2, -1)


def _toy_agent(options: dict, scale: float = 1.0) -> FQLAgent:
    """v_θ frozen at the exact Gaussian-prior flow; μ_ω = one Euler step of prior + a zero-initialised MLP."""
    from trqam_sdk.config import FinetuneConfig

    torch.manual_seed(0)
    prior = ResidualPolicy(GaussianPrior(MU_T, COV_T), MLPFlowPolicy(MLPPolicyConfig(1, 1, 2, width=64, depth=2)))
    cfg = FinetuneConfig(method="fql", method_options=options, flow_steps=10, trackers=[])
    return FQLAgent(OneStepPolicy(copy.deepcopy(prior)), copy.deepcopy(prior).requires_grad_(False),
                    LinearCritic(W_T, scale), cfg)


@pytest.mark.parametrize(("reduction", "alpha", "c"), [("mean", 5.0, 2), ("sum", 2.5, 1), ("mean", 20.0, 2)])
def test_one_step_optimum_is_bc_ode_plus_w_c_over_two_alpha(reduction: str, alpha: float, c: int) -> None:
    """α ‖μ(z) − ODE(z)‖²_c − wᵀμ(z) is minimised by μ(z) = ODE(z) + w c / (2α): after 300 Adam steps the mean
    of μ(z) − ODE(z) over 8192 fresh z matches it within 2 % (its spread within 2 % of the shift), all actions
    inside the box, and the critic's w has no gradient."""
    agent = _toy_agent({"alpha": alpha, "distill_reduction": reduction})
    opt = torch.optim.Adam([p for p in agent.actor.parameters() if p.requires_grad], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, _ = agent.actor_objective(torch.zeros(256, 1), torch.randn(256, 2, generator=gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert agent.critic.w.grad is None or float(agent.critic.w.grad.abs().max()) == 0.0
    z, obs = torch.randn(8192, 2, generator=torch.Generator().manual_seed(1)), torch.zeros(8192, 1)
    with torch.no_grad():
        mu = agent.actor.one_step(agent.actor.condition(obs), z)
        diff = mu - agent.bc_ode(obs, z)
    target = W_T * c / (2 * alpha)
    err = float((diff.mean(0) - target).norm() / target.norm())
    print(f"\n[fql toy {reduction} α={alpha}] shift {diff.mean(0).tolist()} target {target.tolist()} "
          f"error {100 * err:.2f}% spread {diff.std(0).tolist()} max|μ| {float(mu.abs().max()):.3f}")
    assert float(mu.abs().max()) < 1.0
    assert err < 0.02
    assert float(diff.std(0).max()) < 0.02 * float(target.norm())


def test_normalize_q_loss_makes_the_actor_gradient_scale_free() -> None:
    """normalize_q_loss divides −Q by mean |Q|: Q scaled by 10 gives the same actor gradient (not without it)."""
    z, obs = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(64, 1)

    def grad(options: dict, scale: float) -> Tensor:
        agent = _toy_agent({"alpha": 5.0, **options}, scale)
        loss, _ = agent.actor_objective(obs, z)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in agent.actor.parameters() if p.requires_grad])

    torch.testing.assert_close(grad({"normalize_q_loss": True}, 10.0), grad({"normalize_q_loss": True}, 1.0))
    assert not torch.allclose(grad({}, 10.0), grad({}, 1.0))
