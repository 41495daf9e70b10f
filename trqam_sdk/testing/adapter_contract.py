"""The adapter contract suite (STYLE.md item 9) as a base class any adapter's test file subclasses.

Modelled on diffusers' ``SchedulerCommonTest``: the checks live here once; a test file names its adapter::

    class TestMyAdapter(AdapterContract):   # spec = ActionSpec(3, 2) and obs_dim = 5 unless set here
        mismatch_key = "width"              # a config field whose doubled value no longer fits the weights

        def make_policy(self):
            return MyPolicy(MyConfig(obs_dim=self.obs_dim, horizon=3, action_dim=2))

The contract: spec and registry; shapes and dtypes; clear errors on wrong observation shapes; a condition
computed once is reusable (and is not mutated by ``velocity``); ``repeat_condition`` tiling equals per-row
evaluation; ``TRQAMAgent.forward`` computes the condition once per state per model, not once per flow step;
bit-identical repeated VJPs; VJPs match finite differences; ``save_pretrained`` / ``load_policy`` round trip
and its errors; and the time convention (t = 0 noise → t = 1 action) by a BC fit, with a negative control.

Override ``make_observations`` / ``bad_observations`` for non-vector observations (a VLA's dict),
``expensive_modules`` for the per-state prefix modules, ``make_critic`` for a critic that is not a vector
``QEnsemble``. ``float64`` / ``check_agent`` / ``check_serialisation`` / ``check_bc_fit = False`` leave those
groups out (not collected, so nothing reads as skipped) where an adapter's own tests cover them more strongly.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from trqam_sdk.adapters import base
from trqam_sdk.adapters.base import ADAPTERS, ActionSpec, FlowPolicy, load_policy, repeat_condition, tree_map
from trqam_sdk.adapters.wrappers import ReversedTimePolicy
from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig
from trqam_sdk.core.flow import sample_ode, velocity_vjp
from trqam_sdk.core.losses import flow_matching_loss
from trqam_sdk.core.pytree import leaves
from trqam_sdk.methods.trqam import TRQAMAgent
from trqam_sdk.networks.mlp import QEnsemble


def snapshot(cond: Any) -> list[Tensor]:
    return [c.detach().clone() for c in leaves(cond)]


def assert_same_tree(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True)), \
        "the condition changed (a cache mutated in place?)"


def bump(config: dict[str, Any], key: str) -> bool:
    """Double the first ``key`` found in a (nested) config dict in place; True if one was found."""
    if key in config and isinstance(config[key], int):
        config[key] *= 2
        return True
    return any(bump(v, key) for v in config.values() if isinstance(v, dict))


def counting(fn: Callable[[Any], Any], log: list[int]) -> Callable[[Any], Any]:
    """``fn`` that also appends the batch size of every observation batch it is called with to ``log``."""
    def wrapped(obs: Any) -> Any:
        log.append(base.first_leaf(obs).shape[0])
        return fn(obs)
    return wrapped


class AdapterContract:
    """Base class of an adapter's contract tests; not collected itself (no ``Test`` prefix)."""

    obs_dim: ClassVar[int] = 5
    """vector observation size of the default ``make_observations``"""
    spec: ClassVar[ActionSpec] = ActionSpec(3, 2)
    """the chunk shape the policy declares"""
    batch: ClassVar[int] = 4
    mismatch_key: ClassVar[str] = "width"
    """a config field whose doubled value no longer fits the saved weights"""
    float64: ClassVar[bool] = True
    """False for a model that cannot run in float64: the exactness checks then run in float32, looser"""
    fit_steps: ClassVar[int] = 300
    """Adam steps (cosine-decayed from lr 1e-2) of the BC fit in the time-convention test"""
    check_agent: ClassVar[bool] = True
    check_serialisation: ClassVar[bool] = True
    check_bc_fit: ClassVar[bool] = True

    GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {  # what a False switch leaves out (not collected, not skipped)
        "float64": ("test_shapes_and_dtypes_float64",),
        "check_agent": ("test_agent_computes_condition_once_per_state",),
        "check_serialisation": tuple(f"test_{n}" for n in (
            "save_load_round_trip", "load_mismatched_config_fails_clearly", "load_mismatched_weights_fails_clearly",
            "load_unknown_adapter_fails_clearly", "load_missing_file_names_it")),
        "check_bc_fit": ("test_bc_fit_follows_the_sdk_convention",)}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for switch, tests in cls.GROUPS.items():
            if not getattr(cls, switch):
                for name in tests:
                    setattr(cls, name, None)  # pytest collects only callables

    # -- what a subclass provides --------------------------------------------------------------------------
    def make_policy(self) -> FlowPolicy:
        """A fresh float32 policy with deterministic weights, declaring ``spec``."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_policy()")

    def make_observations(self, batch: int, dtype: torch.dtype, generator: torch.Generator) -> Any:
        """A batch of observations (a tensor, or a dict for a VLA)."""
        return torch.randn(batch, self.obs_dim, generator=generator, dtype=dtype)

    def bad_observations(self) -> list[Any]:
        """Observations of the wrong shape: ``condition`` must reject each with a ValueError naming them."""
        return [torch.zeros(shape) for shape in
                [(self.batch, self.obs_dim + 1), (self.batch, self.obs_dim - 1), (self.obs_dim,),
                 (self.batch, self.obs_dim, 1)]]

    def expensive_modules(self, policy: FlowPolicy) -> list[nn.Module]:
        """Modules whose forward is the per-state cost (a VLA's vision-language prefix): run once per state."""
        return []

    def make_critic(self, policy: FlowPolicy) -> nn.Module:
        """The critic of the agent test: a QEnsemble over vector observations, as the SDK's default critic."""
        obs_dim = self.make_observations(1, torch.float32, torch.Generator()).shape[-1]
        return QEnsemble(obs_dim, policy.spec.flat_dim, num_critics=2, width=32, depth=2)

    # -- shared set-up -----------------------------------------------------------------------------------------
    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _one_thread(cls) -> Iterator[None]:
        """Tiny networks: on a busy 2-core machine 2 threads made the BC fits ~20x slower than 1."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    def inputs(self, batch: int | None = None, dtype: torch.dtype = torch.float32,
               seed: int = 0) -> tuple[Any, Tensor, Tensor]:
        """Observations, chunk points x (batch, H*A) and flow times t in [0.05, 0.95]."""
        batch = batch or self.batch
        g = torch.Generator().manual_seed(seed)
        obs = self.make_observations(batch, dtype, g)
        x = torch.randn(batch, self.spec.flat_dim, generator=g, dtype=dtype)
        t = torch.rand(batch, generator=g, dtype=dtype) * 0.9 + 0.05
        return obs, x, t

    def exact_dtype(self) -> torch.dtype:  # float32 for a model without float64: looser tolerances below
        return torch.float64 if self.float64 else torch.float32

    def make_agent(self, policy: FlowPolicy, steps: int = 3, **config: Any) -> TRQAMAgent:  # base: a deep copy
        cfg = FinetuneConfig(flow_steps=steps, batch_size=self.batch, policy=PolicyConfig(width=32, depth=2),
                             critic=CriticConfig(num_critics=2, width=32, depth=2), **config)
        return TRQAMAgent(policy, copy.deepcopy(policy), self.make_critic(policy), cfg)

    def make_batch(self, agent: TRQAMAgent, seed: int = 0) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """A chunked replay batch and the noise of one agent forward."""
        g = torch.Generator().manual_seed(seed)
        b, h, a = self.batch, self.spec.horizon, self.spec.action_dim
        batch = {"observations": self.make_observations(b, torch.float32, g),
                 "actions": torch.rand(b, h, a, generator=g) * 2.0 - 1.0, "rewards": torch.randn(b, h, generator=g),
                 "masks": torch.ones(b), "valid": torch.ones(b), "valid_steps": torch.ones(b, h),
                 "next_observations": self.make_observations(b, torch.float32, g)}
        draw = {"normal": torch.randn, "uniform": torch.rand}
        noise = {k: draw[n.kind](n.shape, generator=g) for k, n in agent.noise_spec(b).items()}
        return batch, noise

    # -- spec, shapes, errors --------------------------------------------------------------------------------
    def test_spec_and_registry(self) -> None:
        policy = self.make_policy()
        assert policy.spec == self.spec
        assert ADAPTERS.get(policy.type_name) is type(policy), "unregistered: load_policy could not find it"

    @pytest.mark.parametrize("batch", [1, 4])
    def test_shapes_and_dtypes(self, batch: int) -> None:
        self._shapes_and_dtypes(torch.float32, batch)

    @pytest.mark.parametrize("batch", [1, 4])
    def test_shapes_and_dtypes_float64(self, batch: int) -> None:
        self._shapes_and_dtypes(torch.float64, batch)

    def _shapes_and_dtypes(self, dtype: torch.dtype, batch: int) -> None:
        policy = self.make_policy().to(dtype)
        obs, x, t = self.inputs(batch, dtype)
        cond = policy.condition(obs)
        for leaf in leaves(cond):
            assert leaf.shape[0] == batch, "every condition leaf must have the batch as its leading axis"
        v = policy.velocity(cond, x, t)
        assert v.shape == (batch, self.spec.flat_dim) and v.dtype == dtype and torch.isfinite(v).all()
        assert torch.equal(policy.velocity_fn(cond)(x, t), v)

    def test_wrong_observation_shape_is_a_clear_error(self) -> None:
        policy = self.make_policy()
        for bad in self.bad_observations():
            with pytest.raises(ValueError, match=r"observations"):
                policy.condition(bad)

    # -- the cached condition -------------------------------------------------------------------------------
    def test_cached_condition_is_reusable_and_not_mutated(self) -> None:
        policy = self.make_policy()
        obs, x, t = self.inputs()
        cond = policy.condition(obs)
        before = snapshot(cond)
        v = policy.velocity(cond, x, t)
        for seed in (1, 2):  # other points in between, as the sampler and the adjoint do
            _, x2, t2 = self.inputs(seed=seed)
            policy.velocity(cond, x2, t2)
        assert torch.equal(policy.velocity(cond, x, t), v)
        assert torch.equal(policy.velocity(policy.condition(obs), x, t), v), "cached ≠ recomputed condition"
        assert_same_tree(before, snapshot(cond))

    def test_repeated_condition_matches_per_row_evaluation(self) -> None:
        """The agent evaluates T·B rows with the condition tiled T times: it must equal per-row evaluation."""
        dtype, steps, b = self.exact_dtype(), 3, self.batch
        policy = self.make_policy().to(dtype)
        obs, _, _ = self.inputs(dtype=dtype)
        g = torch.Generator().manual_seed(5)
        x = torch.randn(steps * b, self.spec.flat_dim, generator=g, dtype=dtype)
        t = (torch.arange(steps, dtype=dtype) / steps).repeat_interleave(b)
        tiled = policy.velocity(repeat_condition(policy.condition(obs), steps), x, t)
        assert tiled.shape == (steps * b, self.spec.flat_dim)
        tol = {"rtol": 1e-10, "atol": 1e-12} if self.float64 else {"rtol": 1e-4, "atol": 1e-5}
        for row in range(steps * b):
            i = row % b
            obs_i = tree_map(lambda o, i=i: o[i:i + 1], obs)  # row i of a tensor or a dict of tensors
            one = policy.velocity(policy.condition(obs_i), x[row:row + 1], t[row:row + 1])
            torch.testing.assert_close(tiled[row:row + 1], one, **tol)

    @pytest.mark.parametrize("reuse_rollout_velocity", [True, False])
    def test_agent_computes_condition_once_per_state(self, monkeypatch: pytest.MonkeyPatch,
                                                     reuse_rollout_velocity: bool) -> None:
        """One TRQAMAgent.forward: actor twice (s, and s' in the critic target), reference once, base once (BC).

        Not once per flow step or per VJP: with T = 3 a per-step call would show up as 3+ calls. Each call
        sees B rows (the agent tiles the *condition*, never the observations). Both ways of forming the loss's
        v_θ (kept from the rollout, or re-evaluated on the tiled trajectory) are checked.
        """
        b = self.batch
        agent = self.make_agent(self.make_policy(), steps=3)
        monkeypatch.setattr(agent, "reuse_rollout_velocity", reuse_rollout_velocity, raising=False)
        batch, noise = self.make_batch(agent)
        calls: dict[str, list[int]] = {"actor": [], "ref": [], "base": []}
        prefix_runs: dict[str, list[int]] = {name: [] for name in calls}
        for name, log in calls.items():
            model = getattr(agent, name)
            monkeypatch.setattr(model, "condition", counting(model.condition, log))
            for module in self.expensive_modules(model):
                module.register_forward_hook(lambda m, i, o, r=prefix_runs[name]: r.append(i[0].shape[0]))
        loss, metrics = agent(batch, noise)
        kl = metrics["actor/path_kl"]
        assert calls == {"actor": [b, b], "ref": [b], "base": [b]}
        if self.expensive_modules(agent.actor):
            assert prefix_runs == calls, "the expensive prefix must run only inside condition"
        assert torch.isfinite(loss) and torch.isfinite(kl)
        loss.backward()
        grads = [p.grad for p in agent.actor.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    # -- VJPs ---------------------------------------------------------------------------------------------------
    def test_vjp_is_deterministic(self) -> None:
        """Repeated VJPs at one point are bit-identical, also with other evaluations of the cache in between."""
        policy = self.make_policy()
        obs, x, t = self.inputs()
        cotangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        cond = policy.condition(obs)
        before = snapshot(cond)
        v = policy.velocity_fn(cond)
        first = velocity_vjp(v, x, t, cotangent)
        for seed in (1, 2):
            _, x2, t2 = self.inputs(seed=seed)
            velocity_vjp(v, x2, t2, cotangent)
            policy.velocity(cond, x2, t2)
            assert torch.equal(velocity_vjp(v, x, t, cotangent), first)
        assert first.shape == x.shape and torch.isfinite(first).all() and first.abs().max() > 0
        assert_same_tree(before, snapshot(cond))
        assert all(p.grad is None for p in policy.parameters()), "a VJP must not form parameter gradients"

    @pytest.mark.parametrize("t_value", [0.0, 0.5, 0.9])
    def test_vjp_matches_finite_differences(self, t_value: float) -> None:
        """uᵀ J w from the VJP vs u · (v(x + εw) - v(x - εw)) / 2ε, row by row, in float64 where possible."""
        dtype = self.exact_dtype()
        policy = self.make_policy().to(dtype)
        obs, x, _ = self.inputs(dtype=dtype)
        t = torch.full((self.batch,), t_value, dtype=dtype)
        g = torch.Generator().manual_seed(11)
        u = torch.randn(x.shape, generator=g, dtype=dtype)
        w = torch.randn(x.shape, generator=g, dtype=dtype)
        v = policy.velocity_fn(policy.condition(obs))
        eps, tol = (1e-6, {"rtol": 1e-6, "atol": 1e-7}) if self.float64 else (1e-2, {"rtol": 3e-2, "atol": 1e-2})
        with torch.no_grad():
            fd = (u * (v(x + eps * w, t) - v(x - eps * w, t))).sum(-1) / (2 * eps)
        vjp = (velocity_vjp(v, x, t, u) * w).sum(-1)
        torch.testing.assert_close(vjp, fd, **tol)

    # -- save / load -------------------------------------------------------------------------------------------
    def saved(self, folder: Path) -> Path:
        """A fresh policy saved with ``save_pretrained`` to ``folder``."""
        return self.make_policy().save_pretrained(folder)

    def test_save_load_round_trip(self, tmp_path: Path) -> None:
        policy = self.make_policy()
        loaded = load_policy(policy.save_pretrained(tmp_path / "policy"))
        assert type(loaded) is type(policy) and loaded.spec == policy.spec
        assert loaded.get_config() == policy.get_config()
        ours, theirs = policy.state_dict(), loaded.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert {n: p.requires_grad for n, p in loaded.named_parameters()} == \
            {n: p.requires_grad for n, p in policy.named_parameters()}, "frozen parts must stay frozen"
        obs, x, t = self.inputs()
        expected = policy.velocity(policy.condition(obs), x, t)
        assert torch.equal(loaded.velocity(loaded.condition(obs), x, t), expected)

    def test_load_mismatched_config_fails_clearly(self, tmp_path: Path) -> None:
        folder = self.saved(tmp_path / "policy")
        meta = json.loads((folder / "config.json").read_text())
        assert bump(meta["config"], self.mismatch_key), f"no int field {self.mismatch_key!r} in the config"
        (folder / "config.json").write_text(json.dumps(meta))
        with pytest.raises((RuntimeError, ValueError), match=r"size mismatch|does not match"):
            load_policy(folder)

    def test_load_mismatched_weights_fails_clearly(self, tmp_path: Path) -> None:
        folder = self.saved(tmp_path / "policy")
        state = load_file(str(folder / "model.safetensors"))
        dropped = sorted(state)[0]
        del state[dropped]
        state["stray.weight"] = torch.zeros(1)
        save_file(state, str(folder / "model.safetensors"))
        with pytest.raises(ValueError, match=rf"does not match.*{dropped}.*stray\.weight"):
            load_policy(folder)

    def test_load_unknown_adapter_fails_clearly(self, tmp_path: Path) -> None:
        folder = self.saved(tmp_path / "policy")
        meta = json.loads((folder / "config.json").read_text())
        meta["adapter"] = "no_such_adapter"
        (folder / "config.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=r"'no_such_adapter'.*known"):
            load_policy(folder)

    @pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "<folder>"])
    def test_load_missing_file_names_it(self, tmp_path: Path, missing: str) -> None:
        folder = self.saved(tmp_path / "policy")
        if missing == "<folder>":
            target, name = tmp_path / "nowhere", "nowhere"
        else:
            (folder / missing).unlink()
            target, name = folder, missing
        with pytest.raises(FileNotFoundError, match=name):
            load_policy(target)

    # -- time convention ------------------------------------------------------------------------------------
    def test_bc_fit_follows_the_sdk_convention(self) -> None:
        """Fit by the SDK's flow matching (x_t = (1 - t) x0 + t x1, target x1 - x0) to one chunk per state.

        Then sample_ode from N(0, I) at t = 0 lands near the chunk at t = 1; at t = 0 (x = noise) and at t = 0.9
        (x near the chunk) the velocity predicts the chunk as x + (1 - t) v; and integrating the fitted model the
        other way round (ReversedTimePolicy, the wrong convention for it) does not land there.
        """
        torch.manual_seed(0)
        policy = self.make_policy()
        g = torch.Generator().manual_seed(21)
        obs = self.make_observations(self.batch, torch.float32, g)
        target = 0.8 * torch.tanh(torch.randn(self.batch, self.spec.flat_dim, generator=g))
        reps = 32
        obs_rep, x1 = repeat_condition(obs, reps), target.repeat(reps, 1)  # tiles observation pytrees too
        opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.fit_steps)
        g = torch.Generator().manual_seed(1)
        for _ in range(self.fit_steps):
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
            err = (sample_ode(policy.velocity_fn(cond), x0, 10) - x1).abs().mean().item()
            assert err < 0.15, f"ODE sample misses the fitted chunk by {err:.3f}"
            for t_value, tol in ((0.0, 0.35), (0.9, 0.1)):  # from pure noise the whole chunk is predicted
                t = torch.full((x1.shape[0],), t_value)
                xt = (1.0 - t_value) * x0 + t_value * x1
                err_t = (xt + (1.0 - t_value) * policy.velocity(cond, xt, t) - x1).abs().mean().item()
                assert err_t < tol, f"at t = {t_value}: x + (1 - t) v misses the chunk by {err_t:.3f}"
            wrong = sample_ode(ReversedTimePolicy(policy).velocity_fn(cond), x0, 10)
            assert not torch.isfinite(wrong).all() or (wrong - x1).abs().mean() > 1.0, "wrong convention landed"
