"""The adapter contract suite (trqam_sdk.testing.adapter_contract, STYLE.md item 9) on every built-in adapter.

Each ``Test*`` class subclasses :class:`AdapterContract` and names only its policy factory (and where it differs
from the defaults: the modules that form its per-state prefix, the config field that changes weight shapes), as
diffusers' scheduler tests do; the LeRobot adapters join the same way in test_lerobot_adapters.py. The contract:
spec and registry; shapes and dtypes; clear errors on wrong observation shapes; a condition computed once is
reusable (and is not mutated by ``velocity``); ``repeat_condition`` tiling equals per-row evaluation;
``TRQAMAgent.forward`` computes the condition once per state per model, not once per flow step; bit-identical
repeated VJPs; VJPs match finite differences; ``save_pretrained`` / ``load_policy`` round trip and its errors;
and the time convention (t = 0 noise → t = 1 action), with negative controls. An adapter from outside the
package (tests/plugins/my_adapter.py) passes the same suite and fine-tunes through ``trqam --plugin ... train``.
Below the classes: the wrappers' own properties (residual starts at its base; reversed time lands on the action).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from plugins.my_adapter import FiLMFlowPolicy, FiLMPolicyConfig
from torch import nn
from trqam_sdk.adapters import (
    ADAPTERS,
    FlowPolicy,
    MLPFlowPolicy,
    MLPPolicyConfig,
    ResidualPolicy,
    ReversedTimePolicy,
    load_policy,
    repeat_condition,
)

from trqam_sdk.core.flow import sample_ode
from trqam_sdk.testing.adapter_contract import AdapterContract
from trqam_sdk.testing.point_mass import NativeReversedPointMass, PointMassConfig
from trqam_sdk.testing.prefix_transformer import PrefixTransformerConfig, PrefixTransformerPolicy
from trqam_sdk.testing.toy import random_episodes
from trqam_sdk.training.checkpoint import latest_checkpoint

OBS, H, A = AdapterContract.obs_dim, AdapterContract.spec.horizon, AdapterContract.spec.action_dim
D, B = H * A, AdapterContract.batch


def _mlp(layer_norm: bool = False, seed: int = 0) -> MLPFlowPolicy:
    torch.manual_seed(seed)
    return MLPFlowPolicy(MLPPolicyConfig(OBS, H, A, width=32, depth=2, layer_norm=layer_norm))


def _prefix(seed: int = 0) -> PrefixTransformerPolicy:
    torch.manual_seed(seed)
    return PrefixTransformerPolicy(PrefixTransformerConfig(OBS, H, A, width=32, heads=4, layers=2, prefix_tokens=3))


# -- the contract, once per adapter -------------------------------------------------------------------------
class TestMLP(AdapterContract):
    def make_policy(self) -> FlowPolicy:
        return _mlp()


class TestMLPLayerNorm(AdapterContract):
    def make_policy(self) -> FlowPolicy:
        return _mlp(layer_norm=True)


class TestPrefixTransformer(AdapterContract):
    """The VLA-shaped double: its prefix encoder must run only inside ``condition``."""

    def make_policy(self) -> FlowPolicy:
        return _prefix()

    def expensive_modules(self, policy: FlowPolicy) -> list[nn.Module]:
        return [policy.prefix_encoder]


class TestReversedTime(AdapterContract):
    mismatch_key = "obs_dim"

    def make_policy(self) -> FlowPolicy:
        torch.manual_seed(0)
        return ReversedTimePolicy(NativeReversedPointMass(PointMassConfig(OBS, H, A)))


class TestResidual(AdapterContract):
    def make_policy(self) -> FlowPolicy:
        policy = ResidualPolicy(_mlp(seed=0), _mlp(seed=1))
        torch.manual_seed(2)  # a non-trivial correction, so its Jacobian enters the checks (zero_init zeroed it)
        with torch.no_grad():
            policy.correction.net.out.weight.normal_(0.0, 0.3)
        return policy


# -- an adapter from outside the package ---------------------------------------------------------------------
class TestPluginAdapter(AdapterContract):
    """What a third party's test file holds: the contract, named by one factory."""

    def make_policy(self) -> FlowPolicy:
        torch.manual_seed(0)
        return FiLMFlowPolicy(FiLMPolicyConfig(OBS, H, A, width=32))


def test_plugin_adapter_fine_tunes_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A saved plugin policy fine-tunes with `trqam --plugin plugins.my_adapter train`, and the result loads as
    that adapter with moved weights. Negative control: unregistered, its folder names an unknown adapter."""
    np.savez(tmp_path / "toy.npz", **random_episodes(num_episodes=4, length=20, obs_dim=OBS, action_dim=A))
    torch.manual_seed(0)
    prior = FiLMFlowPolicy(FiLMPolicyConfig(OBS, H, A, width=16)).save_pretrained(tmp_path / "prior")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({
        "batch_size": 8, "flow_steps": 3, "log_every": 1, "trackers": [],
        "critic": {"num_critics": 2, "width": 16, "depth": 2}}))
    train = ["train", "--config", str(tmp_path / "cfg.yaml"), "--data", str(tmp_path / "toy.npz"), "--policy",
             str(prior), "--output-dir", str(tmp_path / "run"), "--steps", "3", "--no-progress"]
    trqam = [sys.executable, "-m", "trqam_sdk.cli"]
    env = {**{k: v for k, v in os.environ.items() if k != "TRQAM_PLUGINS"}, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([*trqam, "--plugin", "plugins.my_adapter", *train], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned = load_policy(latest_checkpoint(tmp_path / "run") / "policy")
    assert type(tuned) is FiLMFlowPolicy and tuned.get_config() == load_policy(prior).get_config()
    before, after = load_policy(prior).state_dict(), tuned.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "3 TRQAM updates left the policy unchanged"
    monkeypatch.delitem(ADAPTERS, FiLMFlowPolicy.type_name)  # as in a process that never imported the plugin
    with pytest.raises(ValueError, match=r"'example_film'.*--plugin"):
        load_policy(prior)


# -- the tiling helper and the wrappers' own properties ---------------------------------------------------------
def test_repeat_condition_block_order() -> None:
    cond = {"a": torch.arange(3.0)[:, None], "b": [torch.arange(6.0).view(3, 2)], "c": (torch.arange(3),)}
    tiled = repeat_condition(cond, 4)
    assert tiled["a"].shape == (12, 1) and tiled["b"][0].shape == (12, 2) and tiled["c"][0].shape == (12,)
    assert isinstance(tiled["b"], list) and isinstance(tiled["c"], tuple)
    for j in range(4):  # row j*B + b is state b (the agent's layout: ts.repeat_interleave(B))
        assert torch.equal(tiled["a"][3 * j:3 * j + 3], cond["a"])
        assert torch.equal(tiled["b"][0][3 * j:3 * j + 3], cond["b"][0])


def test_residual_starts_at_base() -> None:
    """SPEC §2's residual option: v_θ = v_base + f_θ equals the prior before fine-tuning."""
    obs, x, t = TestMLP().inputs()
    for base, correction in [(_mlp(seed=0), _mlp(seed=1)), (_prefix(seed=0), _prefix(seed=1))]:
        expected = base.velocity(base.condition(obs), x, t)
        policy = ResidualPolicy(base, correction)
        assert torch.equal(policy.velocity(policy.condition(obs), x, t), expected)
        assert not any(p.requires_grad for p in policy.base.parameters())
        assert any(p.requires_grad for p in policy.correction.parameters())


def test_reversed_time_wrapper_lands_on_the_action() -> None:
    """A native pi0-convention model through ReversedTimePolicy: the SDK's ODE from t = 0 noise lands on c.

    Negative control: the same model without the wrapper, integrated by the SDK, does not — so this test
    catches an adapter that forgets (or doubles) the conversion.
    """
    torch.manual_seed(0)
    native = NativeReversedPointMass(PointMassConfig(OBS, H, A)).double()
    obs, x, t = TestMLP().inputs(dtype=torch.float64)
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
