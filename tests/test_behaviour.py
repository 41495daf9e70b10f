"""Behaviour preserved across refactors: fixed-seed runs log exactly what the code logged before the restructure of
issue 9 (commit a983887, recorded in tests/data/), old flat metric names mapped to the new ones. The tiny demo's
recording is checked by tests/test_demo_cli.py (the same run also checks the command end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"
NEW = {"critic_loss": "critic/loss", "q_mean": "critic/q_mean", "target_mean": "critic/target_mean",
       "adj_loss": "actor/adj_loss", "bc_loss": "actor/bc_loss", "path_kl": "actor/path_kl",
       "action_abs": "actor/action_abs", "adjoint_norm": "actor/adjoint_norm", "kl_ema": "dual/kl_ema",
       "lam": "dual/lam", "kl_budget": "dual/kl_budget", "loss": "train/loss", "grad_norm": "train/grad_norm",
       "nonfinite_skips": "train/nonfinite_skips", "step": "step"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(r) for r in path.read_text().splitlines() if r.strip()]


def assert_matches_recording(recorded: Path, logged: Path, rows: int) -> None:
    """Every value of the recording, under its new name, within 1e-6 (relative above 1) in the new log."""
    before, after = _rows(recorded), _rows(logged)
    assert len(before) == len(after) == rows
    for old, new in zip(before, after, strict=True):
        for key, value in old.items():
            assert abs(new[NEW[key]] - value) <= 1e-6 * max(1.0, abs(value)), (old["step"], key, value, new[NEW[key]])


def test_tiny_pi0_finetune_matches_the_pre_restructure_recording(tmp_path_factory, tmp_path: Path) -> None:  # noqa: ANN001
    """`trqam lerobot-train --tiny` on the shared tiny pi0 (6 updates): the recording was made with the old code
    plus the one change this restructure made on that path, seeding the critic's initialisation."""
    sys.path.insert(0, str(Path(__file__).parent))
    from lerobot_tiny import ACTION_DIM, STATE_DIM, tiny

    from trqam_sdk.integrations.lerobot.data import write_synthetic_dataset

    root = tmp_path_factory.getbasetemp() / "lerobot-tiny"
    model = tiny("pi0", root)
    dataset = tmp_path / "dataset"
    write_synthetic_dataset(dataset, episodes=4, length=12, state_dim=STATE_DIM, action_dim=ACTION_DIM)
    cmd = [sys.executable, "-m", "trqam_sdk.cli", "lerobot-train", "--policy", str(model.checkpoint), "--dataset",
           str(dataset), "--repo-id", "local/trqam-synthetic", "--steps", "6", "--batch-size", "4", "--flow-steps",
           "3", "--output-dir", str(tmp_path / "run"), "--tiny"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_matches_recording(DATA / "pi0_metrics_a983887_seeded.jsonl", tmp_path / "run" / "metrics.jsonl", rows=6)
