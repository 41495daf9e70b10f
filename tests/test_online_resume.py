"""Crash-safe online training: SIGKILL during the online phase (after a checkpoint, or inside a buffer shard
write) and ``resume`` loses and duplicates no transition, restores the learner bit-exactly, and — resumed at an
episode boundary — replays the uninterrupted run exactly (same rows, same batches, same weights).

The child process is this file run as a script: an MLP flow policy fine-tuned with TRQAM, 4 offline updates, then
20 online ones (UTD 1) on a deterministic 6-step env, checkpoint every 4 updates. Online env steps at the
checkpoints 8, 12, 16, 20 are 4, 8, 12, 16: the one at 12 is mid-episode, the one at 16 an episode boundary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

OFFLINE, ONLINE, EVERY, LENGTH, SEED = 4, 20, 4, 6, 5


class SixStepEnv:
    """obs (x, y, t / 6); x, y += 0.1 a; reward -(x² + y²); truncated after 6 steps, never terminated."""

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.pos, self.t = np.random.default_rng(seed).uniform(-1, 1, 2), 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([*self.pos, self.t / LENGTH], np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.pos, self.t = self.pos + 0.1 * np.asarray(action, np.float64), self.t + 1
        return self._obs(), -float(np.square(self.pos).sum()), False, self.t >= LENGTH, {"success": 0.0}

    def close(self) -> None:
        pass


def _learner_tensors(ft: Any) -> dict[str, torch.Tensor]:
    from trqam_sdk.training.checkpoint import optimizer_tensors

    out = {f"agent.{k}": v for k, v in ft.agent.state_dict().items()}
    out.update({f"optim.{k}": v for k, v in optimizer_tensors(ft._optimizer())[0].items()})
    return out


def _buffer_tensors(buf: Any) -> dict[str, torch.Tensor]:
    n, s = buf.offline_size, buf.size
    out = {f"buf.{k}": v[n:s] for k, v in buf.fields().items()}
    out["buf.episode_end"] = buf.episode_end[n:s] - n
    return out


def _dump(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path))


def _finetuner(out: Path, steps: int = OFFLINE + ONLINE, every: int = EVERY,
               on_existing: str = "new") -> tuple[Any, Any]:
    """The run's Finetuner (TRQAM on a tiny MLP flow policy) and its offline data, built identically each time."""
    from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig

    from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig
    from trqam_sdk.data.transitions import Transitions
    from trqam_sdk.testing.toy import random_episodes
    from trqam_sdk.training.finetuner import Finetuner

    data = Transitions.from_numpy(random_episodes(4, LENGTH, obs_dim=3, action_dim=2))
    torch.manual_seed(0)
    policy = MLPFlowPolicy(MLPPolicyConfig(3, 2, 2, width=16, depth=2))
    cfg = FinetuneConfig(method="trqam", batch_size=8, steps=steps, flow_steps=2, log_every=1,
                         checkpoint_every=every, trackers=[], output_dir=str(out), seed=SEED,
                         policy=PolicyConfig(width=16, depth=2), critic=CriticConfig(num_critics=2, width=16, depth=2))
    return Finetuner(cfg, policy, data, on_existing=on_existing), data  # type: ignore[arg-type]


def child(out: Path) -> None:
    """One run (resuming when ``--resume``): dumps the state right after resuming and at the end."""
    from trqam_sdk.data import replay
    from trqam_sdk.data.replay import ReplayBuffer
    from trqam_sdk.rollout.online import OnlinePhase

    torch.set_num_threads(1)
    kill_at = int(os.environ.get("KILL_AT_STEP", "-1"))
    fail_save = int(os.environ.get("KILL_IN_SHARD_WRITE", "-1"))
    if fail_save > 0:  # a crash between the shard's temp write and its rename
        calls, publish = [0], replay._publish

        def crashing(tmp: Path, final: Path) -> None:
            calls[0] += 1
            if calls[0] == fail_save:
                os.kill(os.getpid(), signal.SIGKILL)
            publish(tmp, final)

        replay._publish = crashing
    ft, data = _finetuner(out, on_existing="resume" if "--resume" in sys.argv else "new")
    if ft.step < OFFLINE:
        ft.train(steps=OFFLINE - ft.step, progress=False)
    buffer = ReplayBuffer(data, 2, ONLINE)
    phase = OnlinePhase(ft, SixStepEnv, buffer, ft.agent.make_actor(SEED), seed=SEED, replay_dir=out / "replay")
    if phase.resumed:
        _dump(out / "after_resume.safetensors", {**_learner_tensors(ft), **_buffer_tensors(buffer)})
        (out / "resumed_at.json").write_text(json.dumps({"step": ft.step, **phase.stats()}))

    def before_step(step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    phase.run(ONLINE, before_step=before_step)
    _dump(out / "final.safetensors", {**_learner_tensors(ft), **_buffer_tensors(buffer)})
    (out / "stats.json").write_text(json.dumps({"step": ft.step, **phase.stats()}))


def _run(out: Path, resume: bool = False, **env: int) -> int:
    cmd = [sys.executable, __file__, "child", str(out), *(["--resume"] if resume else [])]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}},
                          capture_output=True, text=True, timeout=120)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr[-3000:])
    return proc.returncode


def _checkpoint_tensors(run: Path, step: int) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint holds, keyed like :func:`_learner_tensors`."""
    ck = run / "checkpoints" / f"step-{step:08d}"
    out = {f"agent.actor.{k}": v for k, v in load_file(str(ck / "policy" / "model.safetensors")).items()}
    out.update({f"agent.{k}": v for k, v in load_file(str(ck / "algorithm.safetensors")).items()})
    out.update({f"optim.{k}": v for k, v in load_file(str(ck / "optimizer.safetensors")).items()})
    return out


def _metrics(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _latest(run: Path) -> int:
    return json.loads((run / "checkpoints" / "latest.json").read_text())["step"]


def test_kill_and_resume(tmp_path: Path) -> None:
    ref, a, b = tmp_path / "ref", tmp_path / "a", tmp_path / "b"
    assert _run(ref) == 0
    final = load_file(str(ref / "final.safetensors"))
    assert final["buf.observations"].shape[0] == ONLINE

    # A: SIGKILL right after the checkpoint at step 12 (8 online rows, the second episode 2 steps in)
    assert _run(a, KILL_AT_STEP=12) == -signal.SIGKILL and _latest(a) == 12
    assert _run(a, resume=True) == 0
    after = load_file(str(a / "after_resume.safetensors"))
    ck = _checkpoint_tensors(ref, 12)  # the uninterrupted run's checkpoint: the learner is bit-exact to it
    learner = {k: v for k, v in after.items() if k in ck}
    assert len(learner) == len(ck) and all(torch.equal(learner[k], ck[k]) for k in ck)
    for key in ("buf.observations", "buf.actions", "buf.rewards", "buf.masks", "buf.next_observations"):
        assert torch.equal(after[key], final[key][:8]), key  # exactly the checkpoint's 8 rows: none lost or added
    # the interrupted episode is closed as truncated on its last stored row: terminal 1, mask (bootstrap) 1
    want_term = final["buf.terminals"][:8].clone()
    assert want_term[7] == 0
    want_term[7] = 1
    assert torch.equal(after["buf.terminals"], want_term) and after["buf.masks"][7] == 1
    done = load_file(str(a / "final.safetensors"))
    stats = json.loads((a / "stats.json").read_text())
    assert stats["step"] == OFFLINE + ONLINE and stats["online_rows"] == stats["online_env_steps"] == ONLINE
    assert stats["online_interrupted_episodes"] == 1 and stats["online_episodes"] == 1 + 1 + 2
    assert torch.equal(done["buf.observations"][:8], final["buf.observations"][:8])
    # a fresh episode starts after the closed one, from the reset seeded by the episode counter (2)
    reset_obs, _ = SixStepEnv().reset(seed=SEED * 1_000_003 + 2)
    assert torch.equal(done["buf.observations"][8], torch.as_tensor(reset_obs))
    assert torch.nonzero(done["buf.terminals"]).flatten().tolist() == [5, 7, 13, 19]

    # B: SIGKILL between a shard's temp write and its rename (the buffer save of checkpoint 20): the torn
    # file is ignored, the run resumes from checkpoint 16 (an episode boundary) and replays the reference exactly
    assert _run(b, KILL_IN_SHARD_WRITE=4) == -signal.SIGKILL and _latest(b) == 16
    assert [p.name for p in (b / "replay").iterdir() if p.name.startswith(".rows-00000012-00000016")]
    assert _run(b, resume=True) == 0
    assert not [p for p in (b / "replay").iterdir() if p.name.startswith(".")]
    resumed = json.loads((b / "resumed_at.json").read_text())
    assert resumed["step"] == 16 and resumed["online_rows"] == 12 and resumed["online_interrupted_episodes"] == 0
    got = load_file(str(b / "final.safetensors"))
    assert got.keys() == final.keys()
    assert [k for k in final if not torch.equal(final[k], got[k])] == []  # rows, weights, Adam moments
    assert _metrics(b) == _metrics(ref)  # every update's losses: the same batches after the resume
    manifest = json.loads((b / "replay" / "manifest.json").read_text())
    assert [(s["start"], s["end"]) for s in manifest["shards"]] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]


def test_online_phase_is_the_legacy_loop_at_utd_1(tmp_path: Path) -> None:
    """OnlinePhase(utd=1) collects and trains exactly as OnlineCollector + Finetuner.train(before_step=...) (the
    OGBench runner's loop): the same rows and the same weights."""
    from trqam_sdk.data.replay import ReplayBuffer
    from trqam_sdk.rollout.online import OnlineCollector, OnlinePhase

    out = []
    for name in ("legacy", "phase"):
        ft, data = _finetuner(tmp_path / name, steps=10, every=0)
        ft.train(steps=2, progress=False)
        buf = ReplayBuffer(data, 2, 8)
        if name == "legacy":
            ft.sampler = buf
            col = OnlineCollector(SixStepEnv(), ft.agent.make_actor(SEED), buf, seed=SEED)
            ft.train(steps=8, progress=False, before_step=col.step)
        else:
            OnlinePhase(ft, SixStepEnv, buf, ft.agent.make_actor(SEED), SEED, tmp_path / "replay").run(8)
        out.append({**_learner_tensors(ft), **_buffer_tensors(buf)})
    assert out[0].keys() == out[1].keys() and all(torch.equal(out[0][k], out[1][k]) for k in out[0])


def test_utd_schedule_and_checkpoint_state(tmp_path: Path) -> None:
    """utd 2: one env step every 2 updates; utd 0.5: 2 env steps per update; state.json records the buffer rows
    and counters next to the Finetuner's own keys (unchanged without hooks); bad values are refused."""
    from trqam_sdk.data.replay import ReplayBuffer
    from trqam_sdk.rollout.online import OnlinePhase, parse_utd
    from trqam_sdk.training.checkpoint import latest_checkpoint

    assert parse_utd(1) == (1, 1) and parse_utd(3) == (3, 1) and parse_utd(0.25) == (1, 4)
    for bad in (0, -1, 1.5, 0.3):
        with pytest.raises(ValueError, match="utd"):
            parse_utd(bad)
    ft, data = _finetuner(tmp_path / "u", steps=12, every=0)
    ft.train(steps=1, progress=False)
    plain = json.loads((latest_checkpoint(tmp_path / "u") / "state.json").read_text())
    assert sorted(plain) == ["config", "method", "nonfinite_skips", "num_processes", "optimizer",
                             "rebuilt_fingerprint", "step"]
    steps = []
    phase = OnlinePhase(ft, SixStepEnv, ReplayBuffer(data, 2, 20), ft.agent.make_actor(SEED), SEED,
                        tmp_path / "u" / "replay", utd=2)
    phase.run(5, before_step=lambda step: steps.append(phase.collector.env_steps))
    assert steps == [1, 1, 2, 2, 3] and phase.buffer.online_size == 3
    state = json.loads((latest_checkpoint(tmp_path / "u") / "state.json").read_text())
    assert state["step"] == 6 and state["online"]["buffer_rows"] == state["online"]["env_steps"] == 3
    assert state["online"]["start_step"] == 1 and state["online"]["utd"] == 2
    ft2, data2 = _finetuner(tmp_path / "v", steps=12, every=0)
    half = OnlinePhase(ft2, SixStepEnv, ReplayBuffer(data2, 2, 7), ft2.agent.make_actor(SEED), SEED,
                       tmp_path / "v" / "replay", utd=0.5)
    with pytest.raises(ValueError, match="take 8 more env steps; the replay buffer has room for 7"):
        half.run(4)
    half.run(3)
    assert half.buffer.online_size == 6 and ft2.step == 3
    ft3, data3 = _finetuner(tmp_path / "u", steps=12, every=0, on_existing="resume")
    assert ft3.resumed_from is not None and ft3.step == 6
    with pytest.raises(ValueError, match="utd=2.0, this one has 1.0"):
        OnlinePhase(ft3, SixStepEnv, ReplayBuffer(data3, 2, 20), ft3.agent.make_actor(SEED), SEED,
                    tmp_path / "u" / "replay")
    ft.checkpoint_hooks.append(lambda: {"step": 0})
    with pytest.raises(ValueError, match=r"reserved state.json keys \['step'\]"):
        ft.save_checkpoint()


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(Path(sys.argv[2]))
