"""Finetuner: multi-process equivalence, exact resume (in-process and after SIGKILL), checkpoints, guards."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from trqam_sdk.adapters import MLPFlowPolicy, MLPPolicyConfig, load_policy

from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig, TrustRegionConfig
from trqam_sdk.data.transitions import Transitions
from trqam_sdk.testing.toy import random_episodes
from trqam_sdk.training.checkpoint import latest_checkpoint, load_checkpoint
from trqam_sdk.training.finetuner import Finetuner, pretrain_bc

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; each test builds Finetuners with its own precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_cfg(out: Path, **kw) -> FinetuneConfig:
    base = dict(batch_size=8, steps=6, flow_steps=3, log_every=1, trackers=[], output_dir=str(out),
                policy=PolicyConfig(width=32, depth=2), critic=CriticConfig(num_critics=2, width=32, depth=2),
                trust_region=TrustRegionConfig(kl_budget=0.05, lam_lr=0.5))
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Transitions, Path, Path]:
    root = tmp_path_factory.mktemp("toy")
    arrays = random_episodes()
    np.savez(root / "toy.npz", **arrays)
    data = Transitions.from_numpy(arrays)
    torch.manual_seed(0)
    policy = MLPFlowPolicy(MLPPolicyConfig(data.obs_dim, 3, data.action_dim, width=32, depth=2))
    pretrain_bc(policy, data, steps=30, batch_size=16, progress=False)
    policy.save_pretrained(root / "prior")
    (root / "cfg.yaml").write_text(
        "batch_size: 8\nflow_steps: 3\nlog_every: 1\ntrackers: []\npolicy: {width: 32, depth: 2}\n"
        "critic: {num_critics: 2, width: 32, depth: 2}\ntrust_region: {kl_budget: 0.05, lam_lr: 0.5}\n")
    return data, root / "toy.npz", root


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor the latest checkpoint restores: the policy folder (as ``actor.*``) + the algorithm file."""
    ck = latest_checkpoint(run)
    policy = {f"actor.{k}": v for k, v in load_file(str(ck / "policy" / "model.safetensors")).items()}
    algorithm = load_file(str(ck / "algorithm.safetensors"))
    assert not policy.keys() & algorithm.keys(), "the policy is written twice"
    return {**policy, **algorithm}


def _jsonl(run: Path) -> list[dict]:
    """Logged rows without the wall-clock ``time/`` metrics (the only values that differ between replays)."""
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_resume_in_process_is_exact(toy, tmp_path):
    data, _, root = toy
    prior = load_policy(root / "prior")
    full = Finetuner(tiny_cfg(tmp_path / "full"), prior, data)
    full.train(progress=False)
    part = Finetuner(tiny_cfg(tmp_path / "part"), prior, data)
    part.train(steps=3, progress=False)
    part.save_checkpoint()
    resumed = Finetuner(tiny_cfg(tmp_path / "part"), prior, data, on_existing="resume")
    assert resumed.resumed_from is not None and resumed.step == 3
    resumed.train(progress=False)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _jsonl(tmp_path / "full") == _jsonl(tmp_path / "part")
    assert float(a["lam"]) != 1.0  # the dual actually moved


def _train_cmd(toy_npz: Path, root: Path, out: Path, steps: int, extra: list[str]) -> list[str]:
    return [*extra, "train", "--config", str(root / "cfg.yaml"), "--data", str(toy_npz), "--policy",
            str(root / "prior"), "--output-dir", str(out), "--steps", str(steps), "--no-progress"]


def test_kill_and_resume_matches_uninterrupted(toy, tmp_path):
    _, npz, root = toy
    trqam = [str(BIN / "trqam")]
    steps = 120
    subprocess.run(_train_cmd(npz, root, tmp_path / "ref", steps, trqam), check=True, capture_output=True)
    cfg = root / "cfg.yaml"
    cfg_ck = tmp_path / "cfg_ck.yaml"
    cfg_ck.write_text(cfg.read_text() + "checkpoint_every: 10\n")
    cmd = _train_cmd(npz, root, tmp_path / "run", steps, trqam)
    cmd[cmd.index(str(cfg))] = str(cfg_ck)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while not pointer.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert 0 < killed_at < steps, "the run must be killed mid-way"
    subprocess.run([*cmd, "--resume"], check=True, capture_output=True)
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_rows, run_rows = _jsonl(tmp_path / "ref"), _jsonl(tmp_path / "run")
    assert [r["dual/lam"] for r in ref_rows] == [r["dual/lam"] for r in run_rows]


@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="torchrun not installed")
def test_two_processes_match_one(toy, tmp_path):
    _, npz, root = toy
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_train_cmd(npz, root, tmp_path / "p1", 8, [str(BIN / "trqam")]), env=env,
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(_train_cmd(npz, root, tmp_path / "p2", 8,
                                    [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29533",
                                     "-m", "trqam_sdk.cli"]), env=env, capture_output=True, text=True, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    state = json.loads((latest_checkpoint(tmp_path / "p2") / "state.json").read_text())
    assert state["num_processes"] == 2  # really two processes, not a silent single one
    a, b = _weights(tmp_path / "p1"), _weights(tmp_path / "p2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    r1, r2 = _jsonl(tmp_path / "p1"), _jsonl(tmp_path / "p2")
    for x, y in zip(r1, r2, strict=True):
        for key in ("critic/loss", "actor/adj_loss", "actor/bc_loss", "actor/path_kl", "dual/kl_ema", "dual/lam"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key


def test_nonfinite_loss_does_not_touch_weights(toy, tmp_path):
    data, _, root = toy
    data = dataclasses.replace(data, rewards=data.rewards.clone())  # the fixture is shared: poison a copy
    ft = Finetuner(tiny_cfg(tmp_path / "nan"), load_policy(root / "prior"), data)
    ft.train(steps=2, progress=False)
    before = {k: v.clone() for k, v in ft.agent.state_dict().items()}
    ft.data.rewards[:] = float("nan")  # poisons the TD target → critic loss NaN
    m = ft.train_step()
    assert m["train/nonfinite_skips"] == 1
    after = ft.agent.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_checkpoint_mismatch_and_missing_files(toy, tmp_path):
    data, _, root = toy
    ft = Finetuner(tiny_cfg(tmp_path / "a"), load_policy(root / "prior"), data)
    ft.train(steps=1, progress=False)
    path = ft.save_checkpoint()
    other = Finetuner(tiny_cfg(tmp_path / "b", critic=CriticConfig(num_critics=3, width=32, depth=2)),
                      load_policy(root / "prior"), data)
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(path, other.agent, None)
    (path / "state.json").unlink()
    with pytest.raises(FileNotFoundError, match="state.json"):
        load_checkpoint(path, ft.agent, None)
    assert latest_checkpoint(tmp_path / "a") is None  # an incomplete checkpoint is never resumed from
    policy = load_policy(path / "policy")  # the policy loads on its own
    assert isinstance(policy, MLPFlowPolicy)


def test_bad_data_errors_name_the_problem():
    arrays = random_episodes()
    bad = dict(arrays, actions=arrays["actions"] * 3)
    with pytest.raises(ValueError, match="action box"):
        Transitions.from_numpy(bad)
    nan = dict(arrays, observations=arrays["observations"].copy())
    nan["observations"][5, 0] = np.nan
    with pytest.raises(ValueError, match="observations: 1 rows contain NaN"):
        Transitions.from_numpy(nan)
    with pytest.raises(KeyError, match="rewards"):
        Transitions.from_numpy({k: v for k, v in arrays.items() if k != "rewards"})
    data = Transitions.from_numpy(arrays)
    wrong = MLPFlowPolicy(MLPPolicyConfig(data.obs_dim + 1, 3, data.action_dim, width=8, depth=1))
    with pytest.raises(ValueError, match="observations have dim"):
        pretrain_bc(wrong, data, steps=1)


def test_bf16_and_tensorboard(toy, tmp_path):
    data, _, root = toy
    ft = Finetuner(tiny_cfg(tmp_path / "bf", mixed_precision="bf16", trackers=["tensorboard"]),
                   load_policy(root / "prior"), data)
    m = ft.train(progress=False)
    ft.end()
    assert all(np.isfinite(m[k]) for k in ("critic/loss", "actor/adj_loss", "actor/bc_loss", "actor/path_kl"))
    assert list((tmp_path / "bf").rglob("events.out.tfevents*")), "TensorBoard tracker wrote nothing"
    assert len(_jsonl(tmp_path / "bf")) == 6


def test_methods_reference_and_budget_schedule(toy, tmp_path):
    data, _, root = toy
    prior = load_policy(root / "prior")
    sched = TrustRegionConfig(kl_budget=0.05, lam_lr=0.5, kl_budget_schedule=[(3, 0.2)])
    ft = Finetuner(tiny_cfg(tmp_path / "tr", trust_region=sched), prior, data)
    ft.train(progress=False)
    rows = _jsonl(tmp_path / "tr")
    assert [r["dual/kl_budget"] for r in rows] == [0.05, 0.05, 0.05, 0.2, 0.2, 0.2]

    qam = Finetuner(tiny_cfg(tmp_path / "qam", method="qam", qam_tau=3.0), prior, data)
    qam.train(progress=False)
    assert {r["dual/lam"] for r in _jsonl(tmp_path / "qam")} == {1.0}  # λ frozen
    assert _jsonl(tmp_path / "qam")[-1]["dual/kl_ema"] > 0  # the KL is still measured

    ext = Finetuner(tiny_cfg(tmp_path / "ext", method="qam_ext_kl"), prior, data)
    ext.train(progress=False)
    assert len({r["dual/lam"] for r in _jsonl(tmp_path / "ext")}) > 1  # λ_ext follows the dual

    frozen = Finetuner(tiny_cfg(tmp_path / "fr", reference="frozen"), prior, data)
    ref0 = {k: v.clone() for k, v in frozen.agent.ref.state_dict().items()}
    frozen.train(progress=False)
    assert all(torch.equal(ref0[k], v) for k, v in frozen.agent.ref.state_dict().items())
    assert {r["actor/bc_loss"] for r in _jsonl(tmp_path / "fr")} == {0.0}
    ema = Finetuner(tiny_cfg(tmp_path / "ema"), prior, data)
    ema.train(progress=False)
    assert not all(torch.equal(ref0[k], v) for k, v in ema.agent.ref.state_dict().items())
