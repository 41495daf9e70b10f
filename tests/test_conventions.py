"""The authors' conventions (SPEC §3 step 8, §5.1): each switch does what it names, and the defaults are unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from trqam_sdk.adapters import MLPFlowPolicy, MLPPolicyConfig

from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig, from_dict
from trqam_sdk.conventions import DIFFERENCES, REFERENCE_ACTION_CLIP, Conventions
from trqam_sdk.core.losses import chunk_return, flow_matching_loss
from trqam_sdk.data.transitions import ChunkSampler, Transitions
from trqam_sdk.methods.bc import bc_flow_matching
from trqam_sdk.networks.mlp import MLP, EnsembleMLP, QEnsemble, reinit_
from trqam_sdk.training.bc import pretrain_bc


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


# ------------------------------------------------------------------------------------------------ the profile
def test_defaults_are_this_sdk_and_reference_switches_every_difference():
    d, r = Conventions(), Conventions.reference()
    assert (d.bc_loss, d.init, d.bc_grad_clip, d.chunk_sampling, d.action_clip) == (
        "sum", "lecun_normal", None, "episode", None)
    assert (r.bc_loss, r.init, r.bc_grad_clip, r.chunk_sampling, r.action_clip) == (
        "mean", "xavier_uniform", 1.0, "reference", 1.0 - 1e-5)
    assert d.differences() == [] and r.differences() == list(DIFFERENCES)
    for name in DIFFERENCES:
        one = Conventions.only(name)
        assert one.differences() == [name] and getattr(one, name) == getattr(r, name)
        assert Conventions.profile(name) == one
    assert Conventions.profile("default") == d and Conventions.profile("reference") == r
    with pytest.raises(ValueError, match="unknown convention"):
        Conventions.only("bc_los")
    with pytest.raises(ValueError, match="unknown conventions profile"):
        Conventions.profile("authors")


def test_finetune_config_carries_conventions_and_parses_them_strictly():
    assert FinetuneConfig().conventions == Conventions()
    cfg = from_dict(FinetuneConfig, {"conventions": {"bc_loss": "mean", "chunk_sampling": "reference",
                                                     "action_clip": 0.99999, "bc_grad_clip": 1}})
    assert cfg.conventions == Conventions(bc_loss="mean", chunk_sampling="reference", action_clip=0.99999,
                                          bc_grad_clip=1.0)
    with pytest.raises(ValueError, match="bc_loss"):
        from_dict(FinetuneConfig, {"conventions": {"bc_loss": "avg"}})
    with pytest.raises(ValueError, match="action_clip"):
        from_dict(FinetuneConfig, {"conventions": {"action_clip": 1.5}})


# ------------------------------------------------------------------------------------------------ BC loss scale
def test_mean_flow_matching_loss_is_exactly_the_sum_over_dims():
    g = torch.Generator().manual_seed(0)
    v, x0, x1 = (torch.randn(7, 15, generator=g) for _ in range(3))
    w = (torch.rand(7, 15, generator=g) > 0.3).float()
    for weight in (None, w):
        s = flow_matching_loss(v, x0, x1, weight)
        assert torch.equal(flow_matching_loss(v, x0, x1, weight, reduction="mean"), s / 15)
    # the default is the historical formula, untouched
    assert torch.equal(flow_matching_loss(v, x0, x1, w), ((v - (x1 - x0)).square() * w).sum(-1).mean())
    with pytest.raises(ValueError, match="reduction"):
        flow_matching_loss(v, x0, x1, reduction="none")


def _policy(obs_dim: int = 3, horizon: int = 3, action_dim: int = 2) -> MLPFlowPolicy:
    torch.manual_seed(0)
    return MLPFlowPolicy(MLPPolicyConfig(obs_dim, horizon, action_dim, width=16, depth=2))


def _batch(b: int = 6, horizon: int = 3, action_dim: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    valid_steps = torch.ones(b, horizon)
    valid_steps[0, 2:] = 0.0  # a chunk that runs one step past its episode end
    valid_steps[1, 1:] = 0.0
    return {"observations": torch.randn(b, 3, generator=g), "actions": torch.rand(b, horizon, action_dim,
            generator=g) * 2 - 1, "valid_steps": valid_steps, "valid": valid_steps[:, -1]}


def test_mean_bc_loss_is_sum_over_h_times_a_on_identical_weights():
    policy, batch = _policy(), _batch()
    g = torch.Generator().manual_seed(2)
    x0, t = torch.randn(6, 6, generator=g), torch.rand(6, generator=g)
    s = bc_flow_matching(policy, batch, x0, t)
    m = bc_flow_matching(policy, batch, x0, t, Conventions(bc_loss="mean"))
    assert torch.equal(m, s / 6)  # H·A = 3·2
    (gs,) = torch.autograd.grad(s, policy.net.out.weight)
    (gm,) = torch.autograd.grad(m, policy.net.out.weight)
    torch.testing.assert_close(gm, gs / 6, rtol=1e-5, atol=1e-9)


def test_reference_bc_weights_whole_chunks_by_last_step_validity():
    policy, batch = _policy(), _batch()
    g = torch.Generator().manual_seed(3)
    x0, t = torch.randn(6, 6, generator=g), torch.rand(6, generator=g)
    x1 = batch["actions"].flatten(1)
    with torch.no_grad():
        v = policy.velocity(batch["observations"], (1 - t[:, None]) * x0 + t[:, None] * x1, t)
    err = (v - (x1 - x0)).square()
    per_step = err * batch["valid_steps"].repeat_interleave(2, dim=1)
    whole = err * batch["valid"][:, None]  # rows 0 and 1 count nothing, the others fully
    with torch.no_grad():
        torch.testing.assert_close(bc_flow_matching(policy, batch, x0, t), per_step.sum(-1).mean())
        torch.testing.assert_close(bc_flow_matching(policy, batch, x0, t, Conventions(chunk_sampling="reference")),
                                   whole.sum(-1).mean())
        torch.testing.assert_close(bc_flow_matching(policy, batch, x0, t, Conventions.reference()),
                                   whole.mean(-1).mean())


# ------------------------------------------------------------------------------------------------ chunk sampling
def _two_episodes() -> Transitions:
    """Episode A = rows 0..3 (task success at row 1: mask 0, the episode goes on), episode B = rows 4..8."""
    n = 9
    arrays = {"observations": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32),
              "actions": (np.arange(n, dtype=np.float32)[:, None] / 10) * np.ones((1, 2), np.float32),
              "rewards": np.array([-1, 0, -1, -1, -1, -1, -1, 0, 0], np.float32),
              "masks": np.array([1, 0, 1, 1, 1, 1, 1, 0, 0], np.float32),
              "terminals": np.array([0, 0, 0, 1, 0, 0, 0, 0, 1], np.float32),
              "next_observations": 100 + np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)}
    return Transitions.from_numpy(arrays)


def test_reference_sampler_validity_rewards_masks_on_two_episodes():
    data = _two_episodes()
    s = ChunkSampler(data, 3, mode="reference")
    assert len(s) == 9 - 3 + 1  # starts uniform in [0, N - H]
    out = s.sample(torch.tensor([0, 2, 3, 6]))
    torch.testing.assert_close(out["valid_steps"], torch.tensor([[1., 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]))
    torch.testing.assert_close(out["valid"], torch.tensor([1., 0, 0, 1]))
    # start 0: the reward after the task success at row 1 (mask 0) is kept; start 2: the step in episode B is not
    torch.testing.assert_close(out["rewards"], torch.tensor([[-1., 0, -1], [-1, -1, 0], [-1, 0, 0], [-1, 0, 0]]))
    torch.testing.assert_close(out["masks"], torch.tensor([0., 1, 1, 0]))  # min over valid steps
    torch.testing.assert_close(out["next_observations"][:, 0], torch.tensor([102., 103, 103, 108]))
    torch.testing.assert_close(out["actions"][1, :, 0], torch.tensor([0.2, 0.3, 0.4]))  # runs into episode B
    torch.testing.assert_close(out["observations"][:, 0], torch.tensor([0., 2, 3, 6]))
    # R = Σ γ^i r_i valid_i, as the authors' running sum
    torch.testing.assert_close(chunk_return(out["rewards"], 0.9)[0], torch.tensor(-1.0 + 0.0 - 0.81))


def test_episode_sampler_is_unchanged_on_two_episodes():
    data = _two_episodes()
    s = ChunkSampler(data, 3)
    assert s.mode == "episode" and len(s) == 9
    out = s.sample(torch.tensor([0, 2, 3, 7]))
    torch.testing.assert_close(out["valid_steps"], torch.tensor([[1., 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]]))
    torch.testing.assert_close(out["rewards"], torch.tensor([[-1., 0, 0], [-1, -1, 0], [-1, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(out["masks"], torch.tensor([0., 1, 1, 0]))
    torch.testing.assert_close(out["actions"][1, :, 0], torch.tensor([0.2, 0.3, 0.3]))  # clamped at the end
    torch.testing.assert_close(out["next_observations"][:, 0], torch.tensor([102., 103, 103, 108]))
    with pytest.raises(ValueError, match="mode"):
        ChunkSampler(data, 3, mode="authors")


# ------------------------------------------------------------------------------------------------ init
def _old_lecun_mlp(in_dim: int, out_dim: int, width: int, depth: int) -> MLP:
    """The historical construction, for the bit-identity of the default."""
    m = MLP.__new__(MLP)
    torch.nn.Module.__init__(m)
    dims = [in_dim] + [width] * depth
    m.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
    m.norms = None
    m.out = torch.nn.Linear(dims[-1], out_dim)
    for lin in [*m.hidden, m.out]:
        f = lin.in_features
        torch.nn.init.trunc_normal_(lin.weight, std=1 / math.sqrt(f), a=-2 / math.sqrt(f), b=2 / math.sqrt(f))
        torch.nn.init.zeros_(lin.bias)
    return m


def test_default_init_draws_the_same_weights_as_before():
    torch.manual_seed(5)
    old = _old_lecun_mlp(7, 3, 32, 2)
    torch.manual_seed(5)
    new = MLP(7, 3, 32, 2)
    for a, b in zip(old.parameters(), new.parameters(), strict=True):
        assert torch.equal(a, b)


def _check_xavier(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
    w = w.detach()
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.95 * bound  # uniform fills the box
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)


def test_xavier_uniform_bounds_mlp_ensemble_and_reinit():
    torch.manual_seed(0)
    m = MLP(10, 300, width=200, depth=2, layer_norm=True, init="xavier_uniform")
    for lin in [*m.hidden, m.out]:  # (10 → 200) and (200 → 300): fans differ, so lecun would fail the std
        _check_xavier(lin.weight, lin.in_features, lin.out_features)
        assert torch.count_nonzero(lin.bias) == 0
    e = EnsembleMLP(3, 10, 1, width=200, depth=2, init="xavier_uniform")
    for w in e.weights:
        for k in range(3):
            _check_xavier(w[k], w.shape[1], w.shape[2])
    q = QEnsemble(4, 6, num_critics=2, width=64, depth=2, init="xavier_uniform")
    assert float(q.net.weights[0].detach().abs().max()) <= math.sqrt(6 / (10 + 64))
    policy = _policy()
    with torch.no_grad():
        policy.net.hidden[0].bias.fill_(3.0)
    reinit_(policy, "xavier_uniform")
    lin = policy.net.hidden[0]
    assert float(lin.weight.abs().max()) <= math.sqrt(6 / (lin.in_features + lin.out_features))
    assert torch.count_nonzero(lin.bias) == 0
    with pytest.raises(ValueError, match="init"):
        MLP(3, 3, init="he_normal")
    with pytest.raises(TypeError, match="no MLP"):
        reinit_(torch.nn.Linear(2, 2), "xavier_uniform")


# ------------------------------------------------------------------------------------------------ action clip
def test_action_clip_on_load_and_bound_check_first():
    arrays = {k: v.numpy() for k, v in vars(_two_episodes()).items()}
    arrays["actions"][0] = [1.0, -1.0]
    kept = Transitions.from_numpy(arrays)
    assert float(kept.actions.abs().max()) == 1.0
    clipped = Transitions.from_numpy(arrays, action_clip=REFERENCE_ACTION_CLIP)
    assert float(clipped.actions.abs().max()) == float(torch.tensor(REFERENCE_ACTION_CLIP))
    assert torch.equal(clipped.actions[1:], kept.actions[1:])  # only the saturated entries moved
    assert torch.equal(clipped.clip_actions(REFERENCE_ACTION_CLIP).actions, clipped.actions)  # idempotent
    arrays["actions"][0] = [1.5, 0.0]
    with pytest.raises(ValueError, match="rescale"):  # mis-scaled data is still an error, not silently clipped
        Transitions.from_numpy(arrays, action_clip=REFERENCE_ACTION_CLIP)


# ------------------------------------------------------------------------------------------------ wiring
def _toy_data() -> Transitions:
    from trqam_sdk.testing.toy import random_episodes

    arrays = random_episodes()
    arrays["actions"] = np.clip(arrays["actions"] * 10, -1, 1)  # saturate some, so the clip has work
    return Transitions.from_numpy(arrays)


def test_pretrain_bc_takes_the_clip_sampling_and_loss_from_conventions(monkeypatch):
    import trqam_sdk.training.bc as bc_mod

    data = _toy_data()
    seen: dict[str, list] = {"clip": [], "mode": [], "amax": []}
    real_clip, real_sampler = torch.nn.utils.clip_grad_norm_, bc_mod.ChunkSampler

    def clip(params, max_norm, *a, **kw):
        seen["clip"].append(max_norm)
        return real_clip(params, max_norm, *a, **kw)

    def sampler(d, h, mode="episode"):
        seen["mode"].append(mode)
        seen["amax"].append(float(d.actions.abs().max()))
        return real_sampler(d, h, mode=mode)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(bc_mod, "ChunkSampler", sampler)
    policy = MLPFlowPolicy(MLPPolicyConfig(data.obs_dim, 3, data.action_dim, width=16, depth=2))
    pretrain_bc(policy, data, steps=2, batch_size=8, progress=False)
    assert seen == {"clip": [], "mode": ["episode"], "amax": [1.0]}
    pretrain_bc(policy, data, steps=2, batch_size=8, progress=False, conventions=Conventions.reference())
    assert seen["clip"] == [1.0, 1.0] and seen["mode"][-1] == "reference"
    assert seen["amax"][-1] == float(torch.tensor(REFERENCE_ACTION_CLIP))
    pretrain_bc(policy, data, steps=1, batch_size=8, progress=False, grad_clip=0.5,
                conventions=Conventions.reference())
    assert seen["clip"][-1] == 0.5  # an explicit clip wins


def test_finetuner_builds_sampler_critic_and_bc_from_conventions(tmp_path):
    from trqam_sdk.training.finetuner import Finetuner

    data = _toy_data()
    torch.manual_seed(0)
    policy = MLPFlowPolicy(MLPPolicyConfig(data.obs_dim, 3, data.action_dim, width=16, depth=2))
    cfg = FinetuneConfig(batch_size=8, steps=2, flow_steps=3, log_every=1, trackers=[], output_dir=str(tmp_path),
                         policy=PolicyConfig(width=16, depth=2), critic=CriticConfig(num_critics=2, width=32, depth=2),
                         conventions=Conventions.reference())
    ft = Finetuner(cfg, policy, data)
    assert ft.sampler.mode == "reference" and len(ft.sampler) == len(data) - 2
    assert float(ft.sampler.data.actions.abs().max()) == float(torch.tensor(REFERENCE_ACTION_CLIP))
    w0 = ft.agent.critic.net.weights[0]
    _check_xavier(w0[0], w0.shape[1], w0.shape[2])
    batch, noise = ft.shard(0)
    expected = bc_flow_matching(ft.agent.base, batch, noise["bc_x0"], noise["bc_t"], Conventions.reference())
    torch.testing.assert_close(ft.agent.bc_objective(batch, noise["bc_x0"], noise["bc_t"]), expected)
    metrics = ft.train(progress=False)
    assert math.isfinite(metrics["train/loss"])
