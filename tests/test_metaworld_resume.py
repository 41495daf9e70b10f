"""Crash-safe online training of a VLA through the real ``trqam metaworld`` command: SIGKILL the process group
right after a checkpoint — in the offline phase, at an episode boundary of the online phase, in the middle of an
online episode — and re-run the same command (re-running is the resume). Compared with an uninterrupted run of the
same command: no replay row lost or duplicated (uint8 images, tokens, state, rewards, terminals, row by row), the
learner bit-exact at every checkpoint (policy, algorithm, Adam moments), the interrupted episode closed as truncated
(docs/online.md), and a resume at an episode boundary replays the uninterrupted run exactly (same rows, actions,
weights and losses after it: the acting sampler's stream, the env reset seeds and the batches all continue).

The runs are the test profile (32 px, 12-step episodes, a tiny SmolVLA from ``lerobot-train``) with 6 offline and
18 online updates (UTD 1), a checkpoint every 3: offline checkpoints 3 and 6, online ones 9, 12, 15, 18 (12 online
rows: the first episode's time limit, a boundary), 21 (15 rows: 3 into the second episode), 24 (the end).

A re-run after the online stage finished (a kill in lerobot-eval) redoes neither the online phase nor its
evaluation. Each run is ``trqam_sdk.cli.main(args)`` in a process forked from a server that imported the pipeline
once (this file run as ``... serve``): a run costs its work, not ~12 s of imports (``TRQAM_RESUME_FRESH=1``: each
is ``python -m trqam_sdk.cli``, as the slow pi0 test's are: the test profile with pi0, killed in lerobot-eval).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

TASK, SEED = "reach-v3", 1
OFFLINE, ONLINE, EVERY, LENGTH = 6, 18, 3, 12
BOUNDARY, MID, END = OFFLINE + LENGTH, OFFLINE + LENGTH + 3, OFFLINE + ONLINE  # checkpoints 18, 21, 24
BASE = ["metaworld", "--profile", "test", "--task", TASK, "--seed", str(SEED), "--no-progress"]
SETS = ["--set", f"offline_steps={OFFLINE}", f"online_steps={ONLINE}", f"finetune.checkpoint_every={EVERY}",
        "lerobot_eval.enabled=false"]
WARM = ("trqam_sdk.benchmarks.metaworld.pipeline", "trqam_sdk.benchmarks.metaworld.finetune",
        "trqam_sdk.benchmarks.metaworld.online", "trqam_sdk.benchmarks.metaworld.env",
        "trqam_sdk.integrations.lerobot.policy_env", "trqam_sdk.integrations.lerobot.data",
        "trqam_sdk.integrations.lerobot.hub", "trqam_sdk.training.finetuner", "trqam_sdk.networks.encoders",
        "trqam_sdk.rewards", "trqam_sdk.adapters.lerobot", "lerobot.policies.smolvla.modeling_smolvla",
        "lerobot.datasets.lerobot_dataset", "lerobot.envs.metaworld")
ENV = {"MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# -- running the command ---------------------------------------------------------------------------------------------
def serve() -> None:
    """The fork server: one JSON request a line, ``{"args", "log"}`` → fork a run, reply its pid; ``{"wait": pid}``
    → reap it, reply its exit code (negative: the signal)."""
    from trqam_sdk.cli import main

    for name in WARM:  # imports only: no torch op runs before a fork (no thread pool to inherit)
        importlib.import_module(name)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "wait" in req:
            reply = {"code": os.waitstatus_to_exitcode(os.waitpid(req["wait"], 0)[1])}
        else:
            pid = os.fork()
            if pid == 0:  # the run: its own process group, output to its log
                os.setsid()
                fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = 1
                try:
                    code = main(req["args"])
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else int(e.code is not None)
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            reply = {"pid": pid}
        print(json.dumps(reply), flush=True)


class Runner:
    """Starts runs of ``trqam`` (forked from the server, or fresh interpreters) and reaps them."""

    def __init__(self, tmp: Path, fresh: bool = False):
        self.env = {**os.environ, **ENV}
        self.fresh = fresh or os.environ.get("TRQAM_RESUME_FRESH") == "1"
        self.procs: dict[int, subprocess.Popen] = {}
        self.live: set[int] = set()
        self.server = None
        if not self.fresh:
            with open(tmp / "server.log", "w") as err:  # the child keeps its own copy of the descriptor
                self.server = subprocess.Popen([sys.executable, __file__, "serve"], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=err, text=True, env=self.env,
                                               cwd=Path(__file__).parents[1])
            assert self._ask(None) == {"ready": True}, (tmp / "server.log").read_text()[-3000:]

    def _ask(self, req: dict[str, Any] | None) -> dict[str, Any]:
        assert self.server is not None and self.server.stdin and self.server.stdout
        if req is not None:
            self.server.stdin.write(json.dumps(req) + "\n")
            self.server.stdin.flush()
        line = self.server.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def start(self, args: list[str], log: Path) -> int:
        if self.fresh:
            with open(log, "w") as out:
                p = subprocess.Popen([sys.executable, "-m", "trqam_sdk.cli", *args], stdout=out,
                                     stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
            pid, self.procs[p.pid] = p.pid, p
        else:
            pid = int(self._ask({"args": args, "log": str(log)})["pid"])
        self.live.add(pid)
        return pid

    def wait(self, pid: int) -> int:
        self.live.discard(pid)
        return self.procs.pop(pid).wait() if self.fresh else int(self._ask({"wait": pid})["code"])

    def close(self) -> None:
        """Kill and reap any run still going (a failed test), then stop the server."""
        for pid in list(self.live):
            if _running(pid):
                os.killpg(pid, signal.SIGKILL)
            self.wait(pid)
        if self.server is not None:
            self.server.stdin.close()
            self.server.wait(timeout=30)


def _running(pid: int) -> bool:
    """Alive and not yet exited (an exited run stays a zombie until :meth:`Runner.wait`)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _latest(rdir: Path) -> int | None:
    p = rdir / "checkpoints" / "latest.json"
    return json.loads(p.read_text())["step"] if p.is_file() else None


def _finish(runner: Runner, args: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    code = runner.wait(runner.start(args, log))
    assert code == 0, log.read_text()[-4000:]
    return time.perf_counter() - t0


def _kill_after(runner: Runner, args: list[str], rdir: Path, log: Path, step: int, timeout: float = 300) -> int:
    """Start the command, SIGKILL its process group as soon as ``latest.json`` names checkpoint ``step`` or later;
    returns the checkpoint the kill left (the next one is ``EVERY`` updates away: the kill lands before it)."""
    pid = runner.start(args, log)
    deadline = time.monotonic() + timeout
    while (_latest(rdir) or -1) < step:
        if not _running(pid) or time.monotonic() > deadline:
            if _running(pid):
                os.killpg(pid, signal.SIGKILL)
            runner.wait(pid)
            raise AssertionError(f"the run ended or stalled before checkpoint {step}: {log.read_text()[-4000:]}")
        time.sleep(0.005)
    os.killpg(pid, signal.SIGKILL)
    assert runner.wait(pid) == -signal.SIGKILL
    return _latest(rdir)


# -- reading what a run left ----------------------------------------------------------------------------------------
def _checkpoint(rdir: Path, step: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    ck = rdir / "checkpoints" / f"step-{step:08d}"
    out: dict[str, Any] = {f"policy.{k}": v for k, v in load_file(str(ck / "policy" / "model.safetensors")).items()}
    out.update({f"algorithm.{k}": v for k, v in load_file(str(ck / "algorithm.safetensors")).items()})
    out.update({f"optimizer.{k}": v for k, v in load_file(str(ck / "optimizer.safetensors")).items()})
    return out


def _state(rdir: Path, step: int) -> dict[str, Any]:
    return json.loads((rdir / "checkpoints" / f"step-{step:08d}" / "state.json").read_text())


def _assert_same_learner(a: Path, b: Path, step: int) -> None:
    import torch

    x, y = _checkpoint(a, step), _checkpoint(b, step)
    assert x.keys() == y.keys() and any(k.startswith("optimizer.state.") for k in x), step
    assert len([k for k in x if k.startswith("policy.")]) > 10  # the VLA's own tensors are in the comparison
    diff = [k for k in x if x[k].dtype != y[k].dtype or not torch.equal(x[k], y[k])]
    assert diff == [], f"checkpoint {step} differs from the reference's in {diff[:8]}"


def _rows(replay: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every online row the manifest lists (shards concatenated, each checked against its range and checksum),
    with the manifest's truncation edits applied as the loader applies them."""
    import hashlib

    import torch
    from safetensors.torch import load

    m = json.loads((replay / "manifest.json").read_text())
    parts: dict[str, list[Any]] = {}
    at = 0
    for s in m["shards"]:
        blob = (replay / s["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == s["sha256"] and s["start"] == at, s
        for k, v in load(blob).items():
            assert v.shape[0] == s["end"] - s["start"], (s, k)
            parts.setdefault(k, []).append(v)
        at = s["end"]
    assert at == m["rows"]
    rows = {k: torch.cat(v) for k, v in parts.items()}
    for r in m["truncated_rows"]:
        rows["terminals"][r] = 1.0
    return rows, m


def _metrics(rdir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(r) for r in (rdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


# -- the runs ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The data and prior (once, by the ``bc`` method), then the reference run and the killed-and-resumed chain
    over copies of that task folder; snapshots of the chain's replay folder at each kill."""
    tmp = tmp_path_factory.mktemp("mw_resume")
    runner = Runner(tmp)
    times: dict[str, float] = {}
    try:
        times["bc (data + prior + prior eval)"] = _finish(
            runner, [*BASE, "--methods", "bc", "--out", str(tmp / "base"), *SETS], tmp / "bc.log")
        for name in ("ref", "chain"):
            shutil.copytree(tmp / "base", tmp / name)
        args = {n: [*BASE, "--methods", "trqam", "--out", str(tmp / n), *SETS] for n in ("ref", "chain")}
        ref, chain = (tmp / n / TASK / "trqam" / f"seed{SEED}" for n in ("ref", "chain"))
        t0, wall0 = time.perf_counter(), time.time()
        ref_pid = runner.start(args["ref"], tmp / "ref.log")  # side by side with the chain (one core each)
        killed, snaps = {}, {}
        for name, step in (("offline", 3), ("boundary", BOUNDARY), ("mid", MID)):
            killed[name] = _kill_after(runner, args["chain"], chain, tmp / f"chain-{name}.log", step)
            snaps[name] = {"offline_json": (chain / "offline.json").is_file(),
                           "metrics": _metrics(chain) if (chain / "metrics.jsonl").is_file() else []}
            if (chain / "replay").is_dir():
                shutil.copytree(chain / "replay", tmp / f"replay-{name}")
        _finish(runner, args["chain"], tmp / "chain-final.log")
        times["chain (3 kills + final run)"] = time.perf_counter() - t0
        assert runner.wait(ref_pid) == 0, (tmp / "ref.log").read_text()[-4000:]
        times["reference"] = (ref / "result.json").stat().st_mtime - wall0
        # a kill after the online evaluation (in lerobot-eval, or before result.json) leaves the finished run's
        # files without result.json: the re-run must redo neither the online phase nor its evaluation
        done = {n: (chain / n).read_bytes() for n in ("result.json", "evals.jsonl", "replay/manifest.json",
                                                      f"checkpoints/step-{END:08d}/state.json")}
        (chain / "result.json").unlink()
        times["re-run after the end"] = _finish(runner, args["chain"], tmp / "chain-again.log")
    finally:
        runner.close()
    print("\nscenario times (s):", {k: round(v, 1) for k, v in times.items()})
    return {"tmp": tmp, "ref": ref, "chain": chain, "killed": killed, "snaps": snaps, "times": times,
            "done": done}


def test_reference_run_has_the_planned_checkpoints_and_episodes(runs: dict[str, Any]) -> None:
    import torch

    ref = runs["ref"]
    r = json.loads((ref / "result.json").read_text())
    assert r["steps"] == END and r["online_rows"] == r["online_env_steps"] == ONLINE
    assert sorted(int(p.name[5:]) for p in (ref / "checkpoints").glob("step-*")) == [3, 6, 9, 12, 15, 18, 21, END]
    rows, m = _rows(ref / "replay")
    # the first episode runs to its 12-step time limit (no success): checkpoint 18 is an episode boundary
    assert rows["terminals"].nonzero().flatten().tolist() == [LENGTH - 1] and m["truncated_rows"] == []
    assert rows["masks"].eq(1).all()  # time limits bootstrap
    assert rows["observations.observation.image"].dtype == torch.uint8
    assert [_state(ref, s)["online"]["buffer_rows"] for s in (9, BOUNDARY, MID, END)] == [3, LENGTH, 15, ONLINE]


def test_kill_in_the_offline_phase_resumes_to_the_reference_offline_state(runs: dict[str, Any]) -> None:
    ref, chain = runs["ref"], runs["chain"]
    assert runs["killed"]["offline"] in (3, OFFLINE) and not runs["snaps"]["offline"]["offline_json"]
    for step in (3, OFFLINE):
        _assert_same_learner(ref, chain, step)
    # the offline evaluation (same actor seed, same weights) and the log of every offline update are the reference's
    same = json.loads((ref / "offline.json").read_text())["result"]
    assert json.loads((chain / "offline.json").read_text())["result"] == same
    log = runs["snaps"]["offline"]["metrics"]  # what the killed run logged (maybe past its checkpoint)
    assert len(log) >= runs["killed"]["offline"] and log == _metrics(ref)[:len(log)]
    assert "online" not in _state(chain, OFFLINE)


def test_kill_at_an_episode_boundary_replays_the_reference_exactly(runs: dict[str, Any]) -> None:
    """Resumed at checkpoint 18 (no episode in progress), the run must be the uninterrupted one: checkpoints 21
    bit-exact (the acting sampler's generator, the next reset's seed and the batches all continued), the same
    rows 12..14 (observations, actions from the VLA, rewards) and the same losses."""
    import torch

    ref, chain, snaps = runs["ref"], runs["chain"], runs["snaps"]
    assert runs["killed"]["boundary"] == BOUNDARY, "the kill landed after the next checkpoint (machine stalled)"
    for step in (9, 12, 15, BOUNDARY, MID):
        _assert_same_learner(ref, chain, step)
        assert _state(chain, step)["online"] == _state(ref, step)["online"], step
    assert _state(chain, MID)["online"]["interrupted_episodes"] == 0
    log = snaps["mid"]["metrics"]  # every update's losses up to the second kill
    assert len(log) >= MID and log == _metrics(ref)[:len(log)]
    assert _metrics(chain)[:MID] == _metrics(ref)[:MID]
    want, _ = _rows(ref / "replay")
    for name, rows in (("boundary", LENGTH), ("mid", 15)):
        got, m = _rows(runs["tmp"] / f"replay-{name}")  # a save for the next checkpoint may have begun
        assert m["rows"] >= rows and got.keys() == want.keys()
        bad = [k for k in want if not torch.equal(got[k], want[k][:m["rows"]])]
        assert bad == [], f"replay rows at the {name} kill differ from the reference's in {bad}"


def test_kill_mid_episode_loses_and_duplicates_no_row(runs: dict[str, Any]) -> None:
    """Resumed at checkpoint 21 (15 rows, 3 into the second episode): exactly those rows come back, the episode
    closes as truncated on its last row (terminal 1, mask 1), and one fresh episode from a reset follows."""
    import torch

    ref, chain = runs["ref"], runs["chain"]
    assert runs["killed"]["mid"] == MID, "the kill landed after the next checkpoint (machine stalled)"
    want, _ = _rows(ref / "replay")
    got, m = _rows(chain / "replay")
    cut = 15
    assert m["rows"] == ONLINE and m["truncated_rows"] == [cut - 1]
    for k in want:
        if k != "terminals":
            assert torch.equal(got[k][:cut], want[k][:cut]), k  # the checkpoint's rows, unchanged, once each
    term = want["terminals"][:cut].clone()
    assert term[cut - 1] == 0
    term[cut - 1] = 1
    assert torch.equal(got["terminals"][:cut], term) and got["masks"][cut - 1] == 1
    # the row after is a fresh episode's first: the hand back at its reset pose (as at rows 0 and 12), not the
    # interrupted episode continued from row 14's next observation
    state = "observations.observation.state"
    assert torch.equal(want[state][0], want[state][LENGTH]) and torch.equal(got[state][cut], want[state][0])
    assert not torch.equal(got[state][cut], got[f"next_{state}"][cut - 1])
    assert not torch.equal(got["observations.observation.image"][cut], want["observations.observation.image"][cut])
    r, rr = json.loads(runs["done"]["result.json"]), json.loads((ref / "result.json").read_text())
    assert r["resumed_from_step"] == MID and r["steps"] == rr["steps"] == END
    assert r["online_rows"] == rr["online_rows"] == r["online_env_steps"] == rr["online_env_steps"] == ONLINE
    assert r["online_interrupted_episodes"] == 1 and r["online_episodes"] == rr["online_episodes"] + 1
    assert [x["step"] for x in _metrics(chain)] == list(range(1, END + 1))  # the log is one run, no duplicates
    evals = [json.loads(x) for x in (chain / "evals.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in evals] == ["prior", "offline", "online"]
    assert (chain / "policy" / "model.safetensors").is_file()


def test_a_kill_after_the_online_evaluation_redoes_neither(runs: dict[str, Any]) -> None:
    """The re-run after the online stage finished (online.json written) resumes the learner at its last
    checkpoint and goes straight to saving the policy: the final episode is not closed as interrupted, the last
    checkpoint and its buffer are not rewritten, the evaluation is not run or logged again."""
    chain, done = runs["chain"], runs["done"]
    r, before = json.loads((chain / "result.json").read_text()), json.loads(done["result.json"])
    assert r["resumed_from_step"] == END and r["seconds"]["online"]["cached"] is True
    for key in ("online_episodes", "online_interrupted_episodes", "online_rows", "online_env_steps", "steps",
                "phases", "replay_memory"):
        assert r[key] == before[key], key
    for name in ("evals.jsonl", "replay/manifest.json", f"checkpoints/step-{END:08d}/state.json"):
        assert (chain / name).read_bytes() == done[name], name  # nothing appended, closed or re-checkpointed


# -- pi0 through the whole pipeline --------------------------------------------------------------------------------
@pytest.mark.slow
def test_pi0_prior_through_the_pipeline(tmp_path: Path) -> None:
    """The test profile with a tiny pi0 prior (lerobot-train inside the tiny pi wrapper), as ``python -m
    trqam_sdk.cli``: bc and trqam end to end, SIGKILL while lerobot-eval runs on the fine-tuned pi0 checkpoint,
    and the re-run finishes with lerobot-eval alone (no phase or evaluation redone)."""
    from trqam_sdk.rollout.evaluation import episode_seeds

    args = ["metaworld", "--profile", "test", "--task", TASK, "--methods", "bc", "trqam", "--no-progress",
            "--out", str(tmp_path), "--set", "prior.kind=pi0"]
    run = tmp_path / TASK
    rdir = run / "trqam" / "seed0"
    runner = Runner(tmp_path, fresh=True)
    pid = runner.start(args, tmp_path / "pi0-killed.log")
    deadline = time.monotonic() + 1200
    while not (rdir / "lerobot_eval" / "lerobot-eval.log").is_file():
        assert _running(pid) and time.monotonic() < deadline, (tmp_path / "pi0-killed.log").read_text()[-4000:]
        time.sleep(0.1)
    time.sleep(2)  # lerobot-eval (its own process, in the run's process group) is starting up
    os.killpg(pid, signal.SIGKILL)
    assert runner.wait(pid) == -signal.SIGKILL and not (rdir / "result.json").exists()
    assert (rdir / "online.json").is_file()
    _finish(runner, args, tmp_path / "pi0.log")

    cfg = json.loads((run / "prior" / "lerobot" / "checkpoints" / "last" / "pretrained_model" / "config.json")
                     .read_text())
    assert cfg["type"] == "pi0"
    prior = json.loads((run / "bc" / "seed0" / "result.json").read_text())
    assert prior["prior_kind"] == "pi0" and set(prior["phases"]) == {"prior"}
    r = json.loads((rdir / "result.json").read_text())
    assert r["prior_kind"] == "pi0" and set(r["phases"]) == {"prior", "offline", "online"}
    assert r["steps"] == 3 + 6 and r["online_rows"] == r["online_env_steps"] == 6
    assert r["resumed_from_step"] == 9 and r["online_interrupted_episodes"] == 0
    assert r["seconds"]["online"]["cached"] is True and r["seconds"]["lerobot_eval"]["seconds"] > 0
    assert [json.loads(x)["phase"] for x in (rdir / "evals.jsonl").read_text().splitlines()] == \
        ["prior", "offline", "online"]
    assert json.loads((rdir / "policy" / "config.json").read_text())["type"] == "pi0"
    le = r["lerobot_eval"]  # LeRobot's evaluator on the fine-tuned pi0 folder, inside the tiny pi wrapper
    assert le["episodes"] == 1 and le["seeds"] == episode_seeds(0, 1) and Path(le["eval_info"]).is_file()
    head = (rdir / "lerobot_eval" / "lerobot-eval.log").read_text().splitlines()[1]
    assert "--tiny-pi eval" in head and f"--policy.path={rdir / 'policy'} " in head


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve()
