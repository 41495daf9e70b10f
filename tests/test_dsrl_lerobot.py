"""DSRL on the LeRobot VLA adapters (tiny random-weight pi0 and SmolVLA, built offline).

The noise policy acts on the whole chunk's noise over the *real* action dims the SDK flows over (H × A, not
lerobot's padded max_action_dim); the noise policy and noise critic see the observations through their own copies
of the VLA critic's encoder, the VLM stays frozen; a short fine-tune moves the policy in one process and through
`trqam lerobot-train --method dsrl` under torchrun with two.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from lerobot_tiny import ACTION_DIM, CHUNK, KINDS, STATE_DIM, Tiny, tiny

from trqam_sdk.config import CriticConfig, FinetuneConfig
from trqam_sdk.core.flow import sample_ode
from trqam_sdk.integrations.lerobot.data import lerobot_transitions, write_synthetic_dataset
from trqam_sdk.methods.dsrl import DSRLAgent
from trqam_sdk.networks.encoders import vla_critic
from trqam_sdk.testing.method_contract import MethodContract
from trqam_sdk.training.finetuner import Finetuner

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
BIN = Path(sys.executable).parent
B = 3
DSRL_KINDS = ["pi0", "smolvla"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "lerobot-tiny"


@pytest.fixture(params=DSRL_KINDS)
def model(request: pytest.FixtureRequest, root: Path) -> Tiny:
    return tiny(request.param, root)


@pytest.fixture(scope="module")
def dataset_root(root: Path) -> Path:
    path = root / "dataset"
    if not path.exists():
        write_synthetic_dataset(path, episodes=4, length=12, state_dim=STATE_DIM, action_dim=ACTION_DIM)
    return path


def vlm_of(policy: object) -> torch.nn.Module:
    return policy.policy.model.get_submodule(policy.vlm_module)  # type: ignore[attr-defined]


def test_noise_is_the_chunk_over_the_real_action_dims(model: Tiny, tmp_path: Path) -> None:
    """z, the noise policy's head and the noise critic are (B, H·A) with A the real action dims (not lerobot's
    max_action_dim); act = clip(ODE(v_θ̃, z)) on the real dims; π_ω and Q^z_ψ own copies of the critic's encoder."""
    adapter = model.fresh()
    d, padded = CHUNK * ACTION_DIM, CHUNK * adapter.policy.config.max_action_dim
    assert adapter.spec.flat_dim == d < padded
    cfg = FinetuneConfig(method="dsrl", flow_steps=3, batch_size=B, trackers=[], output_dir=str(tmp_path),
                         critic=CriticConfig(num_critics=2, width=32, depth=1), method_options={"sigma_z": 0.6})
    critic = vla_critic(adapter, 2, 32, 1)
    agent = DSRLAgent.build(cfg, adapter, None, critic)
    assert {k: n.shape for k, n in agent.noise_spec(B).items() if k != "bc_t"} == dict.fromkeys(
        ("bc_x0", "next_eps", "actor_eps", "distill_z"), (B, d))
    obs = model.obs(B, g=torch.Generator().manual_seed(2))
    eps = torch.randn(B, d, generator=torch.Generator().manual_seed(3))
    mean, log_std = agent.noise_actor(obs)
    z, log_prob = agent.noise(obs, eps)
    assert mean.shape == log_std.shape == z.shape == (B, d) and log_prob.shape == (B,)
    assert float(z.detach().abs().max()) <= 0.6 + 1e-6
    assert agent.noise_critic(obs, z).shape == (2, B)
    a = agent.act(obs, torch.Generator().manual_seed(3))
    flow = agent.target_actor
    want = sample_ode(flow.velocity_fn(flow.condition(obs)), z.detach(), 3).clamp(-1, 1).view(B, CHUNK, ACTION_DIM)
    assert torch.equal(a, want)
    encoders = [critic.encoder, agent.noise_actor.encoder, agent.noise_critic.encoder]
    assert len({id(e) for e in encoders}) == 3, "the noise networks train their own encoders"
    assert vlm_of(agent.target_actor) is vlm_of(agent.actor), "the target flow shares the frozen VLM"
    assert not any(p.requires_grad for p in vlm_of(agent.actor).parameters())


def test_finetune_on_lerobot_dataset_moves_the_policy(model: Tiny, dataset_root: Path, tmp_path: Path) -> None:
    """4 DSRL updates: the expert (BC), the noise policy and the acting chunks move; the VLM does not; the
    target flow lags the online one; every metric is finite."""
    from accelerate.state import AcceleratorState
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    AcceleratorState._reset_state(reset_partial_state=True)
    data = lerobot_transitions(LeRobotDataset("local/trqam-synthetic", root=str(dataset_root)), model.pre)
    cfg = FinetuneConfig(method="dsrl", batch_size=4, steps=4, flow_steps=3, lr=1e-3, log_every=1, trackers=[],
                         output_dir=str(tmp_path / "run"), critic=CriticConfig(num_critics=2, width=64, depth=2),
                         method_options={"sigma_z": 1.0, "target_flow_tau": 0.5})
    policy = model.fresh()
    ft = Finetuner(cfg, policy, data, critic=vla_critic(policy, 2, 64, 2))
    agent = ft.agent
    obs = model.obs(8, g=torch.Generator().manual_seed(9))
    before = agent.act(obs, torch.Generator().manual_seed(1))
    noise_before = {k: v.clone() for k, v in agent.noise_actor.state_dict().items()}
    start = time.perf_counter()
    for _ in range(cfg.steps):
        metrics = ft.train_step()
    seconds = time.perf_counter() - start
    after = agent.act(obs, torch.Generator().manual_seed(1))
    shift = (after - before).abs().mean().item()
    print(f"\n{model.kind} dsrl: mean |Δ chunk| {shift:.4f}, bc {metrics['actor/bc_loss']:.4f}, α "
          f"{metrics['actor/alpha']:.4f}, |z| {metrics['actor/z_abs']:.3f}, {cfg.steps} updates in {seconds:.1f} s")
    assert shift > 1e-4 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["train/nonfinite_skips"] == 0
    init = dict(model.adapter.named_parameters())
    trained = [n for n, p in agent.actor.named_parameters() if p.requires_grad and not torch.equal(p, init[n])]
    assert trained, "BC did not move the expert"
    assert all(torch.equal(p, init[n]) for n, p in agent.actor.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(v, noise_before[k]) for k, v in agent.noise_actor.state_dict().items())
    lag = dict(agent.target_actor.named_parameters())
    assert any(not torch.equal(lag[n], p) and not torch.equal(lag[n], init[n])
               for n, p in agent.actor.named_parameters() if n in trained), "v_θ̃ is the EMA of v_θ"


# pi0's run takes ~37 s on the shared 2-core box, SmolVLA's ~24 s: pi0's is slow-marked to keep this file < 60 s
@pytest.mark.parametrize("kind", [pytest.param("pi0", marks=pytest.mark.slow), "smolvla"])
def test_two_process_torchrun_dsrl(kind: str, root: Path, dataset_root: Path, tmp_path: Path) -> None:
    """`trqam lerobot-train --method dsrl` under torchrun with 2 processes: runs, moves the expert, writes a lerobot
    checkpoint that loads, a state file and card without λ."""
    from trqam_sdk.adapters.lerobot import from_pretrained

    from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture

    model = tiny(kind, root)
    port = 29560 + KINDS.index(model.kind)
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), "-m", "trqam_sdk.cli",
           "lerobot-train", "--policy", str(model.checkpoint), "--dataset", str(dataset_root), "--repo-id",
           "local/trqam-synthetic", "--method", "dsrl", "--set", "method_options.sigma_z=0.8", "lr=0.001",
           "--steps", "2", "--batch-size", "4", "--flow-steps", "3", "--output-dir", str(tmp_path / "run"), "--tiny"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["num_processes"] == 2 and summary["steps"] == 2 and summary["lam"] is None
    folder = tmp_path / "run" / "policy"
    state = json.loads((folder / "trqam_state.json").read_text())
    assert state["method"] == "dsrl" and state["final_lambda"] is None and state["num_processes"] == 2
    assert state["config"]["method_options"] == {"sigma_z": 0.8}
    assert "**dsrl**" in (folder / "README.md").read_text()
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("actor/noise_q" in r for r in rows)
    with tiny_pi_architecture():
        trained = from_pretrained(folder)
    assert trained.spec == model.adapter.spec
    init = dict(model.adapter.named_parameters())
    moved = [n for n, p in trained.named_parameters() if n in init and not torch.equal(p, init[n])]
    assert moved and all("expert" in n or "action_" in n or "time" in n or "state_proj" in n for n in moved), moved[:5]


class TestDSRLContractTinySmolVLA(MethodContract):
    """The shared method contract with DSRL on a tiny SmolVLA and a LeRobotDataset: the noise spec shards, the
    loss is finite with namespaced metrics, updates move the expert, a run replays exactly, the checkpoint keeps
    the lerobot policy apart and resumes bit-exactly, the acting policy is seeded, picklable and in the box."""

    method = "dsrl"
    options = {"sigma_z": 0.8}
    horizon = CHUNK
    _data: ClassVar[dict[str, Any]] = {}

    def make_data(self) -> Any:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if "data" not in self._data:
            root = Path(tempfile.mkdtemp(prefix="trqam-dsrl-contract-"))
            self._data["model"] = tiny("smolvla", root)
            write_synthetic_dataset(root / "dataset", episodes=3, length=10, state_dim=STATE_DIM,
                                    action_dim=ACTION_DIM)
            self._data["data"] = lerobot_transitions(LeRobotDataset("local/trqam-synthetic",
                                                                    root=str(root / "dataset")),
                                                     self._data["model"].pre)
        return self._data["data"]

    def make_policy(self, data: Any) -> Any:
        return self._data["model"].fresh()

    def finetuner(self, output_dir: Path, on_existing: str = "new", **overrides: Any) -> Finetuner:
        data = self.make_data()
        policy = self.make_policy(data)
        torch.manual_seed(0)
        return Finetuner(self.make_config(output_dir, **overrides), policy, data, critic=vla_critic(policy, 2, 16, 1),
                         on_existing=on_existing)  # type: ignore[arg-type]
