"""Shared pieces of the run-folder, kill and config tests of the reliability suite: one tiny prior and dataset
(built once per process), configs, folder fingerprints, the learner's tensors and an uninterrupted reference run
to compare resumed runs against bit for bit.

Imported by basename (pytest puts this folder on sys.path; the kill tests' child processes do the same).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig

from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig
from trqam_sdk.data.transitions import Transitions
from trqam_sdk.testing.toy import random_episodes
from trqam_sdk.training.checkpoint import optimizer_tensors
from trqam_sdk.training.finetuner import Finetuner

OBS, ACT, HORIZON, STEPS = 3, 2, 2, 4
TEMP = re.compile(r"^\.(tmp|old|trash)-")
"""the run folder's own temporaries (training/rundir.py): none may survive the next start"""


@functools.cache
def arrays() -> dict[str, Any]:
    """4 episodes of 10 rows (obs 3, action 2) as numpy arrays (the .npz the CLI tests write)."""
    return random_episodes(4, 10, obs_dim=OBS, action_dim=ACT)


@functools.cache
def data() -> Transitions:
    return Transitions.from_numpy(arrays())


@functools.cache
def prior() -> MLPFlowPolicy:
    """The one prior of the suite: every method deep-copies it, so sharing it between Finetuners is safe."""
    torch.manual_seed(0)
    return MLPFlowPolicy(MLPPolicyConfig(OBS, HORIZON, ACT, width=16, depth=1))


def cfg(out: Path, **kw: Any) -> FinetuneConfig:
    """TRQAM at its smallest: MLP 16 x 1, critics 2 x 16, batch 4, 2 flow steps, a metric row every step."""
    base: dict[str, Any] = dict(batch_size=4, steps=STEPS, flow_steps=2, log_every=1, trackers=[],
                                output_dir=str(out), policy=PolicyConfig(width=16, depth=1),
                                critic=CriticConfig(num_critics=2, width=16, depth=1))
    base.update(kw)
    return FinetuneConfig(**base)


def finetuner(out: Path, on_existing: str = "new", policy: MLPFlowPolicy | None = None, **kw: Any) -> Finetuner:
    return Finetuner(cfg(out, **kw), policy or prior(), data(), on_existing=on_existing)  # type: ignore[arg-type]


def learner(ft: Finetuner) -> dict[str, torch.Tensor]:
    """Everything a resume must restore exactly: the agent's tensors and the Adam moments."""
    out = {f"agent.{k}": v.detach().clone() for k, v in ft.agent.state_dict().items()}
    out.update({f"optim.{k}": v.clone() for k, v in optimizer_tensors(ft._optimizer())[0].items()})
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"tensors differ from the uninterrupted run: {differ[:5]}"


def log_rows(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock ``time/`` values (the only ones that differ between replays)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@functools.cache
def reference() -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The uninterrupted run (STEPS updates): its learner tensors and its log rows."""
    root = Path(tempfile.mkdtemp(prefix="trqam-reference-"))
    atexit.register(shutil.rmtree, root, True)
    run = root / "run"
    ft = finetuner(run)
    ft.train(progress=False)
    ft.end()
    return learner(ft), log_rows(run)


def assert_like_reference(ft: Finetuner) -> None:
    """Final weights and Adam moments equal the uninterrupted run's; the log is one contiguous run (steps
    1..STEPS once each) with the same values."""
    want_tensors, want_rows = reference()
    rows = log_rows(ft.run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "the log is not one contiguous run"
    assert rows == want_rows
    assert_same(learner(ft), want_tensors)


def earlier_run(run: Path, checkpoints: int = 2) -> None:
    """A finished earlier run: config.json, metrics.jsonl (steps 1..N) and checkpoints step-1..step-N."""
    ft = finetuner(run)
    for _ in range(checkpoints):
        ft.train(steps=1, progress=False)
    ft.end()


def ck(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: relative path -> sha256 of the bytes ("dir" for folders); {} when missing."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temporaries(run: Path) -> list[str]:
    """Dot-named leftovers of interrupted writes in the run folder and its checkpoints/."""
    return sorted(p.name for d in (run, run / "checkpoints") if d.is_dir() for p in d.iterdir() if TEMP.match(p.name))


def step_dirs(run: Path) -> list[str]:
    root = run / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) if root.is_dir() else []


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """Accelerate keeps one process-wide state; other test files build Finetuners with other precisions."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
