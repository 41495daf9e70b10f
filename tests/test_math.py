"""Unit tests of the TRQAM math (SPEC §3, §5, §7): every value is hand-computed or rebuilt from the SPEC text.

Each test is built so that a plausible bug (wrong sign, wrong time index, missing +h offset, wrong h,
unbiased instead of population std, missing /H, dual applied before the gradient step, ...) changes the
checked number. Numbers like ``sqrt(22)`` are worked out in the comments next to them.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from trqam_sdk.adapters import MLPFlowPolicy, MLPPolicyConfig, ResidualPolicy

from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig, TrustRegionConfig
from trqam_sdk.core.dual import DualState, budget_at, dual_update
from trqam_sdk.core.flow import (
    lean_adjoint,
    memoryless_g,
    ode_step,
    sample_memoryless,
    sample_ode,
    sde_step,
    time_grid,
)
from trqam_sdk.core.losses import (
    adjoint_matching_loss,
    chunk_return,
    critic_loss,
    flow_matching_loss,
    path_kl,
    pessimistic_value,
    td_target,
)
from trqam_sdk.methods import get_method
from trqam_sdk.methods.trqam import QAMAgent, QAMExternalKLAgent, TRQAMAgent, terminal_adjoint
from trqam_sdk.networks.mlp import QEnsemble

# -- flow.py ----------------------------------------------------------------------------------------------


def test_time_grid_is_left_endpoints() -> None:
    """t_i = i/T for i = 0..T-1: starts at 0, never reaches 1."""
    assert torch.equal(time_grid(4), torch.tensor([0.0, 0.25, 0.5, 0.75]))
    with pytest.raises(ValueError):
        time_grid(0)


def test_memoryless_g_values_with_h_offset() -> None:
    """g(t) = sqrt(2 (1 - t + h) / (t + h)); finite at t = 0 only thanks to the +h offset."""
    h = 0.1
    # t = 0: 2 * 1.1 / 0.1 = 22.  t = 0.9: 2 * 0.2 / 1.0 = 0.4.  t = 0.5: 2 * 0.6 / 0.6 = 2.
    expected = {0.0: math.sqrt(22.0), 0.9: math.sqrt(0.4), 0.5: math.sqrt(2.0)}
    for t, want in expected.items():
        assert memoryless_g(t, h) == pytest.approx(want, rel=1e-12)
    got = memoryless_g(torch.tensor([0.0, 0.9, 0.5], dtype=torch.float64), h)
    torch.testing.assert_close(got, torch.tensor(list(expected.values()), dtype=torch.float64))
    # float and tensor paths agree on a whole grid
    ts = time_grid(10)
    torch.testing.assert_close(memoryless_g(ts, 0.1), torch.tensor([memoryless_g(float(t), 0.1) for t in ts]))


def test_sde_step_formula() -> None:
    """x + h (2 v - x / (t + h)) + sqrt(h) g(t) z, checked on hand numbers."""
    x, v, z = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 3.0]]), torch.tensor([[2.0, -1.0]])
    t, h = 0.25, 0.25
    # t + h = 0.5; g = sqrt(2 * 1.0 / 0.5) = 2; sqrt(h) g = 1
    # dim 0: 1 + 0.25 * (1 - 2) + 2 = 2.75 ; dim 1: -2 + 0.25 * (6 + 4) - 1 = -0.5
    torch.testing.assert_close(sde_step(x, v, t, h, z), torch.tensor([[2.75, -0.5]]))
    # zero noise, t = 0: the drift's -x/(t+h) term: 1 + 0.25 (1 - 1/0.25) = 0.25
    out = sde_step(x[:, :1], v[:, :1], 0.0, 0.25, torch.zeros(1, 1))
    torch.testing.assert_close(out, torch.tensor([[0.25]]))


def test_ode_step_formula() -> None:
    """Plain Euler: x + h v."""
    torch.testing.assert_close(ode_step(torch.tensor([1.0, 2.0]), torch.tensor([4.0, -8.0]), 0.25),
                               torch.tensor([2.0, 0.0]))


def test_sample_memoryless_uses_ctrl_then_last_deterministically() -> None:
    """Steps 0..T-2 are SDE steps with v_ctrl at t_i; step T-1 is an ODE step with v_last at t_{T-1}."""
    T, B, D = 4, 3, 2
    h = 1.0 / T
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(B, D, generator=gen), torch.randn(T - 1, B, D, generator=gen)
    ctrl_t: list[Tensor] = []
    last_t: list[Tensor] = []

    def v_ctrl(x: Tensor, t: Tensor) -> Tensor:
        ctrl_t.append(t.clone())
        return 0.5 * x + 1.0 + t[:, None]

    def v_last(x: Tensor, t: Tensor) -> Tensor:
        last_t.append(t.clone())
        return -x + 3.0 * t[:, None]

    xs = sample_memoryless(v_ctrl, v_last, x0, noise)
    assert xs.shape == (T + 1, B, D) and not xs.requires_grad
    assert [float(t[0]) for t in ctrl_t] == [0.0, 0.25, 0.5]
    assert [float(t[0]) for t in last_t] == [0.75]
    assert all(t.shape == (B,) for t in ctrl_t + last_t)

    x = x0
    want = [x]
    for i in range(T - 1):
        t = i * h
        g = math.sqrt(2 * (1 - t + h) / (t + h))
        x = x + h * (2 * (0.5 * x + 1.0 + t) - x / (t + h)) + math.sqrt(h) * g * noise[i]
        want.append(x)
    want.append(x + h * (-x + 3.0 * (T - 1) * h))
    torch.testing.assert_close(xs, torch.stack(want))


def test_sample_ode_constant_and_time_dependent_fields() -> None:
    """Constant field c moves x0 by exactly c; v = t moves it by h Σ t_i = (T - 1) / (2T) (left endpoints)."""
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(sample_ode(lambda x, t: c.expand_as(x), x0, 7), x0 + c)
    out = sample_ode(lambda x, t: t[:, None].expand_as(x), x0, 4)
    torch.testing.assert_close(out, x0 + 0.375)  # 3/8; evaluating at t_{i+1} would give 5/8


def test_lean_adjoint_hand_computed_time_dependent_scalar_field() -> None:
    """v(x, t) = t x, T = 2: a_i = a_{i+1} (1 + h (2 s - 1/s)) with s = t_i + h.

    i = 1: s = 1   -> factor 1.5;  i = 0: s = 0.5 -> factor 0.5.  So a_1 = 1.5 a_T and a_0 = 0.75 a_T.
    (Evaluating at t_i instead of t_i + h, or dropping the -x/(t+h) term, changes both factors.)
    """
    a_T = torch.tensor([[2.0, -4.0]])
    xs = torch.randn(2, 1, 2)  # irrelevant for a linear field; x_0, x_1 only (no terminal state)
    adj = lean_adjoint(lambda x, t: t[:, None] * x, xs, a_T)
    assert adj.shape == (2, 1, 2)
    torch.testing.assert_close(adj[1], 1.5 * a_T)
    torch.testing.assert_close(adj[0], 0.75 * a_T)


def test_lean_adjoint_uses_the_transposed_jacobian() -> None:
    """v = M x with M = [[0, 1], [0, 0]], T = 1: a_0 = a_T + 2 Mᵀ a_T - a_T = (0, 2) for a_T = (1, 2).

    Using M a_T (a JVP instead of a VJP) would give (4, 0).
    """
    m = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    adj = lean_adjoint(lambda x, t: x @ m.T, torch.zeros(1, 1, 2), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(adj[0], torch.tensor([[0.0, 2.0]]))


def test_lean_adjoint_forms_no_parameter_gradients() -> None:
    """The adjoint is a constant for the loss: detached output, no .grad on the base's parameters."""
    lin = nn.Linear(3, 3)
    adj = lean_adjoint(lambda x, t: lin(x) * t[:, None], torch.randn(5, 2, 3), torch.randn(2, 3))
    assert not adj.requires_grad
    assert lin.weight.grad is None and lin.bias.grad is None


def test_residual_policy_starts_at_the_base() -> None:
    """v_θ = v_base + f_θ with f's output layer zeroed: identical to the base at init, base frozen."""
    torch.manual_seed(0)
    base = MLPFlowPolicy(MLPPolicyConfig(3, 2, 2, width=16, depth=2))
    pol = ResidualPolicy(base, MLPFlowPolicy(MLPPolicyConfig(3, 2, 2, width=16, depth=2)))
    obs, x, t = torch.randn(5, 3), torch.randn(5, 4), torch.rand(5)
    assert torch.equal(pol.velocity(pol.condition(obs), x, t), base.velocity(obs, x, t))
    assert not any(p.requires_grad for p in base.parameters())
    assert all(p.requires_grad for p in pol.correction.parameters())


# -- objectives.py -----------------------------------------------------------------------------------------


def test_adjoint_matching_loss_hand_value_and_shape() -> None:
    """T = 2, B = D = 1: Σ_i (2 Δ_i / σ_i + σ_i a_i)² with Δ = (1, 1), σ = (2, 1), a = (0, 1): 1 + 9 = 10."""
    v_ft = torch.tensor([[[1.0]], [[1.0]]])
    v_ref = torch.zeros(2, 1, 1)
    adj = torch.tensor([[[0.0]], [[1.0]]])
    loss = adjoint_matching_loss(v_ft, v_ref, adj, torch.tensor([2.0, 1.0]))
    assert loss.shape == (1,)
    torch.testing.assert_close(loss, torch.tensor([10.0]))


def test_adjoint_matching_loss_optimum_is_minus_sigma_sq_a_over_2() -> None:
    """Zero (and stationary) at v_ft - v_ref = -σ_i² a_i / 2 = -g_i² a_i / (2Λ) with σ_i = g_i / sqrt(Λ)."""
    T, B, D, lam = 5, 4, 3, 2.5
    gen = torch.Generator().manual_seed(2)
    h = 1.0 / T
    sigma = memoryless_g(time_grid(T).double(), h) / math.sqrt(lam)
    adj = torch.randn(T, B, D, generator=gen, dtype=torch.float64)
    v_ref = torch.randn(T, B, D, generator=gen, dtype=torch.float64)
    v_opt = (v_ref - sigma.view(-1, 1, 1) ** 2 * adj / 2).requires_grad_(True)
    loss = adjoint_matching_loss(v_opt, v_ref, adj, sigma)
    torch.testing.assert_close(loss, torch.zeros(B, dtype=torch.float64), atol=1e-9, rtol=0)
    (grad,) = torch.autograd.grad(loss.sum(), v_opt)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-9, rtol=0)
    # the opposite sign, or the optimum for another Λ, is not optimal
    v_bad = v_ref + sigma.view(-1, 1, 1) ** 2 * adj / 2
    assert (adjoint_matching_loss(v_bad, v_ref, adj, sigma) > 1.0).all()
    v_other = v_ref - (sigma.view(-1, 1, 1) ** 2 * lam) * adj / 2  # the Λ = 1 optimum
    assert (adjoint_matching_loss(v_other, v_ref, adj, sigma) > 1.0).all()


def test_adjoint_matching_loss_sigma_indexes_time() -> None:
    """σ has one entry per flow step (axis 0), not per batch row: swapping the σ entries changes the loss."""
    v_ft = torch.tensor([[[1.0]], [[0.0]]]).expand(2, 2, 1)
    zeros = torch.zeros(2, 2, 1)
    # step 0 only: (2 * 1 / 4)² = 0.25 per row; with σ swapped: (2 / 1)² = 4
    torch.testing.assert_close(adjoint_matching_loss(v_ft, zeros, zeros, torch.tensor([4.0, 1.0])),
                               torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(adjoint_matching_loss(v_ft, zeros, zeros, torch.tensor([1.0, 4.0])),
                               torch.tensor([4.0, 4.0]))


def test_path_kl_hand_value_with_horizon_division() -> None:
    """T = 2, g = (2, 1), h = 0.5, ||Δ||² = (1, 4), H = 2:  (0.25 * 1 + 1 * 4) / 2 = 2.125."""
    v_ft = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    kl = path_kl(v_ft, torch.zeros_like(v_ft), torch.tensor([2.0, 1.0]), 0.5, horizon=2)
    assert kl.shape == (1,)
    torch.testing.assert_close(kl, torch.tensor([2.125]))
    torch.testing.assert_close(path_kl(v_ft, torch.zeros_like(v_ft), torch.tensor([2.0, 1.0]), 0.5, 1),
                               torch.tensor([4.25]))


def test_path_kl_is_per_step_gaussian_kl() -> None:
    """Each Euler step: means differ by 2h Δv, shared covariance h g² I, so KL = ||2hΔv||² / (2 h g²)."""
    T, B, D = 3, 2, 4
    gen = torch.Generator().manual_seed(3)
    h = 1.0 / T
    g = memoryless_g(time_grid(T), h)
    v_ft, v_ref = torch.randn(T, B, D, generator=gen), torch.randn(T, B, D, generator=gen)
    want = torch.zeros(B)
    for i in range(T):
        std = math.sqrt(h) * float(g[i])
        p = torch.distributions.Normal(2 * h * v_ft[i], std)
        q = torch.distributions.Normal(2 * h * v_ref[i], std)
        want += torch.distributions.kl_divergence(p, q).sum(-1)
    torch.testing.assert_close(path_kl(v_ft, v_ref, g, h, 1), want)


def test_pessimistic_value_uses_population_std() -> None:
    """q = (1, 3) over K = 2: mean 2, population std 1 -> 2 - 0.5 = 1.5 (unbiased std √2 would give 1.29)."""
    q = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    torch.testing.assert_close(pessimistic_value(q, 0.5), torch.tensor([1.5, 5.0]))
    q3 = torch.tensor([[0.0], [0.0], [3.0]])  # mean 1, population std sqrt(2)
    torch.testing.assert_close(pessimistic_value(q3, 1.0), torch.tensor([1.0 - math.sqrt(2.0)]))


def test_chunk_return_and_td_target_with_masks() -> None:
    """y = Σ_k γ^k r_k + γ^H m (mean - ρ std); m = 0 drops the bootstrap."""
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(chunk_return(rewards, 0.9), torch.tensor([5.23, 2.71]))  # 1+1.8+2.43, 1+.9+.81
    next_q = torch.tensor([[1.0, 4.0], [3.0, 4.0]])  # pessimistic (ρ = 0.5): 1.5, 4
    y = td_target(rewards, torch.tensor([1.0, 0.0]), next_q, 0.9, 0.5)
    torch.testing.assert_close(y, torch.tensor([5.23 + 0.729 * 1.5, 2.71]))
    y_both = td_target(rewards, torch.tensor([1.0, 1.0]), next_q, 0.9, 0.5)
    torch.testing.assert_close(y_both, torch.tensor([5.23 + 0.729 * 1.5, 2.71 + 0.729 * 4.0]))


def test_critic_loss_weights_by_valid() -> None:
    """mean over (K, B) of valid * (q - y)²: q = [[1, 2], [3, 4]], y = 0, valid = (1, 0) -> (1 + 9) / 4."""
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(critic_loss(q, torch.zeros(2), torch.tensor([1.0, 0.0])), torch.tensor(2.5))


def test_flow_matching_loss_target_and_mask() -> None:
    """||v - (x1 - x0)||² summed over dims, weight masks dims, mean over rows."""
    x0, x1 = torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # row 0: (0)² + (0 - 2)² = 4; row 1: 1 + 0 = 1 -> 2.5; masked second dim: (0 + 1) / 2
    torch.testing.assert_close(flow_matching_loss(v, x0, x1), torch.tensor(2.5))
    torch.testing.assert_close(flow_matching_loss(v, x0, x1, torch.tensor([[1.0, 0.0], [1.0, 0.0]])),
                               torch.tensor(0.5))


# -- dual.py -----------------------------------------------------------------------------------------------


def test_dual_defaults_match_spec() -> None:
    """ρ_ema 0.1, c 2, η_λ 0.01, λ ∈ [0.01, 100], λ_0 = 1, D̄_0 = 0 (SPEC §3.7), in dual.py and the config."""
    p = inspect.signature(dual_update).parameters
    assert {k: p[k].default for k in ("lam_lr", "ema_rate", "kl_clip_mult", "lam_min", "lam_max")} == {
        "lam_lr": 0.01, "ema_rate": 0.1, "kl_clip_mult": 2.0, "lam_min": 0.01, "lam_max": 100.0}
    assert DualState() == DualState(lam=1.0, kl_ema=0.0)
    tr = TrustRegionConfig()
    assert (tr.lam_init, tr.lam_lr, tr.ema_rate, tr.kl_clip_mult, tr.lam_min, tr.lam_max, tr.lam_scale) == (
        1.0, 0.01, 0.1, 2.0, 0.01, 100.0, 3.0)


def test_dual_update_ema_then_lambda() -> None:
    """D̄ = 0.9 * 0 + 0.1 * 0.3 = 0.03; λ = 1 + 0.01 (0.03 - 0.5) = 0.9953 (uses the *new* D̄)."""
    s = dual_update(DualState(), 0.3, 0.5)
    assert s.kl_ema == pytest.approx(0.03, abs=1e-15)
    assert s.lam == pytest.approx(0.9953, abs=1e-15)
    s2 = dual_update(s, 0.3, 0.5)  # D̄ = 0.027 + 0.03 = 0.057; λ = 0.9953 + 0.01 (0.057 - 0.5)
    assert s2.kl_ema == pytest.approx(0.057, abs=1e-15)
    assert s2.lam == pytest.approx(0.9953 - 0.00443, abs=1e-15)


def test_dual_update_clips_kl_at_c_eps() -> None:
    """An outlier D̂ enters the EMA as min(D̂, c ε): D̂ = 100, ε = 0.5, c = 2 -> 1.0 -> D̄ = 0.1."""
    assert dual_update(DualState(), 100.0, 0.5).kl_ema == pytest.approx(0.1, abs=1e-15)
    assert dual_update(DualState(), 100.0, 0.5, kl_clip_mult=3.0).kl_ema == pytest.approx(0.15, abs=1e-15)
    assert dual_update(DualState(), 0.9, 0.5).kl_ema == pytest.approx(0.09, abs=1e-15)  # below c ε: no clip


def test_dual_update_projects_lambda() -> None:
    """λ is clipped to [λ_min, λ_max] after the step."""
    assert dual_update(DualState(lam=0.011), 0.0, 0.5).lam == 0.01
    assert dual_update(DualState(lam=99.999, kl_ema=10.0), 10.0, 0.5).lam == 100.0
    assert dual_update(DualState(lam=5.0), 0.0, 0.5, lam_min=4.0, lam_lr=10.0).lam == 4.0
    assert dual_update(DualState(lam=5.0, kl_ema=1.0), 1.0, 0.5, lam_max=6.0, lam_lr=10.0).lam == 6.0


def test_dual_update_custom_rates() -> None:
    """ρ_ema = 0.5, η_λ = 2: D̄ = 0.5 * 0.2 + 0.5 * 0.4 = 0.3; λ = 1 + 2 (0.3 - 0.1) = 1.4."""
    s = dual_update(DualState(lam=1.0, kl_ema=0.2), 0.4, 0.1, lam_lr=2.0, ema_rate=0.5, kl_clip_mult=10.0)
    assert s.kl_ema == pytest.approx(0.3) and s.lam == pytest.approx(1.4)


def test_budget_at_schedule() -> None:
    """The base ε until each (start, value) is reached; entries may come unsorted; ε must be positive."""
    assert budget_at(0, 0.5) == 0.5
    assert budget_at(999_999, 0.5, [(1_000_000, 3.0)]) == 0.5
    assert budget_at(1_000_000, 0.5, [(1_000_000, 3.0)]) == 3.0
    sched = [(20, 2.0), (10, 1.0)]
    assert [budget_at(s, 0.5, sched) for s in (9, 10, 19, 20, 10**9)] == [0.5, 1.0, 1.0, 2.0, 2.0]
    with pytest.raises(ValueError):
        budget_at(0, 0.0)
    with pytest.raises(ValueError):
        budget_at(5, 0.5, [(5, -1.0)])


# -- trqam.py: methods, terminal adjoint, the composed actor objective, the dual's place in the update -----


def test_method_temperatures_and_extra_losses() -> None:
    """TRQAM Λ = lam_scale λ; QAM Λ = 1/τ whatever λ; External KL adds λ_ext · mean D̂; TRQAM/QAM add 0."""
    def agent(method: str, lam: float = 2.0, tau: float = 1.0, lam_scale: float = 3.0) -> TRQAMAgent:
        return _tiny_agent(method, lam, tau, lam_scale)

    assert float(agent("trqam").temperature()) == 6.0
    assert float(agent("trqam", lam_scale=5.0).temperature()) == 10.0
    assert float(agent("qam", tau=4.0).temperature()) == 0.25
    assert float(agent("qam", lam=50.0, tau=4.0).temperature()) == 0.25
    assert float(agent("qam_ext_kl", tau=0.5).temperature()) == 2.0
    kl = torch.tensor([1.0, 3.0])
    assert float(agent("qam_ext_kl", tau=0.5).extra_loss(kl)) == 4.0
    assert float(agent("trqam").extra_loss(kl)) == 0.0 and float(agent("qam").extra_loss(kl)) == 0.0
    assert TRQAMAgent.uses_dual and not QAMAgent.uses_dual and QAMExternalKLAgent.uses_dual
    assert get_method("trqam") is TRQAMAgent and get_method("qam") is QAMAgent
    assert get_method("qam_ext_kl") is QAMExternalKLAgent and issubclass(QAMExternalKLAgent, QAMAgent)
    with pytest.raises(ValueError, match="unknown method 'nosuch'.*trqam"):
        get_method("nosuch")


class _LinearCritic(nn.Module):
    """Q_k(s, chunk) = w_k · flatten(chunk), returned as (K, B)."""

    def __init__(self, w: Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, obs: Tensor, chunk: Tensor) -> Tensor:
        return (chunk.flatten(1) @ self.w.T).T


def test_terminal_adjoint_sign_mean_and_clip() -> None:
    """a_T = -∇ mean_k Q_k(clip(x)): -(mean of w_k) inside the box, 0 for components outside it."""
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 0.0, -1.0, 2.0]])  # mean (2, 1, 1, 3)
    x = torch.tensor([[0.5, -0.9, 1.5, -2.0], [0.0, 0.0, 0.0, 0.99]])
    a = terminal_adjoint(_LinearCritic(w), torch.zeros(2, 1), x, horizon=2)
    torch.testing.assert_close(a, torch.tensor([[-2.0, -1.0, 0.0, 0.0], [-2.0, -1.0, -1.0, -3.0]]))


def _tiny_agent(method: str, lam: float, qam_tau: float = 1.0, lam_scale: float = 3.0) -> TRQAMAgent:
    torch.manual_seed(0)
    obs_dim, horizon, action_dim = 3, 2, 2
    actor = MLPFlowPolicy(MLPPolicyConfig(obs_dim, horizon, action_dim, width=16, depth=2))
    base = MLPFlowPolicy(MLPPolicyConfig(obs_dim, horizon, action_dim, width=16, depth=2))
    critic = QEnsemble(obs_dim, horizon * action_dim, num_critics=3, width=16, depth=2)
    cfg = FinetuneConfig(method=method, qam_tau=qam_tau, flow_steps=5, reference="frozen", trackers=[],
                         trust_region=TrustRegionConfig(lam_init=lam, lam_scale=lam_scale))
    return get_method(method)(actor, base, critic, cfg)


def _manual_actor_objective(agent: TRQAMAgent, obs: Tensor, x0: Tensor, noise: Tensor, big_lambda: float,
                            ext_lam: float | None) -> tuple[Tensor, Tensor]:
    """SPEC §3 steps 1–6 written out from the text, independently of flow.py / objectives.py."""
    T, H = agent.cfg.flow_steps, agent.spec.horizon
    h = 1.0 / T

    def v_ft(x: Tensor, t: float) -> Tensor:
        return agent.actor.velocity(obs, x, torch.full((x.shape[0],), t))

    def v_ref(x: Tensor, t: float) -> Tensor:
        return agent.ref.velocity(obs, x, torch.full((x.shape[0],), t))

    def g(t: float) -> float:
        return math.sqrt(2 * (1 - t + h) / (t + h))

    with torch.no_grad():
        xs, x = [x0], x0
        for i in range(T - 1):
            t = i * h
            x = x + h * (2 * v_ft(x, t) - x / (t + h)) + math.sqrt(h) * g(t) * noise[i]
            xs.append(x)
        x_T = x + h * v_ref(x, (T - 1) * h)
    xT = x_T.clone().requires_grad_(True)
    q = agent.target_critic(obs, xT.clamp(-1, 1).view(obs.shape[0], H, -1)).mean(0).sum()
    a = -torch.autograd.grad(q, xT)[0]
    adjs = [None] * T
    for i in range(T - 1, -1, -1):
        s = i * h + h
        xi = xs[i].clone().requires_grad_(True)
        drift = 2 * v_ref(xi, s) - xi / s
        a = a + h * torch.autograd.grad(drift, xi, grad_outputs=a)[0]
        adjs[i] = a.detach()
    loss = torch.zeros(())
    kl = torch.zeros(obs.shape[0])
    for i in range(T):
        t = i * h
        sig = g(t) / math.sqrt(big_lambda)
        diff = v_ft(xs[i], t) - v_ref(xs[i], t).detach()
        loss = loss + (2 * diff / sig + sig * adjs[i]).square().sum(-1).mean()
        kl = kl + (2 * h / g(t) ** 2) * diff.square().sum(-1) / H
    if ext_lam is not None:  # the External-KL term carries gradient into v_θ
        loss = loss + ext_lam * kl.mean()
    return loss, kl.detach().mean()


@pytest.mark.parametrize(("method", "lam", "tau", "big_lambda", "ext"), [
    ("trqam", 0.7, 1.0, 2.1, None),      # Λ = 3 λ
    ("qam", 0.7, 4.0, 0.25, None),       # Λ = 1/τ, λ ignored
    ("qam_ext_kl", 0.7, 2.0, 0.5, 0.7),  # Λ = 1/τ, + λ_ext D̂
])
def test_agent_actor_objective_matches_spec_section_3(method: str, lam: float, tau: float, big_lambda: float,
                                                      ext: float | None) -> None:
    """TRQAMAgent.actor_objective equals steps 1–6 of SPEC §3 written out by hand, for the three methods."""
    agent = _tiny_agent(method, lam, tau)
    with torch.no_grad():  # make v_θ differ from the reference
        for p in agent.actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(5)
    B, T, D = 6, agent.cfg.flow_steps, agent.spec.flat_dim
    obs, x0, noise = torch.randn(B, 3, generator=gen), torch.randn(B, D, generator=gen), torch.randn(
        T - 1, B, D, generator=gen)
    params = list(agent.actor.parameters())
    want_loss, want_kl = _manual_actor_objective(agent, obs, x0, noise, big_lambda, ext)
    want_grads = torch.autograd.grad(want_loss, params)
    loss, kl, _ = agent.actor_objective(obs, x0, noise)
    assert float(kl) > 1e-3
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kl, want_kl, rtol=1e-4, atol=1e-6)
    loss.backward()  # gradient only into v_θ, and the same gradient as SPEC's loss
    for p, want in zip(params, want_grads, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-3, atol=1e-5)
    assert all(p.grad is not None for p in agent.actor.parameters())
    assert all(p.grad is None for p in [*agent.base.parameters(), *agent.ref.parameters(),
                                        *agent.critic.parameters(), *agent.target_critic.parameters()])


@pytest.mark.parametrize(("method", "moves"), [("trqam", True), ("qam", False), ("qam_ext_kl", True)])
def test_agent_dual_step_freezes_lambda_for_qam(method: str, moves: bool) -> None:
    """dual_step always updates D̄; λ moves for TRQAM and External KL, stays frozen for QAM."""
    agent = _tiny_agent(method, 1.0)
    agent.dual_step(100.0, 0.5)  # D̄ = 0.1 * min(100, 1.0) = 0.1; λ = 1 + 0.01 (0.1 - 0.5) = 0.996
    assert float(agent.kl_ema) == pytest.approx(0.1)
    assert float(agent.lam) == pytest.approx(0.996 if moves else 1.0)


def test_finetuner_applies_dual_after_the_gradient_step(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Step k's loss uses λ_{k-1}; the dual runs after optimizer.step with this step's D̂ (SPEC §3.7)."""
    from trqam_sdk.data.transitions import Transitions
    from trqam_sdk.testing.toy import random_episodes
    from trqam_sdk.training.finetuner import Finetuner

    data = Transitions.from_numpy(random_episodes(num_episodes=2, length=12))
    torch.manual_seed(0)
    policy = MLPFlowPolicy(MLPPolicyConfig(data.obs_dim, 2, data.action_dim, width=16, depth=1))
    cfg = FinetuneConfig(batch_size=4, steps=3, flow_steps=3, trackers=[], output_dir=str(tmp_path),
                         policy=PolicyConfig(width=16, depth=1),
                         critic=CriticConfig(num_critics=2, width=16, depth=1),
                         trust_region=TrustRegionConfig(kl_budget=0.05, lam_lr=0.5))
    ft = Finetuner(cfg, policy, data)
    agent = ft.agent
    events: list[tuple] = []
    actor_objective, dual_step, opt_step = agent.actor_objective, agent.dual_step, ft.optimizer.step

    def spy_actor(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        out = actor_objective(*args, **kw)
        events.append(("forward", float(agent.lam), float(out[1])))
        return out

    def spy_dual(kl_hat: float, kl_budget: float) -> None:
        events.append(("dual", kl_hat, kl_budget))
        dual_step(kl_hat, kl_budget)

    def spy_opt(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        events.append(("opt",))
        return opt_step(*args, **kw)

    monkeypatch.setattr(agent, "actor_objective", spy_actor)
    monkeypatch.setattr(agent, "dual_step", spy_dual)
    monkeypatch.setattr(ft.optimizer, "step", spy_opt)
    state = DualState(lam=1.0, kl_ema=0.0)
    for k in range(3):
        m = ft.train_step()
        fwd, opt, dual = events[3 * k: 3 * k + 3]
        assert (fwd[0], opt[0], dual[0]) == ("forward", "opt", "dual")
        assert fwd[1] == pytest.approx(state.lam, abs=1e-12)  # the loss saw λ from the previous step
        assert dual[1] == pytest.approx(fwd[2], rel=1e-6) and dual[2] == 0.05  # this step's D̂, ε
        state = dual_update(state, dual[1], 0.05, lam_lr=0.5)
        assert m["dual/lam"] == pytest.approx(state.lam, abs=1e-12)
        assert m["dual/kl_ema"] == pytest.approx(state.kl_ema)
    assert state.lam != 1.0
