"""What a run folder holds and what a new, resumed or overwritten run may do with it.

A Finetuner owns these entries of its ``output_dir`` (:data:`RUN_ENTRIES`); anything else there (a pipeline's stage
files, a replay buffer) belongs to its caller. ``on_existing`` says what to do with an earlier run:

* ``"new"`` (default, ``trqam train``): a folder that holds anything is refused, so no run is silently merged into
  another or replaces its checkpoints;
* ``"resume"`` (``--resume``): continue from the newest *intact* checkpoint (found by scanning ``step-*`` folders, so
  a missing or stale ``latest.json`` is no obstacle); refused, with nothing touched, when there is none;
* ``"overwrite"`` (``--overwrite``): the earlier run's own entries are removed first (the caller's files stay);
* ``"auto"``: resume when an intact checkpoint exists, else overwrite (pipelines whose stage files decide whether a
  run is finished).

Writes that a kill may interrupt leave only dot-named temporaries (``.tmp-*``, ``.old-*``, ``.trash-*``); they are
never mistaken for checkpoints and are cleaned up (or, for an ``.old-*`` whose replacement never landed, restored)
when the next run starts.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trqam_sdk.io import atomic_write_text, read_json, safetensors_intact

OnExisting = Literal["new", "resume", "overwrite", "auto"]
ON_EXISTING: tuple[str, ...] = ("new", "resume", "overwrite", "auto")
RUN_ENTRIES = ("checkpoints", "trqam", "metrics.jsonl", "config.json")
"""what a Finetuner writes in its output folder (``trqam/`` holds the tracker logs), in the order an overwrite
removes them: checkpoints first, so a kill mid-way never leaves the discarded run resumable"""
LOCK = ".lock"
_STEP = re.compile(r"^step-(\d{8})$")
_OLD = re.compile(r"^\.old-step-(\d{8})-\d+$")
_TEMP = re.compile(r"^\.(tmp|old|trash)-")


class RunDirError(ValueError):
    """A run folder that cannot be used as asked (refused before anything in it is touched)."""


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_problem(path: Path, step: int | None = None) -> str | None:
    """Why ``path`` is not a complete checkpoint (None when it is): every file there, its state.json's step, and the
    safetensors files' headers and sizes (no tensor is read)."""
    try:
        state = read_json(path / "state.json", "checkpoint state")
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    if not isinstance(state, dict) or "step" not in state or "config" not in state:
        return f"{path / 'state.json'} lacks its step or config"
    if step is not None and state["step"] != step:
        return f"{path / 'state.json'} says step {state['step']}, the folder name {step}"
    for name in ("algorithm.safetensors", "optimizer.safetensors"):
        if not safetensors_intact(path / name):
            return f"{path / name} is missing or incomplete"
    policy = path / "policy"
    if not policy.is_dir() or not any(policy.iterdir()):
        return f"{policy} (the policy folder) is missing or empty"
    for f in policy.rglob("*.safetensors"):
        if not safetensors_intact(f):
            return f"{f} is incomplete"
    return None


@dataclass
class Checkpoints:
    """The checkpoints found in a run folder, newest first, and those passed over (with the reason)."""

    intact: list[tuple[int, Path]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    @property
    def newest(self) -> Path | None:
        return self.intact[0][1] if self.intact else None


def scan_checkpoints(run_dir: str | Path) -> Checkpoints:
    """Every intact checkpoint of ``run_dir``, newest first. An ``.old-step-N`` folder stands in for a missing
    ``step-N`` (a kill between the two renames of a re-save); incomplete ones are listed in ``broken``."""
    root = Path(run_dir) / "checkpoints"
    found = Checkpoints()
    if not root.is_dir():
        return found
    names = {p.name: p for p in root.iterdir() if p.is_dir()}
    candidates: dict[int, Path] = {}
    for name, p in names.items():
        if m := _STEP.match(name):
            candidates[int(m[1])] = p
    for name, p in sorted(names.items()):
        if (m := _OLD.match(name)) and int(m[1]) not in candidates:
            candidates[int(m[1])] = p
    for step in sorted(candidates, reverse=True):
        problem = checkpoint_problem(candidates[step], step)
        if problem is None:
            found.intact.append((step, candidates[step]))
        else:
            found.broken.append(f"{candidates[step].name}: {problem}")
    return found


def run_entries(run_dir: Path) -> list[str]:
    """What the folder holds, bar this module's own lock and temporaries."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK and not _TEMP.match(p.name))


def plan(run_dir: str | Path, on_existing: str, loud: bool = True) -> Path | None:
    """The checkpoint to resume from (None: start at step 0). Read-only: every refusal happens here, before the
    folder is touched. Warns (when ``loud``: the main process) about checkpoints passed over and a ``latest.json``
    that disagrees."""
    if on_existing not in ON_EXISTING:
        raise RunDirError(f"on_existing must be one of {list(ON_EXISTING)}, got {on_existing!r}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output folder {run_dir} is a file")
    held = run_entries(run_dir)
    if on_existing == "new":
        if held:
            shown = ", ".join(held[:6]) + (" …" if len(held) > 6 else "")
            raise RunDirError(f"output folder {run_dir} is not empty (it holds {shown}): pass --resume to continue "
                              "its run or --overwrite to replace it (Finetuner(on_existing='resume' | 'overwrite'))")
        return None
    if on_existing == "overwrite":
        return None
    found = scan_checkpoints(run_dir)
    for why in found.broken if loud else ():
        warnings.warn(f"{run_dir}: passing over checkpoint {why}", stacklevel=3)
    if found.newest is None:
        if on_existing == "auto":
            return None
        what = f"no intact checkpoint under {run_dir / 'checkpoints'}" if run_dir.is_dir() else "it does not exist"
        extra = f" ({'; '.join(found.broken)})" if found.broken else ""
        raise RunDirError(f"nothing to resume in {run_dir}: {what}{extra}; start it without --resume")
    pointer = run_dir / "checkpoints" / "latest.json"
    try:
        named = read_json(pointer, "checkpoint pointer").get("path")
    except (FileNotFoundError, ValueError, AttributeError):
        named = None
    if loud and named != step_name(found.intact[0][0]):
        warnings.warn(f"{pointer} is missing, corrupt or stale (names {named!r}): resuming from the newest intact "
                      f"checkpoint, {found.newest.name}", stacklevel=3)
    return found.newest


def prepare(run_dir: str | Path, on_existing: str, resume_from: Path | None) -> Path | None:
    """Main process, after :func:`plan` and the checkpoint load succeeded: restore an ``.old-*`` checkpoint being
    resumed from, drop temporaries, clear the earlier run for ``overwrite`` / a fresh ``auto``. Returns the
    (possibly renamed) checkpoint."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    root = run_dir / "checkpoints"
    if resume_from is not None and _OLD.match(resume_from.name):
        restored = root / step_name(int(_OLD.match(resume_from.name)[1]))  # type: ignore[index]
        os.replace(resume_from, restored)
        resume_from = restored
    if resume_from is None and on_existing in ("overwrite", "auto"):
        for name in RUN_ENTRIES:
            _remove(run_dir / name)
    clean_temporaries(run_dir)
    return resume_from


def _remove(path: Path) -> None:
    """Delete a file or folder so that a kill mid-way leaves only a dot-named temporary, never half a folder."""
    if path.is_dir():
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
        os.replace(path, trash)
        shutil.rmtree(trash)
    elif path.exists():
        path.unlink()


def clean_temporaries(run_dir: str | Path) -> list[str]:
    """Remove what interrupted writes left behind (``.tmp-*``, ``.old-*``, ``.trash-*`` in the run folder and its
    ``checkpoints/``); an ``.old-step-N`` whose ``step-N`` is missing is restored instead. Returns what was done."""
    run_dir, done = Path(run_dir), []
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if not _TEMP.match(p.name):
                continue
            m = _OLD.match(p.name)
            if m and not (folder / step_name(int(m[1]))).exists():
                os.replace(p, folder / step_name(int(m[1])))
                done.append(f"restored {p.name}")
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            done.append(f"removed {p.name}")
    return done


def prune(run_dir: str | Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Keep the ``keep`` newest *intact* checkpoints, the one ``best.json`` names and ``protect`` (the one just
    saved); 0 keeps all. Broken folders are never counted as kept nor deleted. Returns the removed folders."""
    if keep <= 0:
        return []
    root = Path(run_dir) / "checkpoints"
    intact = [p for _, p in reversed(scan_checkpoints(run_dir).intact) if _STEP.match(p.name)]  # oldest first
    best = None
    if (root / "best.json").is_file():
        try:
            best = read_json(root / "best.json", "best-checkpoint pointer").get("path")
        except (ValueError, AttributeError):
            warnings.warn(f"{root / 'best.json'} is unreadable: no checkpoint is protected as best", stacklevel=2)
    removed = []
    for p in intact[:-keep]:
        if p.name != best and (protect is None or p.name != Path(protect).name):
            _remove(p)
            removed.append(p)
    return removed


def mark_best(run_dir: str | Path, step: int, **info: float) -> None:
    """Point ``checkpoints/best.json`` at ``step-N`` (pruning never removes it)."""
    atomic_write_text(Path(run_dir) / "checkpoints" / "best.json",
                      json.dumps({"step": step, "path": step_name(step), **info}))


_HELD: dict[Path, list[Any]] = {}
"""run folders this process holds the lock of: [open lock file, number of holders]"""


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock`` while a run is alive: another *process* training into the same
    folder is refused instead of interleaving checkpoints and logs. Finetuners of one process (a notebook that
    rebuilds one) share it; the OS releases it when the process dies, garbage collection when the holder goes."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.key = run_dir.resolve()
        if self.key in _HELD:
            _HELD[self.key][1] += 1
        else:
            f = open(run_dir / LOCK, "a")  # noqa: SIM115 (held open on purpose)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise RunDirError(f"another process is training into {run_dir} (it holds {run_dir / LOCK})") from None
            _HELD[self.key] = [f, 1]
        self._finalizer = weakref.finalize(self, _release, self.key)

    def release(self) -> None:
        self._finalizer()


def _release(key: Path) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        fcntl.flock(held[0], fcntl.LOCK_UN)
        held[0].close()
