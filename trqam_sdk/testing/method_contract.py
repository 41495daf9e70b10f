"""The method contract suite: every registered method's test file subclasses :class:`MethodContract`.

Modelled on diffusers' ``SchedulerCommonTest``: the base class holds the shared contract, a subclass names the
method and, where it differs, a config. The contract: the registry returns an :class:`Agent`; the noise spec
is drawn by the finetuner's one source of randomness and shards along each tensor's batch axis; the loss is a
finite scalar whose metrics are namespaced 0-d tensors; gradients reach the policy; one update changes the
policy; a run replays exactly; a checkpoint keeps the policy (loadable alone) apart from the algorithm's own
tensors and resumes bit-exactly. Third parties use it for their own methods::

    class TestMyMethod(MethodContract):
        method = "my_method"
        options = {"weight": 0.1}
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file

from trqam_sdk.adapters.base import FlowPolicy, load_policy
from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig, TrustRegionConfig
from trqam_sdk.core.pytree import tree_map
from trqam_sdk.data.transitions import Transitions
from trqam_sdk.methods.base import Agent
from trqam_sdk.methods.registry import get_method
from trqam_sdk.testing.toy import random_episodes
from trqam_sdk.training.checkpoint import latest_checkpoint
from trqam_sdk.training.finetuner import Finetuner
from trqam_sdk.training.randomness import draw_step, shard_noise

NAMESPACES = ("critic/", "actor/", "dual/", "train/", "time/", "eval/")


def _rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


class MethodContract:
    """Subclass and set ``method`` (a registered name); override the factories where the method needs to."""

    method: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    """``FinetuneConfig.method_options`` for the method"""
    changes_policy: ClassVar[bool] = True
    """one update moves the policy's weights (False for a method that trains only other networks at first)"""
    horizon: ClassVar[int] = 2

    # -- factories ---------------------------------------------------------------------------------------
    def make_data(self) -> Transitions:
        return Transitions.from_numpy(random_episodes(num_episodes=3, length=10, obs_dim=4, action_dim=2))

    def make_policy(self, data: Transitions) -> FlowPolicy:
        torch.manual_seed(0)
        return MLPFlowPolicy(MLPPolicyConfig(data.obs_dim, self.horizon, data.action_dim, width=16, depth=1))

    def make_config(self, output_dir: Path, **overrides: Any) -> FinetuneConfig:
        fields: dict[str, Any] = dict(
            method=self.method, method_options=dict(self.options), batch_size=4, steps=4, flow_steps=3, lr=1e-3,
            log_every=1, trackers=[], output_dir=str(output_dir), policy=PolicyConfig(width=16, depth=1),
            critic=CriticConfig(num_critics=2, width=16, depth=1),
            trust_region=TrustRegionConfig(kl_budget=0.05, lam_lr=0.5))
        fields.update(overrides)
        return FinetuneConfig(**fields)

    def finetuner(self, output_dir: Path, on_existing: str = "new", **overrides: Any) -> Finetuner:
        data = self.make_data()
        return Finetuner(self.make_config(output_dir, **overrides), self.make_policy(data), data,
                         on_existing=on_existing)  # type: ignore[arg-type]

    # -- the contract ------------------------------------------------------------------------------------
    def test_registered_as_an_agent(self) -> None:
        cls = get_method(self.method)
        assert issubclass(cls, Agent) and cls.method_name == self.method

    def test_noise_spec_draws_and_shards_along_the_batch(self, tmp_path: Path) -> None:
        agent = self.finetuner(tmp_path).agent
        spec = agent.noise_spec(6)
        idx, noise = draw_step(0, 3, 30, 6, spec)
        assert idx.shape == (6,) and set(noise) == set(spec)
        for k, n in spec.items():
            assert noise[k].shape == n.shape and n.shape[n.batch_dim] == 6, k
            if n.kind == "uniform":
                assert float(noise[k].min()) >= 0.0 and float(noise[k].max()) < 1.0, k
        halves = [shard_noise(noise, spec, s, 3) for s in (0, 3)]
        for k, n in spec.items():
            torch.testing.assert_close(torch.cat([h[k] for h in halves], dim=n.batch_dim), noise[k])
        _, again = draw_step(0, 3, 30, 6, spec)
        assert all(torch.equal(noise[k], again[k]) for k in spec)  # a pure function of (seed, step)

    def test_loss_is_a_finite_scalar_with_namespaced_metrics(self, tmp_path: Path) -> None:
        ft = self.finetuner(tmp_path)
        batch, noise = ft.shard(0)
        loss, metrics = ft.agent.loss(batch, noise)
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert metrics, "a method reports at least one metric"
        for k, v in metrics.items():
            assert k.startswith(NAMESPACES), f"metric {k!r} has no namespace {NAMESPACES}"
            assert isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad, k
        loss.backward()
        grads = [p.grad for p in ft.policy.parameters() if p.requires_grad]
        if self.changes_policy:
            assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), "no gradient reaches the policy"

    def test_update_moves_the_policy_and_logs_namespaced_rows(self, tmp_path: Path) -> None:
        ft = self.finetuner(tmp_path)
        before = {k: v.clone() for k, v in ft.policy.state_dict().items()}
        m = ft.train(progress=False)
        moved = any(not torch.equal(before[k], v) for k, v in ft.policy.state_dict().items())
        if self.changes_policy:
            assert moved, "four updates left the policy where it was"
        assert m["train/nonfinite_skips"] == 0 and all(k.startswith(NAMESPACES) for k in m)
        rows = _rows(tmp_path)
        assert [r["step"] for r in rows] == [1, 2, 3, 4]

    def test_same_seed_replays_exactly(self, tmp_path: Path) -> None:
        for name in ("a", "b"):
            self.finetuner(tmp_path / name).train(progress=False)
        assert _rows(tmp_path / "a") == _rows(tmp_path / "b")

    def test_checkpoint_split_by_owner_and_exact_resume(self, tmp_path: Path) -> None:
        full = self.finetuner(tmp_path / "full")
        full.train(progress=False)
        part = self.finetuner(tmp_path / "part")
        part.train(steps=2, progress=False)
        part.save_checkpoint()
        resumed = self.finetuner(tmp_path / "part", on_existing="resume")
        assert resumed.resumed_from is not None and resumed.step == 2
        resumed.train(progress=False)
        ck = latest_checkpoint(tmp_path / "part")
        algorithm = load_file(str(ck / "algorithm.safetensors"))
        prefix = resumed.agent.policy_attr + "."
        if getattr(resumed.policy, "save_is_exact", True):
            assert not any(k.startswith(prefix) for k in algorithm), "the policy is also in the algorithm file"
        a, b = full.agent.state_dict(), resumed.agent.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
        assert _rows(tmp_path / "full") == _rows(tmp_path / "part")
        alone = load_policy(ck / "policy")  # the policy loads on its own
        for k, v in alone.state_dict().items():
            assert torch.equal(v, resumed.policy.state_dict()[k]), k

    def test_acting_policy_is_seeded_picklable_and_in_the_box(self, tmp_path: Path) -> None:
        ft = self.finetuner(tmp_path)
        ft.train(steps=2, progress=False)
        act = pickle.loads(pickle.dumps(ft.agent.make_actor(0)))  # evaluation workers receive it pickled
        obs = tree_map(lambda x: x[:5], ft.data.observations)  # a tensor or a VLA's dict
        act.reseed(3)
        a = act(obs)
        assert a.shape == (5, self.horizon, ft.data.action_dim) and not a.requires_grad
        assert torch.isfinite(a).all() and float(a.abs().max()) <= 1.0
        act.reseed(3)
        assert torch.equal(act(obs), a), "the same seed must give the same chunks"

    def test_unknown_method_option_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises((KeyError, ValueError, TypeError), match="no_such_option"):
            self.finetuner(tmp_path, method_options={**self.options, "no_such_option": 1})
