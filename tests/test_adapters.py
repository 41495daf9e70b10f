"""Adapter contract suite (STYLE.md item 9): every adapter runs every test here.

A new adapter (e.g. a LeRobot pi0 / SmolVLA wrapper) joins by adding one :class:`Case` to ``CASES``. The
contract: spec and registry; shapes and dtypes; clear errors on wrong observation shapes; a condition
computed once is reusable (and is not mutated by ``velocity``); ``repeat_condition`` tiling equals per-row
evaluation; ``TRQAMAgent.forward`` computes the condition once per state per model, not once per flow step;
bit-identical repeated VJPs; VJPs match finite differences; ``save_pretrained`` / ``load_policy`` round trip
and its errors; and the time convention (t = 0 noise → t = 1 action), with negative controls.

Adding an adapter: append a ``Case`` (its factory, a config field that changes weight shapes, and where it
differs from the defaults: an observation factory and wrong-shape observations, its ActionSpec, the
modules that make up its per-state prefix, ``float64=False`` if it cannot run in double). The agent test
builds a ``QEnsemble`` critic, so it needs vector observations, as the SDK's critic does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from trqam_sdk.adapters import (
    ADAPTERS,
    ActionSpec,
    FlowPolicy,
    MLPFlowPolicy,
    MLPPolicyConfig,
    ResidualPolicy,
    ReversedTimePolicy,
    load_policy,
    repeat_condition,
    tree_map,
)

from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig
from trqam_sdk.core.flow import sample_ode, velocity_vjp
from trqam_sdk.core.losses import flow_matching_loss
from trqam_sdk.methods.trqam import TRQAMAgent
from trqam_sdk.networks.mlp import QEnsemble
from trqam_sdk.testing.prefix_transformer import PrefixTransformerConfig, PrefixTransformerPolicy

OBS, H, A = 5, 3, 2
D = H * A
B = 4


# -- a test-only model in the opposite (LeRobot pi0-family) time convention --------------------------------
@dataclass
class PointMassConfig:
    obs_dim: int
    horizon: int
    action_dim: int
    t_min: float = 1e-2
    """t' is clamped to at least this, so the native field stays finite at its action end t' = 0"""


class NativeReversedPointMass(FlowPolicy):
    """Exact flow of a point mass at c(s) = tanh(W s + b), written in the pi0 convention.

    t' = 1 is noise, t' = 0 the action, path x_t' = t' noise + (1 - t') c and v'(x, t') = (x - c) / t'
    (≈ noise - action). In SDK time t = 1 - t' the wrapped field is (c - x) / (1 - t), whose Euler ODE from
    t = 0 lands exactly on c at t = 1 (the last step has 1 - t = h).
    """

    type_name = "test_native_reversed_point_mass"

    def __init__(self, config: PointMassConfig):
        super().__init__()
        self.config = config
        self.spec = ActionSpec(config.horizon, config.action_dim)
        self.target = nn.Linear(config.obs_dim, self.spec.flat_dim)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NativeReversedPointMass:
        return cls(PointMassConfig(**config))

    def condition(self, obs: Tensor) -> dict[str, Tensor]:
        if obs.ndim != 2 or obs.shape[1] != self.config.obs_dim:
            raise ValueError(f"observations: expected (B, {self.config.obs_dim}), got {tuple(obs.shape)}")
        return {"c": torch.tanh(self.target(obs))}

    def velocity(self, cond: dict[str, Tensor], x: Tensor, t_native: Tensor) -> Tensor:
        return (x - cond["c"]) / t_native.to(x.dtype).clamp_min(self.config.t_min)[:, None]


def vector_obs(batch: int, dtype: torch.dtype, g: torch.Generator) -> Tensor:
    return torch.randn(batch, OBS, generator=g, dtype=dtype)


def bad_vector_obs() -> list[Tensor]:
    return [torch.zeros(shape) for shape in [(B, OBS + 1), (B, OBS - 1), (OBS,), (B, OBS, 1)]]


# -- the cases: one per adapter ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], FlowPolicy]
    """a fresh float32 policy with OBS-dim observations and (H, A) chunks, deterministic weights"""
    mismatch_key: str
    """a config field whose doubled value no longer fits the saved weights"""
    expensive: Callable[[FlowPolicy], list[nn.Module]] | None = None
    """modules whose forward is the per-state cost (a VLA's vision-language prefix): run once per state"""
    obs: Callable[[int, torch.dtype, torch.Generator], Any] = vector_obs
    """(batch, dtype, generator) -> a batch of observations (a tensor, or a dict for a VLA)"""
    bad_obs: Callable[[], list[Any]] = bad_vector_obs
    """observations of the wrong shape: ``condition`` must reject each with a ValueError naming them"""
    spec: ActionSpec = ActionSpec(H, A)
    """the chunk shape the policy declares"""
    float64: bool = True
    """False for a model that cannot run in float64: the exactness checks then run in float32, looser"""
    fit_steps: int = 300
    """Adam steps (cosine-decayed from lr 1e-2) of the BC fit in the time-convention test"""


def _mlp(layer_norm: bool = False, seed: int = 0) -> MLPFlowPolicy:
    torch.manual_seed(seed)
    return MLPFlowPolicy(MLPPolicyConfig(OBS, H, A, width=32, depth=2, layer_norm=layer_norm))


def _prefix(seed: int = 0) -> PrefixTransformerPolicy:
    torch.manual_seed(seed)
    cfg = PrefixTransformerConfig(OBS, H, A, width=32, heads=4, layers=2, prefix_tokens=3)
    return PrefixTransformerPolicy(cfg)


def _reversed() -> ReversedTimePolicy:
    torch.manual_seed(0)
    return ReversedTimePolicy(NativeReversedPointMass(PointMassConfig(OBS, H, A)))


def _residual() -> ResidualPolicy:
    policy = ResidualPolicy(_mlp(seed=0), _mlp(seed=1))
    torch.manual_seed(2)  # a non-trivial correction, so its Jacobian enters the checks (zero_init zeroed it)
    with torch.no_grad():
        policy.correction.net.out.weight.normal_(0.0, 0.3)
    return policy


CASES = [
    Case("mlp", _mlp, "width"),
    Case("mlp_layernorm", lambda: _mlp(layer_norm=True), "width"),
    Case("prefix_transformer", _prefix, "width", expensive=lambda p: [p.prefix_encoder]),
    Case("reversed_time", _reversed, "obs_dim"),
    Case("residual", _residual, "width"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These networks are tiny: intra-op threads only add overhead, and on a busy 2-core machine OpenMP
    contention made the BC fits ~20x slower with 2 threads than with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


# -- helpers -----------------------------------------------------------------------------------------------
def leaves(cond: Any) -> Iterator[Tensor]:
    """Every tensor of a conditioning pytree, in a fixed order."""
    if isinstance(cond, Tensor):
        yield cond
    elif isinstance(cond, dict):
        for k in sorted(cond):
            yield from leaves(cond[k])
    elif isinstance(cond, list | tuple):
        for v in cond:
            yield from leaves(v)


def snapshot(cond: Any) -> list[Tensor]:
    return [c.detach().clone() for c in leaves(cond)]


def assert_same_tree(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and torch.equal(x, y), "the condition changed (a cache mutated in place?)"


def inputs(case: Case | None = None, batch: int = B, dtype: torch.dtype = torch.float32,
           seed: int = 0) -> tuple[Any, Tensor, Tensor]:
    """Observations, chunk points x (batch, D) and flow times t in [0.05, 0.95] for a case."""
    g = torch.Generator().manual_seed(seed)
    obs = (case.obs if case else vector_obs)(batch, dtype, g)
    x = torch.randn(batch, case.spec.flat_dim if case else D, generator=g, dtype=dtype)
    t = torch.rand(batch, generator=g, dtype=dtype) * 0.9 + 0.05
    return obs, x, t


def exact_dtype(case: Case) -> torch.dtype:
    return torch.float64 if case.float64 else torch.float32


def rows(obs: Any, index: slice) -> Any:
    """Rows of a batch of observations (a tensor or a dict of tensors)."""
    return tree_map(lambda o: o[index], obs)


def bump(config: dict[str, Any], key: str) -> bool:
    """Double the first ``key`` found in a (nested) config dict in place; True if one was found."""
    if key in config and isinstance(config[key], int):
        config[key] *= 2
        return True
    return any(bump(v, key) for v in config.values() if isinstance(v, dict))


# -- spec, shapes, errors ------------------------------------------------------------------------------------
def test_spec_and_registry(case: Case) -> None:
    policy = case.make()
    assert policy.spec == case.spec
    assert ADAPTERS.get(policy.type_name) is type(policy), "unregistered: load_policy could not find it"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, B])
def test_shapes_and_dtypes(case: Case, dtype: torch.dtype, batch: int) -> None:
    if dtype == torch.float64 and not case.float64:
        pytest.skip("this adapter does not run in float64")
    policy = case.make().to(dtype)
    obs, x, t = inputs(case, batch, dtype)
    cond = policy.condition(obs)
    for leaf in leaves(cond):
        assert leaf.shape[0] == batch, "every condition leaf must have the batch as its leading axis"
    v = policy.velocity(cond, x, t)
    assert v.shape == (batch, case.spec.flat_dim) and v.dtype == dtype and torch.isfinite(v).all()
    assert torch.equal(policy.velocity_fn(cond)(x, t), v)


def test_wrong_observation_shape_is_a_clear_error(case: Case) -> None:
    policy = case.make()
    for bad in case.bad_obs():
        with pytest.raises(ValueError, match=r"observations"):
            policy.condition(bad)


# -- the cached condition ---------------------------------------------------------------------------------
def test_cached_condition_is_reusable_and_not_mutated(case: Case) -> None:
    policy = case.make()
    obs, x, t = inputs(case)
    cond = policy.condition(obs)
    before = snapshot(cond)
    v = policy.velocity(cond, x, t)
    for seed in (1, 2):  # other points in between, as the sampler and the adjoint do
        _, x2, t2 = inputs(case, seed=seed)
        policy.velocity(cond, x2, t2)
    assert torch.equal(policy.velocity(cond, x, t), v)
    assert torch.equal(policy.velocity(policy.condition(obs), x, t), v), "cached ≠ recomputed condition"
    assert_same_tree(before, snapshot(cond))


def test_repeat_condition_block_order() -> None:
    cond = {"a": torch.arange(3.0)[:, None], "b": [torch.arange(6.0).view(3, 2)], "c": (torch.arange(3),)}
    tiled = repeat_condition(cond, 4)
    assert tiled["a"].shape == (12, 1) and tiled["b"][0].shape == (12, 2) and tiled["c"][0].shape == (12,)
    assert isinstance(tiled["b"], list) and isinstance(tiled["c"], tuple)
    for j in range(4):  # row j*B + b is state b (the agent's layout: ts.repeat_interleave(B))
        assert torch.equal(tiled["a"][3 * j:3 * j + 3], cond["a"])
        assert torch.equal(tiled["b"][0][3 * j:3 * j + 3], cond["b"][0])


def test_repeated_condition_matches_per_row_evaluation(case: Case) -> None:
    """The agent evaluates T·B rows with the condition tiled T times: it must equal per-row evaluation."""
    dtype, steps = exact_dtype(case), 3
    policy = case.make().to(dtype)
    obs, _, _ = inputs(case, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(steps * B, case.spec.flat_dim, generator=g, dtype=dtype)
    t = (torch.arange(steps, dtype=dtype) / steps).repeat_interleave(B)
    tiled = policy.velocity(repeat_condition(policy.condition(obs), steps), x, t)
    assert tiled.shape == (steps * B, case.spec.flat_dim)
    tol = {"rtol": 1e-10, "atol": 1e-12} if case.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for row in range(steps * B):
        b = row % B
        one = policy.velocity(policy.condition(rows(obs, slice(b, b + 1))), x[row:row + 1], t[row:row + 1])
        torch.testing.assert_close(tiled[row:row + 1], one, **tol)


def _counting(fn: Callable[[Tensor], Any], log: list[int]) -> Callable[[Tensor], Any]:
    def wrapped(obs: Tensor) -> Any:
        log.append(obs.shape[0])
        return fn(obs)
    return wrapped


def tiny_agent(policy: FlowPolicy, obs_dim: int, steps: int = 3) -> TRQAMAgent:
    cfg = FinetuneConfig(flow_steps=steps, batch_size=B, policy=PolicyConfig(width=32, depth=2),
                         critic=CriticConfig(num_critics=2, width=32, depth=2))
    critic = QEnsemble(obs_dim, policy.spec.flat_dim, num_critics=2, width=32, depth=2)
    return TRQAMAgent(policy, copy.deepcopy(policy), critic, cfg)


def tiny_batch(case: Case, agent: TRQAMAgent, seed: int = 0) -> tuple[dict[str, Any], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    h, a = case.spec.horizon, case.spec.action_dim
    batch = {
        "observations": case.obs(B, torch.float32, g),
        "actions": torch.rand(B, h, a, generator=g) * 2.0 - 1.0,
        "rewards": torch.randn(B, h, generator=g),
        "masks": torch.ones(B),
        "valid": torch.ones(B),
        "valid_steps": torch.ones(B, h),
        "next_observations": case.obs(B, torch.float32, g),
    }
    noise = {k: torch.randn(shape, generator=g) for k, shape in agent.noise_shapes(B).items()}
    noise["bc_t"] = torch.rand(B, generator=g)
    return batch, noise


@pytest.mark.parametrize("reuse_rollout_velocity", [True, False])
def test_agent_computes_condition_once_per_state(case: Case, monkeypatch: pytest.MonkeyPatch,
                                                 reuse_rollout_velocity: bool) -> None:
    """One TRQAMAgent.forward: actor twice (s, and s' in the critic target), reference once, base once (BC).

    Not once per flow step or per VJP: with T = 3 a per-step call would show up as 3+ calls. Each call
    sees B rows (the agent tiles the *condition*, never the observations). Both ways of forming the loss's
    v_θ (kept from the rollout, or re-evaluated on the tiled trajectory) are checked.
    """
    obs_dim = case.obs(1, torch.float32, torch.Generator()).shape[-1]  # the critic takes vector observations
    agent = tiny_agent(case.make(), obs_dim, steps=3)
    monkeypatch.setattr(agent, "reuse_rollout_velocity", reuse_rollout_velocity, raising=False)
    batch, noise = tiny_batch(case, agent)
    calls: dict[str, list[int]] = {"actor": [], "ref": [], "base": []}
    prefix_runs: dict[str, list[int]] = {name: [] for name in calls}
    for name, log in calls.items():
        model = getattr(agent, name)
        monkeypatch.setattr(model, "condition", _counting(model.condition, log))
        for module in case.expensive(model) if case.expensive else []:
            module.register_forward_hook(lambda m, i, o, r=prefix_runs[name]: r.append(i[0].shape[0]))
    loss, kl, _ = agent(batch, noise)
    assert calls == {"actor": [B, B], "ref": [B], "base": [B]}
    if case.expensive:
        assert prefix_runs == calls, "the expensive prefix must run only inside condition"
    assert torch.isfinite(loss) and torch.isfinite(kl)
    loss.backward()
    grads = [p.grad for p in agent.actor.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


# -- VJPs ---------------------------------------------------------------------------------------------------
def test_vjp_is_deterministic(case: Case) -> None:
    """Repeated VJPs at one point are bit-identical, also with other evaluations of the cache in between."""
    policy = case.make()
    obs, x, t = inputs(case)
    cotangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    cond = policy.condition(obs)
    before = snapshot(cond)
    v = policy.velocity_fn(cond)
    first = velocity_vjp(v, x, t, cotangent)
    for seed in (1, 2):
        _, x2, t2 = inputs(case, seed=seed)
        velocity_vjp(v, x2, t2, cotangent)
        policy.velocity(cond, x2, t2)
        assert torch.equal(velocity_vjp(v, x, t, cotangent), first)
    assert first.shape == x.shape and torch.isfinite(first).all() and first.abs().max() > 0
    assert_same_tree(before, snapshot(cond))
    assert all(p.grad is None for p in policy.parameters()), "a VJP must not form parameter gradients"


@pytest.mark.parametrize("t_value", [0.0, 0.5, 0.9])
def test_vjp_matches_finite_differences(case: Case, t_value: float) -> None:
    """uᵀ J w from the VJP vs u · (v(x + εw) - v(x - εw)) / 2ε, row by row, in float64 where possible."""
    dtype = exact_dtype(case)
    policy = case.make().to(dtype)
    obs, x, _ = inputs(case, dtype=dtype)
    t = torch.full((B,), t_value, dtype=dtype)
    g = torch.Generator().manual_seed(11)
    u = torch.randn(x.shape, generator=g, dtype=dtype)
    w = torch.randn(x.shape, generator=g, dtype=dtype)
    v = policy.velocity_fn(policy.condition(obs))
    eps, tol = (1e-6, {"rtol": 1e-6, "atol": 1e-7}) if case.float64 else (1e-2, {"rtol": 3e-2, "atol": 1e-2})
    with torch.no_grad():
        fd = (u * (v(x + eps * w, t) - v(x - eps * w, t))).sum(-1) / (2 * eps)
    vjp = (velocity_vjp(v, x, t, u) * w).sum(-1)
    torch.testing.assert_close(vjp, fd, **tol)


# -- save / load -------------------------------------------------------------------------------------------
def test_save_load_round_trip(case: Case, tmp_path: Path) -> None:
    policy = case.make()
    folder = policy.save_pretrained(tmp_path / "policy")
    loaded = load_policy(folder)
    assert type(loaded) is type(policy) and loaded.spec == policy.spec
    assert loaded.get_config() == policy.get_config()
    ours, theirs = policy.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == \
        {n: p.requires_grad for n, p in policy.named_parameters()}, "frozen parts must stay frozen"
    obs, x, t = inputs(case)
    expected = policy.velocity(policy.condition(obs), x, t)
    assert torch.equal(loaded.velocity(loaded.condition(obs), x, t), expected)


def test_load_mismatched_config_fails_clearly(case: Case, tmp_path: Path) -> None:
    folder = case.make().save_pretrained(tmp_path / "policy")
    meta = json.loads((folder / "config.json").read_text())
    assert bump(meta["config"], case.mismatch_key)
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises((RuntimeError, ValueError), match=r"size mismatch|does not match"):
        load_policy(folder)


def test_load_mismatched_weights_fails_clearly(case: Case, tmp_path: Path) -> None:
    folder = case.make().save_pretrained(tmp_path / "policy")
    state = load_file(str(folder / "model.safetensors"))
    dropped = sorted(state)[0]
    del state[dropped]
    state["stray.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"does not match.*{dropped}.*stray\.weight"):
        load_policy(folder)


def test_load_unknown_adapter_fails_clearly(case: Case, tmp_path: Path) -> None:
    folder = case.make().save_pretrained(tmp_path / "policy")
    meta = json.loads((folder / "config.json").read_text())
    meta["adapter"] = "no_such_adapter"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"'no_such_adapter'.*known"):
        load_policy(folder)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "<folder>"])
def test_load_missing_file_names_it(case: Case, tmp_path: Path, missing: str) -> None:
    folder = case.make().save_pretrained(tmp_path / "policy")
    if missing == "<folder>":
        target, name = tmp_path / "nowhere", "nowhere"
    else:
        (folder / missing).unlink()
        target, name = folder, missing
    with pytest.raises(FileNotFoundError, match=name):
        load_policy(target)


def test_residual_starts_at_base() -> None:
    """SPEC §2's residual option: v_θ = v_base + f_θ equals the prior before fine-tuning."""
    obs, x, t = inputs()
    for base, correction in [(_mlp(seed=0), _mlp(seed=1)), (_prefix(seed=0), _prefix(seed=1))]:
        expected = base.velocity(base.condition(obs), x, t)
        policy = ResidualPolicy(base, correction)
        assert torch.equal(policy.velocity(policy.condition(obs), x, t), expected)
        assert not any(p.requires_grad for p in policy.base.parameters())
        assert any(p.requires_grad for p in policy.correction.parameters())


# -- time convention ----------------------------------------------------------------------------------------
def test_reversed_time_wrapper_lands_on_the_action() -> None:
    """A native pi0-convention model through ReversedTimePolicy: the SDK's ODE from t = 0 noise lands on c.

    Negative control: the same model without the wrapper, integrated by the SDK, does not — so this test
    catches an adapter that forgets (or doubles) the conversion.
    """
    torch.manual_seed(0)
    native = NativeReversedPointMass(PointMassConfig(OBS, H, A)).double()
    obs, x, t = inputs(dtype=torch.float64)
    c = native.condition(obs)["c"]
    wrapped = ReversedTimePolicy(native)
    cond = wrapped.condition(obs)
    # the converted field is the SDK's exact point-mass velocity (c - x) / (1 - t)
    torch.testing.assert_close(wrapped.velocity(cond, x, t), (c - x) / (1.0 - t)[:, None])
    x0 = torch.randn(64 * B, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cond64, c64 = repeat_condition(cond, 64), c.repeat(64, 1)
    for steps in (1, 4, 10):
        landed = sample_ode(wrapped.velocity_fn(cond64), x0, steps)
        torch.testing.assert_close(landed, c64, rtol=0.0, atol=1e-10)
    wrong = sample_ode(native.velocity_fn(cond64), x0, 10)
    assert not torch.isfinite(wrong).all() or (wrong - c64).abs().mean() > 1.0


def _fit_targets(case: Case, n: int = B) -> tuple[Any, Tensor]:
    g = torch.Generator().manual_seed(21)
    obs = case.obs(n, torch.float32, g)
    return obs, 0.8 * torch.tanh(torch.randn(n, case.spec.flat_dim, generator=g))


def test_bc_fit_follows_the_sdk_convention(case: Case) -> None:
    """Fit by the SDK's flow matching (x_t = (1 - t) x0 + t x1, target x1 - x0) to one chunk per state.

    Then sample_ode from N(0, I) at t = 0 lands near the chunk at t = 1; at t = 0 (x = noise) and at t = 0.9
    (x near the chunk) the velocity predicts the chunk as x + (1 - t) v; and integrating the fitted model the
    other way round (ReversedTimePolicy, the wrong convention for it) does not land there.
    """
    torch.manual_seed(0)
    policy = case.make()
    obs, target = _fit_targets(case)
    reps = 32
    obs_rep, x1 = repeat_condition(obs, reps), target.repeat(reps, 1)  # tiles observation pytrees too
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, case.fit_steps)
    g = torch.Generator().manual_seed(1)
    for _ in range(case.fit_steps):
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(x1.shape[0], generator=g)
        xt = (1.0 - t[:, None]) * x0 + t[:, None] * x1
        loss = flow_matching_loss(policy.velocity(policy.condition(obs_rep), xt, t), x0, x1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()

    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cond = policy.condition(obs_rep)
        landed = sample_ode(policy.velocity_fn(cond), x0, 10)
        err = (landed - x1).abs().mean().item()
        assert err < 0.15, f"ODE sample misses the fitted chunk by {err:.3f}"
        for t_value, tol in ((0.0, 0.35), (0.9, 0.1)):  # from pure noise the whole chunk is predicted
            t = torch.full((x1.shape[0],), t_value)
            xt = (1.0 - t_value) * x0 + t_value * x1
            pred = xt + (1.0 - t_value) * policy.velocity(cond, xt, t)
            err_t = (pred - x1).abs().mean().item()
            assert err_t < tol, f"at t = {t_value}: x + (1 - t) v misses the chunk by {err_t:.3f}"
        wrong = sample_ode(ReversedTimePolicy(policy).velocity_fn(cond), x0, 10)
        assert not torch.isfinite(wrong).all() or (wrong - x1).abs().mean() > 1.0, "wrong convention landed"
