"""Checkpoints of a VLA run are split by owner: the frozen VLM is written once (in ``policy/``), the algorithm
file holds only what the method owns, and resume is bit-exact — with the expert trained, and with LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lerobot_tiny import ACTION_DIM, STATE_DIM, tiny
from safetensors.torch import load_file

from trqam_sdk.config import CriticConfig, FinetuneConfig, TrustRegionConfig
from trqam_sdk.integrations.lerobot.data import lerobot_transitions, write_synthetic_dataset
from trqam_sdk.networks.encoders import vla_critic
from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture
from trqam_sdk.training.checkpoint import latest_checkpoint
from trqam_sdk.training.finetuner import Finetuner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.getbasetemp() / "lerobot-tiny"
    model = tiny("pi0", root)
    path = root / "ckpt-dataset"
    if not path.exists():
        write_synthetic_dataset(path, episodes=3, length=10, state_dim=STATE_DIM, action_dim=ACTION_DIM)
    data = lerobot_transitions(LeRobotDataset("local/trqam-synthetic", root=str(path)), model.pre)
    return model, data


def _finetuner(model, data, out: Path, lora: int, on_existing: str = "new") -> Finetuner:  # noqa: ANN001
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS

    with tiny_pi_architecture():
        policy = LEROBOT_ADAPTERS["pi0"].from_pretrained(model.checkpoint, lora_rank=lora) if lora else model.fresh()
    cfg = FinetuneConfig(batch_size=2, steps=4, flow_steps=2, lr=1e-3, log_every=1, trackers=[], reference="frozen",
                         output_dir=str(out), critic=CriticConfig(num_critics=2, width=32, depth=1),
                         trust_region=TrustRegionConfig(kl_budget=0.05, lam_lr=0.5))
    torch.manual_seed(0)
    return Finetuner(cfg, policy, data, critic=vla_critic(policy, 2, 32, 1), on_existing=on_existing)  # type: ignore[arg-type]


@pytest.mark.parametrize("lora", [0, 2])
def test_vla_checkpoint_writes_the_vlm_once_and_resumes_exactly(setup, tmp_path: Path, lora: int) -> None:  # noqa: ANN001
    model, data = setup
    full = _finetuner(model, data, tmp_path / "full", lora)
    full.train(progress=False)
    part = _finetuner(model, data, tmp_path / "part", lora)
    part.train(steps=2, progress=False)
    part.save_checkpoint()
    resumed = _finetuner(model, data, tmp_path / "part", lora, on_existing="resume")
    assert resumed.resumed_from is not None and resumed.step == 2
    resumed.train(progress=False)
    a, b = full.agent.state_dict(), resumed.agent.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    ck = latest_checkpoint(tmp_path / "part")
    algorithm = load_file(str(ck / "algorithm.safetensors"))
    vlm = [k for k in algorithm if ".paligemma_with_expert.paligemma." in k]  # the VLM (the expert is gemma_expert)
    assert not vlm, f"the frozen VLM is in the algorithm file: {vlm[:3]}"
    actor = [k for k in algorithm if k.startswith("actor.")]
    if lora:  # a merged LoRA cannot be split again: its trainable factors (and only those) are kept here
        assert actor and all("lora_" in k for k in actor)
    else:
        assert not actor
    size = {f.name: f.stat().st_size for f in ck.iterdir() if f.is_file()}
    policy_size = sum(f.stat().st_size for f in (ck / "policy").iterdir())
    assert size["algorithm.safetensors"] < 0.05 * policy_size, (size, policy_size)
