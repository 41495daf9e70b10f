"""LeRobot pi0 / pi0.5 / SmolVLA adapters (tiny random-weight models built offline).

The adapter contract suite (trqam_sdk.testing.adapter_contract) runs on each through one subclass per model
(shapes, errors, cached prefix, tiling, VJP determinism, finite differences; float32 only), plus: the time
convention against lerobot's own training loss, padded dims and chunk length, the condition computed once per
state inside the agent (with the VLA critic), what trains (expert / LoRA), a TRQAM fine-tune on a LeRobotDataset
that moves the policy, and a 2-process torchrun run. lerobot's checkpoint format is checked by the LoRA test
here and by test_hub.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from lerobot_tiny import ACTION_DIM, CHUNK, KINDS, STATE_DIM, Tiny, tiny
from trqam_sdk.adapters import ActionSpec, FlowPolicy, ReversedTimePolicy
from trqam_sdk.adapters.base import first_leaf

from trqam_sdk.config import CriticConfig, FinetuneConfig, TrustRegionConfig
from trqam_sdk.integrations.lerobot.data import lerobot_transitions, write_synthetic_dataset
from trqam_sdk.methods.trqam import TRQAMAgent
from trqam_sdk.networks.encoders import vla_critic
from trqam_sdk.testing.adapter_contract import AdapterContract, counting
from trqam_sdk.testing.tiny_lerobot import IMAGE_KEY
from trqam_sdk.training.finetuner import Finetuner

B = AdapterContract.batch
BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "lerobot-tiny"


@pytest.fixture(params=KINDS)
def model(request: pytest.FixtureRequest, root: Path) -> Tiny:
    return tiny(request.param, root)


def bad_obs(m: Tiny) -> list[Any]:
    good = m.obs(B)
    drop_image = {k: v for k, v in good.items() if k != IMAGE_KEY}
    gray = {**good, IMAGE_KEY: good[IMAGE_KEY][:, :1]}
    state = {**good, "observation.state": torch.zeros(B, STATE_DIM + 1)}
    no_tokens = {k: v for k, v in good.items() if "language" not in k}
    return [drop_image, gray, state, no_tokens, torch.zeros(B, STATE_DIM)]


# -- the shared contract suite ------------------------------------------------------------------------------
class LeRobotContract(AdapterContract):
    """A tiny lerobot model under the contract (float32 only: lerobot's attention masks). The agent, the
    checkpoint format and the time convention have the stronger LeRobot-specific tests below."""

    kind: ClassVar[str] = ""
    spec = ActionSpec(CHUNK, ACTION_DIM)
    float64 = check_agent = check_serialisation = check_bc_fit = False

    @pytest.fixture(autouse=True)
    def _tiny_model(self, root: Path) -> None:
        self.model = tiny(self.kind, root)

    def make_policy(self) -> FlowPolicy:
        return self.model.fresh()

    def make_observations(self, batch: int, dtype: torch.dtype, generator: torch.Generator) -> Any:
        return self.model.obs(batch, dtype, generator)

    def bad_observations(self) -> list[Any]:
        return bad_obs(self.model)


class TestPI0Contract(LeRobotContract):
    kind = "pi0"


class TestPI05Contract(LeRobotContract):
    kind = "pi05"


class TestSmolVLAContract(LeRobotContract):
    kind = "smolvla"


# -- time convention and padding ----------------------------------------------------------------------------
def lerobot_loss(m: Tiny, policy: Any, obs: dict, actions: torch.Tensor, noise: torch.Tensor,
                 time: torch.Tensor) -> torch.Tensor:
    """lerobot's own per-element training loss (u - v')² with u = noise - action at native time ``time``."""
    model = policy.model
    pad = policy.config.max_action_dim - ACTION_DIM
    a, n = F.pad(actions, (0, pad)), F.pad(noise, (0, pad))  # padded dims: action 0 (pad_vector), noise 0
    tok, mask = obs["observation.language.tokens"], obs["observation.language.attention_mask"]
    if m.kind == "smolvla":
        images, img_masks = policy.prepare_images(obs)
        out = model.forward(images, img_masks, tok, mask, policy.prepare_state(obs), a, n, time)
    else:
        images, img_masks = policy._preprocess_images(obs)
        if m.kind == "pi0":
            out = model.forward(images, img_masks, tok, mask, policy.prepare_state(obs), a, n, time)
        else:
            out = model.forward(images, img_masks, tok, mask, a, n, time)
    return out[:, :, :ACTION_DIM]


def test_time_convention_matches_lerobot_training_loss(model: Tiny) -> None:
    """At SDK time t = 1 - t', (v(x_t, t) - (x1 - x0))² equals lerobot's (u - v')² elementwise.

    lerobot's loss runs the prefix and suffix jointly (no cache), so this also checks the cached path. Negative
    control: the field without the conversion (ReversedTimePolicy undoes it) misses by far more.
    """
    adapter, g = model.fresh(), torch.Generator().manual_seed(3)
    obs = model.obs(B, g=g)
    x1 = torch.rand(B, CHUNK, ACTION_DIM, generator=g) * 2 - 1
    x0 = torch.randn(B, CHUNK, ACTION_DIM, generator=g)
    t_native = torch.rand(B, generator=g) * 0.9 + 0.05
    with torch.no_grad():
        theirs = lerobot_loss(model, adapter.policy, obs, x1, x0, t_native)
        t = 1.0 - t_native
        xt = ((1 - t)[:, None, None] * x0 + t[:, None, None] * x1).flatten(1)
        cond = adapter.condition(obs)
        ours = (adapter.velocity(cond, xt, t) - (x1 - x0).flatten(1)) ** 2
        wrong = (ReversedTimePolicy(adapter).velocity(cond, xt, t) - (x1 - x0).flatten(1)) ** 2
    torch.testing.assert_close(ours.view_as(theirs), theirs, rtol=1e-3, atol=1e-4)
    assert (wrong.view_as(theirs) - theirs).abs().mean() > 10 * (ours.view_as(theirs) - theirs).abs().mean() + 1e-3


def test_padded_dims_and_chunk_length(model: Tiny) -> None:
    """The SDK flows over (chunk_size, real action dim); padded dims are held at 0 in every evaluation."""
    adapter, g = model.fresh(), torch.Generator().manual_seed(4)
    cfg = adapter.policy.config
    assert adapter.spec == ActionSpec(cfg.chunk_size, ACTION_DIM) and cfg.max_action_dim > ACTION_DIM
    obs = model.obs(B, g=g)
    x, t = torch.randn(B, CHUNK * ACTION_DIM, generator=g), torch.rand(B, generator=g)
    cond = adapter.condition(obs)
    v = adapter.velocity(cond, x, t)
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(tuple((k, v_, None) for k, v_ in zip(cond["keys"], cond["values"], strict=True)))
    padded = F.pad(x.view(B, CHUNK, ACTION_DIM), (0, cfg.max_action_dim - ACTION_DIM))
    native = adapter._denoise(cond, cache, padded, 1.0 - t)
    assert native.shape == (B, CHUNK, cfg.max_action_dim)
    torch.testing.assert_close(v, -native[:, :, :ACTION_DIM].flatten(1), rtol=0, atol=0)
    chunk = adapter.sample(obs, flow_steps=3, generator=g)
    assert chunk.shape == (B, CHUNK, ACTION_DIM) and chunk.abs().max() <= 1.0


# -- inside the agent: condition once per state, what trains ----------------------------------------------
def tiny_agent(adapter: Any, steps: int = 3) -> TRQAMAgent:
    cfg = FinetuneConfig(flow_steps=steps, batch_size=B, reference="frozen",
                         critic=CriticConfig(num_critics=2, width=32, depth=2))
    return TRQAMAgent(adapter, copy.deepcopy(adapter), vla_critic(adapter, 2, 32, 2), cfg)


def test_agent_computes_prefix_once_per_state_and_trains_the_expert_only(model: Tiny,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    contract = {c.kind: c for c in (TestPI0Contract, TestPI05Contract, TestSmolVLAContract)}[model.kind]()
    contract.model = model
    agent = tiny_agent(model.fresh())
    batch, noise = contract.make_batch(agent)
    calls: dict[str, list[int]] = {"actor": [], "ref": [], "base": []}
    vlms = []
    for name, log in calls.items():
        m = getattr(agent, name)
        monkeypatch.setattr(m, "condition", counting(m.condition, log))
        vlms.append(m.policy.model.get_submodule(m.vlm_module))
    assert all(v is vlms[0] for v in vlms), "v_θ, base and reference share one frozen VLM"
    prefix_runs: list[int] = []
    vision = next(sub for sub in vlms[0].modules() if "Vision" in type(sub).__name__)  # the image tower
    vision.register_forward_pre_hook(lambda mod, args, kw: prefix_runs.append(
        first_leaf([*args, *kw.values()]).shape[0]), with_kwargs=True)
    assert agent.share_condition, "v_θ and the reference share the frozen prefix"
    loss, metrics = agent(batch, noise)
    # s' for the critic target and s for the actor; the reference reuses the actor's prefix; the frozen
    # reference means the base (BC) never runs. The image tower runs only inside those two conditions.
    assert calls == {"actor": [B, B], "ref": [], "base": []}
    assert prefix_runs == [B, B], prefix_runs
    monkeypatch.setattr(agent, "share_condition", False)
    with torch.no_grad():
        unshared, unshared_metrics = agent(batch, noise)
    assert calls["ref"] == [B] and prefix_runs == [B] * 5
    assert torch.equal(unshared, loss.detach())
    assert torch.equal(unshared_metrics["actor/path_kl"], metrics["actor/path_kl"])
    loss.backward()
    expert = [n for n, p in agent.actor.named_parameters() if p.requires_grad]
    assert expert and all(any(e.split(".")[-1] in n or e in n for e in ("expert", "action_", "time_mlp", "state_proj"))
                          for n in expert)
    if model.kind == "smolvla":  # SmolVLA's state is a prefix token: its projection is frozen with the VLM
        assert not any("state_proj" in n for n in expert)
    grads = [p.grad for p in agent.actor.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in agent.actor.parameters() if not p.requires_grad)


def test_lora_trains_adapters_only_and_merges_into_a_lerobot_checkpoint(model: Tiny, tmp_path: Path) -> None:
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS

    from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture

    with tiny_pi_architecture():
        lora = LEROBOT_ADAPTERS[model.kind].from_pretrained(model.checkpoint, lora_rank=2)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    obs, g = model.obs(B), torch.Generator().manual_seed(5)
    x, t = torch.randn(B, CHUNK * ACTION_DIM, generator=g), torch.rand(B, generator=g)
    base = model.adapter.velocity(model.adapter.condition(obs), x, t)
    torch.testing.assert_close(lora.velocity(lora.condition(obs), x, t), base)  # LoRA B starts at zero
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05, generator=g)
    moved = lora.velocity(lora.condition(obs), x, t)
    assert (moved - base).abs().max() > 1e-4
    folder = lora.save_pretrained(tmp_path / "merged")
    with tiny_pi_architecture():
        reloaded = LEROBOT_ADAPTERS[model.kind].from_pretrained(folder)
    torch.testing.assert_close(reloaded.velocity(reloaded.condition(obs), x, t), moved, rtol=1e-4, atol=1e-5)


# -- fine-tuning on a LeRobotDataset -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset_root(root: Path) -> Path:
    path = root / "dataset"
    if not path.exists():
        write_synthetic_dataset(path, episodes=4, length=12, state_dim=STATE_DIM, action_dim=ACTION_DIM)
    return path


def test_finetune_on_lerobot_dataset_moves_the_policy(model: Tiny, dataset_root: Path, tmp_path: Path) -> None:
    """20 TRQAM updates on a LeRobotDataset (reward = a[0]/2): the expert moves, the VLM does not, KL is finite."""
    from accelerate.state import AcceleratorState
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    AcceleratorState._reset_state(reset_partial_state=True)
    data = lerobot_transitions(LeRobotDataset("local/trqam-synthetic", root=str(dataset_root)), model.pre)
    assert data.masks.sum() < len(data) and data.terminals.sum() == 4  # done flags and episode ends
    cfg = FinetuneConfig(batch_size=4, steps=20, flow_steps=4, lr=1e-3, log_every=5, trackers=[],
                         reference="frozen", output_dir=str(tmp_path / "run"),
                         critic=CriticConfig(num_critics=2, width=64, depth=2),
                         trust_region=TrustRegionConfig(kl_budget=0.05, lam_lr=0.5))
    policy = model.fresh()
    ft = Finetuner(cfg, policy, data, critic=vla_critic(policy, 2, 64, 2))
    obs = model.obs(16, g=torch.Generator().manual_seed(9))
    before = policy.sample(obs, 4, torch.Generator().manual_seed(1))
    for _ in range(cfg.steps):
        metrics = ft.train_step()
    actor = ft.agent.actor
    after = actor.sample(obs, 4, torch.Generator().manual_seed(1))
    shift = (after - before).abs().mean().item()
    first_dim = (after[..., 0] - before[..., 0]).mean().item()
    print(f"\n{model.kind}: mean |Δ chunk| {shift:.4f}, mean Δ a[0] {first_dim:+.4f}, λ {metrics['dual/lam']:.3f}, "
          f"path KL {metrics['actor/path_kl']:.4f}")
    assert shift > 1e-3, "20 updates left the policy where it was"
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    init = dict(model.adapter.named_parameters())
    for n, p in actor.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, init[n]), f"frozen {n} changed"
    assert any(not torch.equal(p, init[n]) for n, p in actor.named_parameters() if p.requires_grad)


def test_two_process_torchrun_finetune(model: Tiny, dataset_root: Path, tmp_path: Path) -> None:
    """`trqam lerobot-train` under torchrun with 2 processes: runs, writes a lerobot checkpoint that loads."""
    from trqam_sdk.adapters.lerobot import from_pretrained

    from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture

    port = 29540 + KINDS.index(model.kind)
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), "-m", "trqam_sdk.cli",
           "lerobot-train", "--policy", str(model.checkpoint), "--dataset", str(dataset_root), "--repo-id",
           "local/trqam-synthetic", "--steps", "2", "--batch-size", "4", "--flow-steps", "3",
           "--output-dir", str(tmp_path / "run"), "--tiny"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["num_processes"] == 2 and summary["steps"] == 2
    state = json.loads((tmp_path / "run" / "policy" / "trqam_state.json").read_text())
    assert state["num_processes"] == 2 and len(state["kl_curve"]) == 2
    with tiny_pi_architecture():
        trained = from_pretrained(tmp_path / "run" / "policy")
    assert trained.spec == model.adapter.spec


def test_lerobot_data_errors_name_the_problem(root: Path) -> None:
    m = tiny("smolvla", root)
    g = torch.Generator().manual_seed(0)
    raw = m.raw(1, g)
    row = {IMAGE_KEY: raw[IMAGE_KEY][0], "observation.state": raw["observation.state"][0], "task": "pick the cube",
           "action": torch.zeros(ACTION_DIM), "episode_index": torch.tensor(0), "next.done": torch.tensor([False])}
    with pytest.raises(KeyError, match="next.reward"):
        lerobot_transitions([row], m.pre)
    far = {**row, "next.reward": torch.tensor([0.0]), "action": torch.full((ACTION_DIM,), 5.0)}
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        lerobot_transitions([far], m.pre)
    ok = lerobot_transitions([{**row, "next.reward": torch.tensor([1.0])}] * 3, m.pre)
    assert len(ok) == 3 and ok.terminals.tolist() == [0.0, 0.0, 1.0] and isinstance(ok.observations, dict)
    with pytest.raises(TypeError, match="obs_dim"):
        _ = ok.obs_dim


def test_lerobot_bench_times_the_full_update_with_a_consistent_breakdown() -> None:
    """`trqam lerobot-bench`: every timed part is non-negative (a timer counted twice would drive the residual
    entries negative) and the parts add up to the measured update."""
    from trqam_sdk.profiling.lerobot_bench import bench_kind

    r = bench_kind("smolvla", batch=2, flow_steps=3, chunk=4, image=32, repeats=2)
    parts = r["breakdown_ms"]
    assert {"prefix", "sde_rollout", "adjoint_vjps", "critic_target_ode", "critic_nets", "optimizer",
            "backward_clip_targets_dual"} <= set(parts)
    assert all(v >= 0 for v in parts.values()), parts
    assert r["ratio"] == pytest.approx(r["update_ms"] / r["sample_ms"], rel=0.01)
    assert sum(parts.values()) == pytest.approx(r["update_ms"], rel=0.5)  # mean vs median of 2 repeats
