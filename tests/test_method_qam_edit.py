"""QAM-E (``qam_edit``): the method contract; σ_a = 0 is QAM bit for bit; the edit stays within ±σ_a; the SAC term
trains only π_ω (and the temperature only log α); the critic's target uses the edited next action; and on the
closed-form toy (Gaussian prior, fixed linear critic Q(a) = wᵀa) the edit's mean goes to σ_a · sign(w)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from trqam_sdk.config import FinetuneConfig, PolicyConfig
from trqam_sdk.core.flow import sample_ode
from trqam_sdk.core.losses import td_target
from trqam_sdk.core.squashed import gaussian_params
from trqam_sdk.methods.base import AgentActor, FlowActor
from trqam_sdk.methods.qam_edit import QAMEditAgent
from trqam_sdk.testing.gaussian import GaussianPrior
from trqam_sdk.testing.method_contract import MethodContract

SIGMA_A = 0.3


class TestQAMEdit(MethodContract):
    method = "qam_edit"
    options = {"sigma_a": SIGMA_A}


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _finetuner(tmp_path: Path, method: str = "qam_edit", **options: float):  # noqa: ANN202
    contract = TestQAMEdit()
    contract.method, contract.options = method, options
    return contract.finetuner(tmp_path)


def test_sigma_a_zero_is_qam_bit_for_bit(tmp_path: Path) -> None:
    """Table 5: "σ_a = 0 is implemented by QAM" — same logged rows, same weights, same acting policy."""
    qam, edit = _finetuner(tmp_path / "qam", "qam"), _finetuner(tmp_path / "edit", sigma_a=0.0)
    assert edit.agent.edit is None and set(edit.agent.noise_spec(4)) == set(qam.agent.noise_spec(4))
    qam.train(progress=False)
    edit.train(progress=False)
    assert _rows(tmp_path / "qam") == _rows(tmp_path / "edit")
    a, b = qam.agent.state_dict(), edit.agent.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    actor = edit.agent.make_actor(0)
    assert type(actor) is FlowActor
    obs = edit.data.observations[:6]
    ref = qam.agent.make_actor(0)
    actor.reseed(5)
    ref.reseed(5)
    assert torch.equal(actor(obs), ref(obs))


def test_edit_stays_within_sigma_a_even_for_huge_pre_tanh_means(tmp_path: Path) -> None:
    ft = _finetuner(tmp_path, sigma_a=SIGMA_A)
    agent = ft.agent
    out = agent.edit.net.out
    with torch.no_grad():  # pre-tanh means ±1e6, alternating by dim; log σ head at its maximum
        out.weight.zero_()
        d = agent.spec.flat_dim
        out.bias[:d] = 1e6 * torch.tensor([(-1.0) ** i for i in range(d)])
        out.bias[d:] = 1e6
    obs = ft.data.observations[:24]
    gen = torch.Generator().manual_seed(0)
    a_tilde = agent.flow_action(obs, torch.randn(24, d, generator=gen))
    with torch.no_grad():
        delta, log_prob = agent.edit.sample(obs, a_tilde, 3.0 * torch.randn(24, d, generator=gen))
        final = agent.edited(a_tilde, delta)
    assert float(delta.abs().max()) <= 1.0 and torch.isfinite(log_prob).all()
    assert float((final - a_tilde).abs().max()) <= SIGMA_A + 1e-6 and float(final.abs().max()) <= 1.0
    for sample in (True, False):  # acting, sampled and deterministic, draws ã first from the same generator
        agent.opts.act_sample = sample
        chunk = agent.act(obs, torch.Generator().manual_seed(1)).flatten(1)
        x0 = torch.randn(24, d, generator=torch.Generator().manual_seed(1))
        assert float((chunk - agent.flow_action(obs, x0)).abs().max()) <= SIGMA_A + 1e-6
        assert float(chunk.abs().max()) <= 1.0
    assert isinstance(agent.make_actor(0), AgentActor)


def test_edit_term_trains_only_the_edit_and_the_temperature_only_log_alpha(tmp_path: Path) -> None:
    ft = _finetuner(tmp_path, sigma_a=SIGMA_A, init_alpha=0.5)
    agent = ft.agent
    obs = ft.data.observations[:16]
    d = agent.spec.flat_dim
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(16, d, generator=gen)
    loss, metrics = agent.edit_objective(obs, agent.flow_action(obs, torch.randn(16, d, generator=gen)), eps)
    loss.backward()
    for name in ("critic", "actor", "base", "target_critic", "ref"):
        for p in getattr(agent, name).parameters():
            assert p.grad is None or float(p.grad.abs().max()) == 0.0, name
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in agent.edit.parameters())
    # d/d log α of −α (log π + H̄) only: α is detached in the actor term α log π − Q
    log_prob = -metrics["actor/entropy"]
    want = -0.5 * (log_prob + agent.target_entropy)
    torch.testing.assert_close(agent.log_alpha.grad, want)
    assert agent.target_entropy == -0.5 * d


def test_critic_target_uses_the_edited_next_action(tmp_path: Path) -> None:
    ft = _finetuner(tmp_path, sigma_a=0.9)
    agent, cfg = ft.agent, ft.cfg
    batch, noise = ft.shard(0)
    s_next = batch["next_observations"]
    with torch.no_grad():
        a_tilde = sample_ode(agent.actor.velocity_fn(agent.actor.condition(s_next)), noise["target_x0"],
                             cfg.flow_steps).clamp(-1, 1)
        mean, log_std = gaussian_params(agent.edit.net(torch.cat([s_next, a_tilde], dim=-1)))
        want = (a_tilde + 0.9 * torch.tanh(mean + log_std.exp() * noise["target_edit_eps"])).clamp(-1, 1)
    got = agent.target_action(s_next, noise["target_x0"], noise)
    torch.testing.assert_close(got, want)
    assert float((got - a_tilde).abs().max()) > 1e-2  # the edit is really there
    _, metrics = agent.critic_objective(batch, noise["target_x0"], noise)
    c = cfg.critic
    with torch.no_grad():
        y = td_target(batch["rewards"], batch["masks"], agent.target_critic(s_next, want.view_as(batch["actions"])),
                      c.discount, c.rho)
        y_unedited = td_target(batch["rewards"], batch["masks"],
                               agent.target_critic(s_next, a_tilde.view_as(batch["actions"])), c.discount, c.rho)
    torch.testing.assert_close(metrics["critic/target_mean"], y.mean())
    assert abs(float(y.mean() - y_unedited.mean())) > 1e-5


class LinearCritic(nn.Module):
    """Q(s, a) = wᵀ a (one member), fixed."""

    def __init__(self, w: Tensor):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, obs: Tensor, chunk: Tensor) -> Tensor:
        return (chunk.flatten(1) @ self.w)[None]


def test_toy_edit_mean_goes_to_sigma_a_sign_w() -> None:
    """Linear Q: E[Q(ã + σ_a Δa)] is maximised by Δa → sign(w); with a small fixed α the learnt edit's mean must
    get there (the prior N(0, 0.1²) and σ_a = 0.3 keep every action inside the box, so the clip never binds)."""
    torch.manual_seed(0)
    w = torch.tensor([3.0, -1.5])
    prior = GaussianPrior(torch.zeros(2), 0.01 * torch.eye(2))
    cfg = FinetuneConfig(method="qam_edit", method_options={"sigma_a": SIGMA_A, "init_alpha": 1e-3},
                         flow_steps=10, policy=PolicyConfig(width=64, depth=2), trackers=[])
    agent = QAMEditAgent.build(cfg, prior, SimpleNamespace(obs_dim=2), critic=LinearCritic(w))
    opt = torch.optim.Adam(agent.edit.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        obs = torch.randn(128, 2, generator=gen)
        a_tilde = agent.flow_action(obs, torch.randn(128, 2, generator=gen))
        loss, _ = agent.edit_objective(obs, a_tilde, torch.randn(128, 2, generator=gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    obs = torch.randn(2048, 2, generator=gen)
    a_tilde = agent.flow_action(obs, torch.randn(2048, 2, generator=gen))
    with torch.no_grad():
        delta, _ = agent.edit.sample(obs, a_tilde, torch.randn(2048, 2, generator=gen))
        final = agent.edited(a_tilde, delta)
    edit_mean = (final - a_tilde).mean(0)  # the agent's own σ_a-scaled, clipped edit
    print(f"\n[qam_edit toy] edit mean {edit_mean.tolist()} target {(SIGMA_A * w.sign()).tolist()}")
    assert float(final.abs().max()) < 1.0
    torch.testing.assert_close(edit_mean, SIGMA_A * w.sign(), atol=0.02 * SIGMA_A, rtol=0)
    assert math.isfinite(float(loss.detach()))
