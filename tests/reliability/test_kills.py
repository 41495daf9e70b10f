"""Kills at every write boundary (issue 12, items 2 and 7): each is followed by a resume that must continue from the
newest intact checkpoint, leave no temporaries, log one contiguous run and end with the uninterrupted run's weights.

In-process, a kill is ``_Killed`` (a BaseException, so no ``except Exception`` catches it) raised at the k-th write
of a scenario. That leaves the same files on disk as SIGKILL: training/{checkpoint,rundir,finetuner}.py and io.py
have no ``finally``, no ``except BaseException`` and no cleanup hook, and the only ``with open(...)`` blocks are
around complete writes (the torn variants below write half the bytes themselves). Boundaries are enumerated by
counting the writes of a clean run of each scenario (:data:`COUNTS`, checked by a test), then each is injected in
turn: before every write, and for non-atomic file writes also mid-write (half the bytes). A few real SIGKILLs of a
child process (this file run as a script) check the simulation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as st
from runkit import (
    STEPS,
    assert_like_reference,
    assert_same,
    finetuner,
    fresh_accelerate_state,  # noqa: F401 (autouse fixture)
    learner,
    log_rows,
    reference,
    step_dirs,
    temporaries,
)
from trqam_sdk.adapters.base import FlowPolicy

from trqam_sdk import io as tio
from trqam_sdk.training import checkpoint as tck
from trqam_sdk.training import finetuner as tft
from trqam_sdk.training import rundir as trd

REAL: dict[str, Any] = {"replace": os.replace, "mkdir": os.mkdir, "unlink": os.unlink, "rmdir": os.rmdir,
                        "rmtree": shutil.rmtree, "save_file": st.save_file, "write_text": Path.write_text,
                        "save_pretrained": FlowPolicy.save_pretrained, "atomic": tio.atomic_write_text,
                        "write_jsonl": tio.write_jsonl, "append_jsonl": tio.append_jsonl}


class _Killed(BaseException):
    """Stands in for SIGKILL in-process."""


@dataclass
class Faults:
    """Counts the writes under ``root`` (normalised names, this pid as ``PID``) and kills at one of them: the
    ``kill_at``-th (an int) or the n-th occurrence of a name (``"name#n"``)."""

    root: Path
    kill_at: int | str | None = None
    sigkill: bool = False
    points: list[str] = field(default_factory=list)

    def _rel(self, path: Any) -> str | None:
        try:
            rel = Path(os.fspath(path)).resolve().relative_to(self.root.resolve())
        except (TypeError, ValueError):
            return None
        return str(rel).replace(str(os.getpid()), "PID")

    def _hit(self, name: str) -> bool:
        self.points.append(name)
        if isinstance(self.kill_at, int):
            return len(self.points) - 1 == self.kill_at
        if isinstance(self.kill_at, str):
            want, _, n = self.kill_at.rpartition("#")
            return name == want and self.points.count(name) == int(n)
        return False

    def kill(self) -> None:
        if self.sigkill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise _Killed(self.points[-1])

    def before(self, what: str, path: Any, extra: str = "") -> None:
        rel = self._rel(path)
        if rel is not None and self._hit(f"{what} {rel}{extra}"):
            self.kill()

    def torn(self, what: str, path: Any) -> bool:
        """After :meth:`before`: whether to write half the bytes and die."""
        rel = self._rel(path)
        return rel is not None and self._hit(f"{what} {rel} (torn)")

    def install(self, setattr_: Callable[[Any, str, Any], None]) -> None:
        """Wrap every write the run folder sees (``monkeypatch.setattr`` in-process, ``setattr`` in a child)."""

        def replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
            self.before("replace", src, f" -> {self._rel(dst)}")
            REAL["replace"](src, dst, *a, **kw)

        def mkdir(path: Any, *a: Any, **kw: Any) -> None:
            self.before("mkdir", path)
            REAL["mkdir"](path, *a, **kw)

        def unlink(path: Any, *a: Any, **kw: Any) -> None:
            self.before("unlink", path)
            REAL["unlink"](path, *a, **kw)

        def rmtree(path: Any, ignore_errors: bool = False, *a: Any, **kw: Any) -> None:
            """One boundary per file or folder removed (deepest first), so a kill can stop it half-way."""
            p = Path(path)
            if self._rel(p) is None or not p.exists():
                return REAL["rmtree"](path, ignore_errors, *a, **kw)
            for sub in sorted(p.rglob("*"), key=lambda q: (-len(q.parts), str(q))) + [p]:
                is_dir = sub.is_dir() and not sub.is_symlink()
                self.before("rmtree-rmdir" if is_dir else "rmtree-unlink", sub)
                (REAL["rmdir"] if is_dir else REAL["unlink"])(sub)
            return None

        def save_file(tensors: Any, filename: Any, *a: Any, **kw: Any) -> None:
            self.before("save_file", filename)
            REAL["save_file"](tensors, filename, *a, **kw)
            if self.torn("save_file", filename):
                with open(filename, "r+b") as f:
                    f.truncate(os.path.getsize(filename) // 2)
                self.kill()

        def write_text(p: Path, data: str, *a: Any, **kw: Any) -> int:
            self.before("write_text", p)
            if self.torn("write_text", p):
                REAL["write_text"](p, data[: len(data) // 2], *a, **kw)
                self.kill()
            return REAL["write_text"](p, data, *a, **kw)

        def save_pretrained(policy: FlowPolicy, directory: Any) -> Path:
            self.before("save_pretrained", directory)
            return REAL["save_pretrained"](policy, directory)

        def atomic(path: Any, text: str) -> None:
            self.before("atomic_write_text", path)
            REAL["atomic"](path, text)

        def write_jsonl(path: Any, rows: list[dict[str, Any]]) -> None:
            self.before("write_jsonl", path)
            REAL["write_jsonl"](path, rows)

        def append_jsonl(path: Any, row: dict[str, Any]) -> None:
            self.before("append_jsonl", path)
            if self.torn("append_jsonl", path):
                line = json.dumps(row)
                with open(path, "a") as f:
                    f.write(line[: len(line) // 2])
                self.kill()
            REAL["append_jsonl"](path, row)

        for owner, name, fn in [(os, "replace", replace), (os, "mkdir", mkdir), (os, "unlink", unlink),
                                (shutil, "rmtree", rmtree), (st, "save_file", save_file), (tck, "save_file", save_file),
                                (Path, "write_text", write_text), (FlowPolicy, "save_pretrained", save_pretrained),
                                (tio, "atomic_write_text", atomic), (tck, "atomic_write_text", atomic),
                                (tft, "atomic_write_text", atomic), (trd, "atomic_write_text", atomic),
                                (tio, "write_jsonl", write_jsonl), (tft, "write_jsonl", write_jsonl),
                                (tft, "append_jsonl", append_jsonl)]:
            setattr_(owner, name, fn)


# ------------------------------------------------------------------------------------------- scenarios
def _landed(step: int) -> str:
    return f"replace checkpoints/.tmp-step-{step:08d}-PID -> checkpoints/step-{step:08d}"


@dataclass
class Scenario:
    """``setup(run)`` builds the state before the armed action and returns it; ``expect(done)`` is the step the
    resume must continue from given the writes that happened; ``recover`` is the next start's on_existing."""

    setup: Callable[[Path], Callable[[], Any]]
    expect: Callable[[list[str]], int]
    recover: str = "resume"
    cfg: dict[str, Any] = field(default_factory=dict)
    final_dirs: list[int] | None = None


def _first_save(run: Path) -> Callable[[], Any]:
    ft = finetuner(run)
    ft.train(steps=1, progress=False)
    return lambda: ft.train(steps=1, progress=False)  # log row 2, then the first save of step 2


def _resave(run: Path) -> Callable[[], Any]:
    ft = finetuner(run)
    ft.train(steps=1, progress=False)
    ft.train(steps=1, progress=False)
    return ft.save_checkpoint  # step 2 again: swap, then delete the old folder


def _truncation(run: Path) -> Callable[[], Any]:
    ft = finetuner(run)
    ft.train(steps=2, progress=False)
    ft.train(steps=2, progress=False)
    ft.end()
    shutil.rmtree(run / "checkpoints" / "step-00000004")  # rows 3, 4 outlive their checkpoint
    return lambda: finetuner(run, "resume")  # drops rows 3, 4 from the log


def _prune(run: Path) -> Callable[[], Any]:
    ft = finetuner(run, keep_checkpoints=2, checkpoint_every=1)
    ft.train(steps=2, progress=False)
    return lambda: ft.train(steps=1, progress=False)  # save step 3, prune step 1


def _restore(run: Path) -> Callable[[], Any]:
    ft = finetuner(run)
    ft.train(steps=1, progress=False)
    ft.train(steps=1, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        Faults(run, kill_at=f"{_landed(2)}#1").install(mp.setattr)
        with pytest.raises(_Killed):
            ft.save_checkpoint()  # killed between the re-save's renames: only .old-step-2 and .tmp-step-2
    return lambda: finetuner(run, "resume")  # restores .old-step-2, removes .tmp-step-2, truncates the log


def _overwrite(run: Path) -> Callable[[], Any]:
    ft = finetuner(run)
    ft.train(steps=2, progress=False)
    ft.end()
    return lambda: finetuner(run, "overwrite")


SCENARIOS: dict[str, Scenario] = {
    "first-save": Scenario(_first_save, lambda done: 2 if _landed(2) in done else 1),
    "re-save": Scenario(_resave, lambda done: 2),
    "resume-truncation": Scenario(_truncation, lambda done: 2),
    "prune": Scenario(_prune, lambda done: 3 if _landed(3) in done else 2,
                      cfg={"keep_checkpoints": 2, "checkpoint_every": 1}, final_dirs=[3, 4]),
    "resume-restore": Scenario(_restore, lambda done: 2),
    "overwrite": Scenario(_overwrite, lambda done: 0, recover="overwrite", final_dirs=[4]),
}
COUNTS = {"first-save": 19, "re-save": 25, "resume-truncation": 7, "prune": 27, "resume-restore": 15,
          "overwrite": 16}
"""writes of each scenario's armed action (test_boundaries_are_enumerated keeps these honest)"""
KEY_POINTS = {
    "first-save": [_landed(2), "atomic_write_text checkpoints/latest.json", "append_jsonl metrics.jsonl (torn)",
                   "save_file checkpoints/.tmp-step-00000002-PID/algorithm.safetensors (torn)",
                   "write_text checkpoints/.tmp-step-00000002-PID/state.json (torn)"],
    "re-save": ["replace checkpoints/step-00000002 -> checkpoints/.old-step-00000002-PID", _landed(2),
                "rmtree-rmdir checkpoints/.old-step-00000002-PID"],
    "resume-truncation": ["write_jsonl metrics.jsonl", "replace .tmp-metrics.jsonl-PID -> metrics.jsonl",
                          "replace .tmp-config.json-PID -> config.json"],
    "prune": [_landed(3), "replace checkpoints/step-00000001 -> checkpoints/.trash-step-00000001-PID",
              "rmtree-rmdir checkpoints/.trash-step-00000001-PID"],
    "resume-restore": ["replace checkpoints/.old-step-00000002-PID -> checkpoints/step-00000002",
                       "rmtree-rmdir checkpoints/.tmp-step-00000002-PID", "write_jsonl metrics.jsonl"],
    "overwrite": ["unlink config.json", "unlink metrics.jsonl", "replace checkpoints -> .trash-checkpoints-PID",
                  "rmtree-rmdir .trash-checkpoints-PID"],
}


def _armed(name: str, run: Path, mp: pytest.MonkeyPatch, kill_at: int | None) -> Faults:
    act = SCENARIOS[name].setup(run)
    faults = Faults(run, kill_at=kill_at)
    with mp.context() as armed, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what the armed action reports is not checked here
        faults.install(armed.setattr)
        if kill_at is None:
            act()
        else:
            with pytest.raises(_Killed):
                act()
    return faults


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_boundaries_are_enumerated(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    points = _armed(name, tmp_path / "run", monkeypatch, None).points
    assert len(points) == COUNTS[name], f"update COUNTS[{name!r}] = {len(points)}: {points}"
    missing = [p for p in KEY_POINTS[name] if p not in points]
    assert not missing, points


@pytest.mark.parametrize("name,k", [(n, k) for n, c in COUNTS.items() for k in range(c)],
                         ids=[f"{n}-{k:02d}" for n, c in COUNTS.items() for k in range(c)])
def test_kill_then_resume(name: str, k: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, sc = tmp_path / "run", SCENARIOS[name]
    faults = _armed(name, run, monkeypatch, k)
    want = sc.expect(faults.points[:k])
    pointer = run / "checkpoints" / "latest.json"
    named = json.loads(pointer.read_text()).get("path") if pointer.is_file() else None  # atomic: never torn
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ft = finetuner(run, sc.recover, **sc.cfg)
    assert ft.step == want, f"killed at {faults.points[k]!r}: resumed at {ft.step}, the newest intact is {want}"
    if want and named != f"step-{want:08d}":  # a pointer the kill left stale is reported, not trusted
        assert any("latest.json is missing, corrupt or stale" in str(w.message) for w in seen)
    if want:
        assert ft.resumed_from == run / "checkpoints" / f"step-{want:08d}"
    assert temporaries(run) == [], f"killed at {faults.points[k]!r}"
    ft.train(progress=False)
    assert_like_reference(ft)
    if sc.final_dirs is not None:
        assert step_dirs(run) == [f"step-{s:08d}" for s in sc.final_dirs]
    ft.end()


def test_a_torn_last_log_line_is_dropped_with_a_warning(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ft = finetuner(run)
    ft.train(steps=2, progress=False)
    ft.end()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "critic/lo')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropping a torn last line"):
        resumed = finetuner(run, "resume")
    assert [r["step"] for r in log_rows(run)] == [1, 2]
    resumed.train(progress=False)
    assert_like_reference(resumed)


# ------------------------------------------------------------------------------------ real SIGKILLs
def child(run: Path, kill_at: str, on_existing: str) -> None:
    """A fresh run (1 + 1 updates, a re-save of step 2, then to the end) or a resumed one (to the end), SIGKILLed
    at the write ``kill_at`` ("name#n"; "" for none); the finished learner goes to ``<run>/../final.safetensors``."""
    import torch

    torch.set_num_threads(1)
    if kill_at:
        Faults(run, kill_at=kill_at, sigkill=True).install(setattr)
    ft = finetuner(run, on_existing)
    if on_existing == "new":
        ft.train(steps=1, progress=False)
        ft.train(steps=1, progress=False)
        ft.save_checkpoint()
    ft.train(progress=False)
    st.save_file({k: v.contiguous() for k, v in learner(ft).items()}, str(run.parent / "final.safetensors"))


def _child(run: Path, kill_at: str, on_existing: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-u", __file__, "child", str(run), kill_at, on_existing],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)


def test_real_sigkills_then_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    chain = [(f"{_landed(2)}#2", "new"),  # between the re-save's two renames
             ("replace .tmp-metrics.jsonl-PID -> metrics.jsonl#1", "resume"),  # the resume's log truncation
             ("append_jsonl metrics.jsonl (torn)#1", "resume")]  # half of row 3 written
    for kill_at, on_existing in chain:
        proc = _child(run, kill_at, on_existing)
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stderr[-3000:])
        if on_existing == "resume":
            assert "from step-00000002" in proc.stdout or ".old-step-00000002" in proc.stdout, proc.stdout
    done = _child(run, "", "resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dropping a torn last line" in done.stderr and "from step-00000002 (step 2)" in done.stdout
    assert temporaries(run) == [] and step_dirs(run) == ["step-00000001", "step-00000002", f"step-{STEPS:08d}"]
    assert [r["step"] for r in log_rows(run)] == list(range(1, STEPS + 1)) and log_rows(run) == reference()[1]
    assert_same(st.load_file(str(tmp_path / "final.safetensors")), reference()[0])


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
