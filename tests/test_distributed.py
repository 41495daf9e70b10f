"""The shipped Accelerate configs (recipes/accelerate/) and the TRQAM update under DDP and FSDP2 on CPU (gloo).

The update computes VJPs inside the forward (torch.autograd.grad through the frozen reference and the target
critic), so each launcher must give on N processes what one process gives on the same global batch: final
weights and per-step losses to float tolerance. Each run is trqam_sdk.testing.distributed_check launched
through `accelerate launch --config_file recipes/accelerate/<config>.yaml`; the 1-process reference runs
in-process. FSDP on CPU needs `--force-fsdp-on-cpu` (Accelerate 1.15 enables FSDP on GPU-like devices only).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trqam_sdk.testing import distributed_check

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate"
BIN = Path(sys.executable).parent
WEIGHT_ATOL = {"pi0": 2e-4}
"""tiny pi0: one up_proj element differs by 9.4e-5 (< lr 3e-4) under DDP and FSDP alike (docs/scaling.md)"""
LOSSES = ("critic/loss", "actor/adj_loss", "actor/path_kl", "actor/bc_loss", "dual/kl_ema", "dual/lam")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; the in-process reference runs build their own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, kind: str, out: Path, *extra: str, processes: int = 2) -> dict:
    """`accelerate launch --config_file recipes/accelerate/<config>` of the check; returns its info.json."""
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / config), "--num_processes",
           str(processes), "--main_process_port", str(free_port()), "--mixed_precision", "no", *extra,
           "-m", "trqam_sdk.testing.distributed_check", "--kind", kind, "--out", str(out)]
    if config == "fsdp.yaml":
        cmd.append("--force-fsdp-on-cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "info.json").read_text())


def one_process(kind: str, out: Path) -> Path:
    """The 1-process reference, in this process (no launcher: plain Accelerate, no process group)."""
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        distributed_check.run(kind, out)
    finally:
        torch.set_num_threads(threads)
    return out


def assert_same_run(a: Path, b: Path, atol: float = 1e-5) -> None:
    """Same final weights (every tensor of the agent's full state dict) and the same per-step losses."""
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=atol, msg=k)
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    assert len(ma) == len(mb) == 2
    for x, y in zip(ma, mb, strict=True):
        for key in LOSSES:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
    assert ma[-1]["actor/path_kl"] > 0  # the policy really moved off the reference in these 2 steps


# -- the config files --------------------------------------------------------------------------------------
def test_configs_parse_with_accelerates_loader() -> None:
    """Every file loads with `accelerate launch`'s own loader, with the documented settings."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from trqam_sdk.adapters.lerobot.prefix import LeRobotPI0Policy, LeRobotPI05Policy, LeRobotSmolVLAPolicy

    files = {p.name: load_config_from_file(str(p)) for p in sorted(CONFIGS.glob("*.yaml"))}
    assert set(files) == {"single_gpu_bf16.yaml", "ddp.yaml", "fsdp.yaml", "cpu_ddp.yaml"}
    one, ddp, fsdp, cpu = (files[n] for n in ("single_gpu_bf16.yaml", "ddp.yaml", "fsdp.yaml", "cpu_ddp.yaml"))
    assert (one.distributed_type, one.mixed_precision, one.num_processes) == (DistributedType.NO, "bf16", 1)
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.num_processes > 1
    # MULTI_CPU without an mpirun hostfile would start ONE process: cpu_ddp must use the torchrun launcher
    assert cpu.distributed_type == DistributedType.MULTI_GPU and cpu.num_processes == 2
    assert cpu.mixed_precision == "no" and cpu.main_process_port == 0  # 0: accelerate picks a free port
    assert fsdp.distributed_type == DistributedType.FSDP
    f = fsdp.fsdp_config
    assert f["fsdp_version"] == 2 and f["fsdp_auto_wrap_policy"] == "NO_WRAP"
    ignored = re.compile(f["fsdp_ignored_modules"])
    for cls in (LeRobotSmolVLAPolicy, LeRobotPI0Policy, LeRobotPI05Policy):  # agent names: actor.policy.model.…
        for copy in ("actor", "base", "ref"):
            assert ignored.fullmatch(f"{copy}.policy.model.{cls.vlm_module}"), (cls, copy)
            assert not any(ignored.fullmatch(f"{copy}.policy.model.{m}") for m in cls.expert_modules), cls


def test_launcher_precision_reaches_the_finetuner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`accelerate launch --config_file single_gpu_bf16.yaml` hands bf16 to the process as
    ACCELERATE_MIXED_PRECISION; a Finetuner left at its default precision must use it."""
    from trqam_sdk.config import FinetuneConfig
    from trqam_sdk.training.finetuner import Finetuner

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    policy, data, _ = distributed_check.build_problem("mlp", tmp_path)
    ft = Finetuner(FinetuneConfig(batch_size=4, steps=1, trackers=[], output_dir=str(tmp_path / "run")), policy, data)
    assert ft.accelerator.mixed_precision == "bf16"


# -- DDP ------------------------------------------------------------------------------------------------------
def test_cpu_ddp_tiny_vla_two_processes_match_one(tmp_path: Path) -> None:
    """Tiny SmolVLA, reference frozen, 2 TRQAM updates of a global batch of 4: 2 DDP processes = 1 process."""
    info = launch("cpu_ddp.yaml", "smolvla", tmp_path / "p2")
    assert info["num_processes"] == 2 and info["model_class"] == "DistributedDataParallel"
    assert_same_run(one_process("smolvla", tmp_path / "p1"), tmp_path / "p2")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "pi0"])
def test_cpu_ddp_two_processes_match_one(kind: str, tmp_path: Path) -> None:
    """The MLP prior (EMA reference: BC step and soft updates) and tiny pi0 under cpu_ddp.yaml."""
    info = launch("cpu_ddp.yaml", kind, tmp_path / "p2")
    assert info["num_processes"] == 2 and info["model_class"] == "DistributedDataParallel"
    assert_same_run(one_process(kind, tmp_path / "p1"), tmp_path / "p2", WEIGHT_ATOL.get(kind, 1e-5))


# -- FSDP2 ----------------------------------------------------------------------------------------------------
def test_fsdp2_mlp_two_processes_match_one(tmp_path: Path) -> None:
    """fsdp.yaml through Accelerate's FSDP2 path on a CPU gloo mesh: every agent parameter is a sharded DTensor,
    the VJPs inside the forward still see full weights, and the result is the 1-process one."""
    info = launch("fsdp.yaml", "mlp", tmp_path / "p2")
    assert info["is_fsdp2"] and info["num_processes"] == 2 and info["fsdp_units"] == [""]
    assert not info["replicated_params"] and any(n.startswith("actor.") for n in info["sharded_params"])
    assert_same_run(one_process("mlp", tmp_path / "p1"), tmp_path / "p2")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["smolvla", "pi0"])
def test_fsdp2_tiny_vla_two_processes_match_one(kind: str, tmp_path: Path) -> None:
    """fsdp.yaml on a tiny VLA: expert, critic and frozen expert copies sharded, the frozen VLM replicated."""
    info = launch("fsdp.yaml", kind, tmp_path / "p2")
    assert info["is_fsdp2"] and info["num_processes"] == 2
    vlm = distributed_check.vlm_module(kind)
    assert info["replicated_params"] and all(vlm in n for n in info["replicated_params"])
    assert not any(vlm in n for n in info["sharded_params"])
    expert = distributed_check.expert_module(kind)
    # the trainable expert and the frozen one (base and reference share it: named once, as ``base.``)
    for copy in ("actor", "base"):
        assert any(n.startswith(f"{copy}.policy.model.{expert}.") for n in info["sharded_params"]), copy
    assert any(n.startswith("target_critic.") for n in info["sharded_params"])
    assert_same_run(one_process(kind, tmp_path / "p1"), tmp_path / "p2", WEIGHT_ATOL.get(kind, 1e-5))


@pytest.mark.slow
def test_fsdp2_layer_wrapping_fails_loudly(tmp_path: Path) -> None:
    """Why fsdp.yaml does not wrap decoder layers: lerobot runs SmolVLA's layers through their sub-modules, so
    the layer units never unshard. If this starts passing, per-layer sharding may have become possible."""
    with pytest.raises(AssertionError, match="mixed torch.Tensor and DTensor"):
        launch("fsdp.yaml", "smolvla", tmp_path / "p2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
               "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer")
