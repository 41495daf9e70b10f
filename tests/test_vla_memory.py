"""Memory and speed options of the VLA update, each keeping the VJP correct (issue 13 items 2-3), on the tiny
LeRobot models: the bf16 prefix, activation checkpointing of the expert, LoRA that the frozen copies do not pay
for, one frozen expert for base and reference, the pass counter, and the loss unchanged by the pass removal.

Tolerances: the finite-difference VJP check runs at the contract's float32 tolerance (eps 1e-2, rtol 3e-2,
atol 1e-2) in every mode, bf16 included: the VJP w.r.t. x runs through the fp32 expert, the bf16 prefix only
changes the (frozen) function. :func:`test_bf16_prefix_keeps_the_vjp_as_exact_as_fp32` checks the stronger
claim that the VJP-vs-FD gap in bf16 is no larger than in fp32.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from lerobot_tiny import ACTION_DIM, CHUNK, KINDS, Tiny, tiny
from torch import Tensor
from trqam_sdk.adapters import ActionSpec, FlowPolicy
from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS, LeRobotFlowPolicy

from trqam_sdk.config import CriticConfig, FinetuneConfig
from trqam_sdk.core.flow import velocity_vjp
from trqam_sdk.methods.trqam import TRQAMAgent
from trqam_sdk.networks.encoders import vla_critic
from trqam_sdk.profiling.passes import count_passes
from trqam_sdk.testing.adapter_contract import AdapterContract

pytestmark = pytest.mark.usefixtures("one_thread")
B, T = AdapterContract.batch, 3
MODES: dict[str, dict[str, Any]] = {
    "fp32": {}, "bf16": {"vlm_dtype": "bfloat16"}, "ckpt": {"gradient_checkpointing": True},
    "bf16+ckpt": {"vlm_dtype": "bfloat16", "gradient_checkpointing": True}, "lora": {"lora_rank": 2}}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "lerobot-tiny"


def build(m: Tiny, mode: str) -> LeRobotFlowPolicy:
    """The tiny ``m`` adapter with the options of ``mode`` (LoRA factors made non-zero, so LoRA is live)."""
    opts = MODES[mode]
    adapter = LEROBOT_ADAPTERS[m.kind](copy.deepcopy(m.policy), m.pre, m.post, **opts)
    if opts.get("lora_rank"):
        with torch.no_grad():
            g = torch.Generator().manual_seed(3)
            for n, p in adapter.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.05, generator=g)
    return adapter


def point(n: int = B, seed: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, CHUNK * ACTION_DIM, generator=g)
    return x, torch.rand(n, generator=g) * 0.9 + 0.05, torch.randn(n, CHUNK * ACTION_DIM, generator=g)


# -- the adapter contract in the memory modes ----------------------------------------------------------------------
class MemoryContract(AdapterContract):
    kind: ClassVar[str] = ""
    mode: ClassVar[str] = ""
    spec = ActionSpec(CHUNK, ACTION_DIM)
    float64 = check_agent = check_serialisation = check_bc_fit = False

    @pytest.fixture(autouse=True)
    def _tiny_model(self, root: Path) -> None:
        self.model = tiny(self.kind, root)

    def make_policy(self) -> FlowPolicy:
        return build(self.model, self.mode)

    def make_observations(self, batch: int, dtype: torch.dtype, generator: torch.Generator) -> Any:
        return self.model.obs(batch, dtype, generator)

    def bad_observations(self) -> list[Any]:
        good = self.model.obs(B)
        return [{k: v for k, v in good.items() if "language" not in k}, torch.zeros(B, 4)]


class TestSmolVLABf16CheckpointedContract(MemoryContract):
    kind, mode = "smolvla", "bf16+ckpt"


class TestPI0Bf16CheckpointedContract(MemoryContract):
    kind, mode = "pi0", "bf16+ckpt"


@pytest.mark.parametrize("mode", ["bf16", "ckpt", "lora"])
@pytest.mark.parametrize("kind", KINDS)
def test_vjp_matches_finite_differences_in_every_mode(kind: str, mode: str, root: Path) -> None:
    """The contract's FD check (t = 0.5) for every model x option (the two contracts above run all of it)."""
    contract = type("C", (MemoryContract,), {"kind": kind, "mode": mode})()
    contract.model = tiny(kind, root)
    contract.test_vjp_matches_finite_differences(0.5)


# -- bf16 prefix -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_prefix_is_bf16_the_expert_fp32_and_close_to_fp32(kind: str, root: Path) -> None:
    m = tiny(kind, root)
    fp32, bf16 = m.adapter, build(m, "bf16")
    prefix = bf16.prefix_parameters()
    assert prefix and all(p.dtype == torch.bfloat16 for p in prefix.values())
    expert = [p for p in bf16.parameters() if p.requires_grad]
    assert expert and all(p.dtype == torch.float32 for p in expert), "the trained expert must stay fp32"
    assert all(b.dtype != torch.bfloat16 for b in bf16.buffers()), "buffers (RoPE frequencies) stay fp32"
    obs = m.obs(B)
    c32, c16 = fp32.condition(obs), bf16.condition(obs)
    kv = c16["keys"] + c16["values"]  # computed in bf16, stored cast to the expert's fp32 (exactly)
    assert all(k.dtype == torch.float32 and torch.equal(k.to(torch.bfloat16).float(), k) for k in kv)
    assert not all(torch.equal(k.to(torch.bfloat16).float(), k) for k in c32["keys"]), "fp32 cache is not bf16"
    x, t, u = point()
    v32, v16 = fp32.velocity(c32, x, t), bf16.velocity(c16, x, t)
    assert v16.dtype == torch.float32
    scale = v32.abs().max()
    assert 0 < (v16 - v32).abs().max() < 2e-2 * scale, "bf16 changes the prefix a little, not the field"
    j32 = velocity_vjp(fp32.velocity_fn(c32), x, t, u)
    j16 = velocity_vjp(bf16.velocity_fn(c16), x, t, u)
    assert (j16 - j32).abs().max() < 2e-2 * j32.abs().max()
    assert fp32.same_condition_as(copy.deepcopy(fp32)) and bf16.same_condition_as(copy.deepcopy(bf16))


@pytest.mark.parametrize("kind", ["pi0", "smolvla"])
def test_bf16_prefix_keeps_the_vjp_as_exact_as_fp32(kind: str, root: Path) -> None:
    """|VJP - central FD| with the bf16 prefix is within 2x (+ float noise) of the fp32 one, at eps 1e-2 and 1e-3."""
    m = tiny(kind, root)
    obs = m.obs(B)
    x, t, u = point()
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    gaps = {}
    for mode in ("fp32", "bf16"):
        a = build(m, mode)
        v = a.velocity_fn(a.condition(obs))
        vjp = (velocity_vjp(v, x, t, u) * w).sum(-1)
        for eps in (1e-2, 1e-3):
            with torch.no_grad():
                fd = (u * (v(x + eps * w, t) - v(x - eps * w, t))).sum(-1) / (2 * eps)
            gaps[mode, eps] = ((vjp - fd).abs().max() / vjp.abs().max()).item()
    for eps in (1e-2, 1e-3):
        assert gaps["bf16", eps] <= 2 * gaps["fp32", eps] + 1e-3, gaps


# -- gradient checkpointing ------------------------------------------------------------------------------------------
def _expert_linear(a: LeRobotFlowPolicy) -> torch.nn.Module:
    """A linear layer inside the expert's first layer, inside a checkpointed region and before the last saved
    tensor of it (the recompute stops early once every saved tensor is back)."""
    model = a.policy.model
    layers = model.vlm_with_expert.lm_expert.layers if a.lerobot_type == "smolvla" else \
        model.paligemma_with_expert.gemma_expert.model.layers
    return layers[0].mlp.gate_proj


@pytest.mark.parametrize("kind", KINDS)
def test_checkpointing_recomputes_and_gives_identical_gradients(kind: str, root: Path) -> None:
    """Same velocities, VJPs and parameter gradients as without; the expert's layers run twice (forward +
    recompute) per backward; far fewer bytes are saved for backward over a 10-call rollout at batch 32."""
    m = tiny(kind, root)
    plain, ckpt = build(m, "fp32"), build(m, "ckpt")
    obs = m.obs(B)
    x, t, u = point()
    runs: dict[str, int] = {}
    out = {}
    for name, a in (("plain", plain), ("ckpt", ckpt)):
        cond = a.condition(obs)
        calls = []
        hook = _expert_linear(a).register_forward_pre_hook(lambda *_, c=calls: c.append(1))
        v = a.velocity(cond, x, t)
        (v * u).sum().backward()
        hook.remove()
        runs[name] = len(calls)
        out[name] = (v.detach(), velocity_vjp(a.velocity_fn(cond), x, t, u),
                     {n: p.grad for n, p in a.named_parameters() if p.requires_grad})
    assert runs == {"plain": 1, "ckpt": 2}, f"checkpointing must recompute in the backward: {runs}"
    (v0, j0, g0), (v1, j1, g1) = out["plain"], out["ckpt"]
    torch.testing.assert_close(v1, v0, rtol=0, atol=0)
    torch.testing.assert_close(j1, j0, rtol=1e-6, atol=1e-7)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)

    saved = {}
    big = m.obs(32)
    xb, _, _ = point(32)
    for name, a in (("plain", plain), ("ckpt", ckpt)):
        cond, total = a.condition(big), [0]

        def pack(x: Tensor, total: list[int] = total) -> Tensor:
            total[0] += x.numel() * x.element_size()
            return x
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            vs = [a.velocity(cond, xb, torch.full((32,), i / 10)) for i in range(10)]  # a tracked rollout
        sum(v.sum() for v in vs).backward()
        saved[name] = total[0]
    assert saved["ckpt"] < 0.35 * saved["plain"], saved


# -- LoRA and one frozen expert --------------------------------------------------------------------------------------
def agent_for(adapter: LeRobotFlowPolicy, reference: str = "frozen", steps: int = T) -> TRQAMAgent:
    cfg = FinetuneConfig(flow_steps=steps, batch_size=B, reference=reference,
                         critic=CriticConfig(num_critics=2, width=32, depth=2))
    torch.manual_seed(0)
    return TRQAMAgent(adapter, copy.deepcopy(adapter), vla_critic(adapter, 2, 32, 2), cfg)


def batch_for(m: Tiny, agent: TRQAMAgent) -> tuple[dict[str, Any], dict[str, Tensor]]:
    contract = type("C", (MemoryContract,), {"kind": m.kind, "mode": "fp32"})()
    contract.model = m
    return contract.make_batch(agent)


def loss_and_grads(agent: TRQAMAgent, batch: dict, noise: dict) -> tuple[Tensor, dict[str, Tensor]]:
    agent.zero_grad(set_to_none=True)
    loss, _ = agent(batch, noise)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["pi0", "smolvla"])
def test_lora_frozen_copies_pay_no_lora_and_the_update_is_unchanged(kind: str, root: Path) -> None:
    """reference="frozen": base and reference are ONE module, without LoRA wrappers (merged: with B = 0 the
    pretrained weights bit for bit); v_θ trains only LoRA factors; loss and gradients equal those of the old
    layout (two deep copies of the LoRA-wrapped model); the VLM is still held once."""
    m = tiny(kind, root)
    lora = LEROBOT_ADAPTERS[kind](copy.deepcopy(m.policy), m.pre, m.post, lora_rank=2)
    agent = agent_for(lora)
    assert agent.base is agent.ref
    assert not any("lora_" in n for n, _ in agent.ref.named_parameters()), "the frozen copy pays LoRA branches"
    assert not any(p.requires_grad for p in agent.ref.parameters())
    trainable = [n for n, p in agent.actor.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    pre = {k: v for k, v in m.adapter.state_dict().items()}
    ref_sd = agent.ref.state_dict()
    assert pre.keys() == ref_sd.keys() and all(torch.equal(pre[k], ref_sd[k]) for k in pre), \
        "the merged frozen expert must be the pretrained one"
    vlm = lambda a: a.policy.model.get_submodule(a.vlm_module)  # noqa: E731
    assert vlm(agent.actor) is vlm(agent.ref)
    assert agent.share_condition
    batch, noise = batch_for(m, agent)
    new_loss, new_grads = loss_and_grads(agent, batch, noise)
    old = agent_for(LEROBOT_ADAPTERS[kind](copy.deepcopy(m.policy), m.pre, m.post, lora_rank=2))
    old.base = copy.deepcopy(old.actor).requires_grad_(False)  # the old layout: LoRA-wrapped frozen deep copies
    old.ref = copy.deepcopy(old.actor).requires_grad_(False)
    old.load_state_dict({k: v for k, v in agent.state_dict().items() if not k.startswith(("base.", "ref."))},
                        strict=False)
    old_loss, old_grads = loss_and_grads(old, batch, noise)
    torch.testing.assert_close(new_loss, old_loss, rtol=1e-6, atol=1e-7)
    assert new_grads.keys() == old_grads.keys()
    for n in new_grads:
        torch.testing.assert_close(new_grads[n], old_grads[n], rtol=1e-5, atol=1e-7, msg=n)


def test_ema_reference_keeps_two_copies_and_lora_trains_the_base(root: Path) -> None:
    """reference="ema": the base trains (its LoRA factors) and the reference is its own EMA copy."""
    m = tiny("smolvla", root)
    agent = agent_for(LEROBOT_ADAPTERS["smolvla"](copy.deepcopy(m.policy), m.pre, m.post, lora_rank=2), "ema")
    assert agent.base is not agent.ref and agent.share_base_condition
    assert any(p.requires_grad for p in agent.base.parameters())
    assert any("lora_" in n for n, _ in agent.ref.named_parameters())


# -- pass counts and the loss kept the same ------------------------------------------------------------------------
@pytest.mark.parametrize("reference", ["frozen", "ema"])
def test_pass_counts_per_update_and_per_sample(reference: str, root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Sample: 1 prefix + T expert calls. Update: 2 prefixes (s', s; the EMA base's BC reuses the prefix at s,
    before 3) and 3T + 2 expert calls (+1 for the BC) over 4TB rows (+B). The loss and gradients with the
    shared BC prefix equal those of the old path bit for bit."""
    m = tiny("smolvla", root)
    agent = agent_for(build(m, "fp32"), reference)
    batch, noise = batch_for(m, agent)
    with count_passes(agent) as sample:
        agent.act(batch["observations"], torch.Generator().manual_seed(0))
    assert {k: sample[k] for k in ("prefix", "prefix_rows", "expert_calls", "expert_rows")} == \
        {"prefix": 1, "prefix_rows": B, "expert_calls": T, "expert_rows": T * B}
    with count_passes(agent) as update:
        loss, grads = loss_and_grads(agent, batch, noise)
    bc = reference == "ema"
    assert update["prefix"] == 2 and update["prefix_rows"] == 2 * B
    assert update["expert_calls"] == 3 * T + 2 + bc and update["expert_rows"] == 4 * T * B + bc * B, update
    assert set(update["by_model"]) == ({"actor", "base", "ref"} if bc else {"actor", "base=ref"})
    monkeypatch.setattr(agent, "share_base_condition", False)
    with count_passes(agent) as before:
        old_loss, old_grads = loss_and_grads(agent, batch, noise)
    assert before["prefix"] == 2 + bc
    assert torch.equal(loss, old_loss) and grads.keys() == old_grads.keys()
    assert all(torch.equal(grads[n], old_grads[n]) for n in grads)


def test_count_passes_restores_the_models(root: Path) -> None:
    a = build(tiny("pi0", root), "fp32")
    with count_passes(a) as n:
        a.sample(tiny("pi0", root).obs(2), flow_steps=2)
    assert n["prefix"] == 1 and n["expert_calls"] == 2 and n["expert_rows"] == 4
    assert "condition" not in a.__dict__ and "velocity" not in a.__dict__
