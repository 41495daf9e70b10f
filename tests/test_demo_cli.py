"""`trqam demo` end to end at toy size, in a subprocess, as a user would run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_behaviour import DATA, assert_matches_recording

pytest.importorskip("ogbench")


def test_demo_cli_tiny(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # the settings of the pre-restructure recording (tests/data/demo_metrics_a983887.jsonl): one run checks the
    # command end to end and that its training logs exactly what the code logged before issue 9's restructure
    cmd = [sys.executable, "-m", "trqam_sdk.cli", "demo", "--dataset-episodes", "6", "--episode-length", "301",
           "--data-dir", str(tmp_path / "data"), "--bc-steps", "150", "--steps", "60", "--width", "64",
           "--critic-width", "64", "--num-critics", "2", "--batch-size", "64", "--episodes", "2",
           "--eval-max-steps", "50", "--workers", "1", "--threads", "1", "--seeds", "0", "--output-dir", str(out),
           "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ci = r"(\d+\.\d)% \[(\d+\.\d), (\d+\.\d)\] \(n=2\)"
    m = re.search(rf"RESULT .*BC {ci}\s+TRQAM {ci}\s+final kl_ema (\S+) vs ε 0.5\s+λ (\S+)", proc.stdout)
    assert m, proc.stdout
    for i in (1, 4):  # each success rate with its 95 % Wilson interval over the 2 episodes
        rate, lo, hi = (float(m.group(i + j)) for j in range(3))
        assert lo <= rate <= hi and hi - lo > 30  # 2 episodes cannot give a narrow interval
    assert float(m.group(7)) >= 0.0 and 0.01 <= float(m.group(8)) <= 100.0
    task = out / "cube-single" / "task1"
    run = task / "trqam" / "seed0"
    assert (run / "trqam_curves.png").stat().st_size > 0
    assert (run / "policy" / "model.safetensors").is_file()
    assert (task / "bc_prior" / "seed0" / "config.json").is_file()
    assert (run / "checkpoints" / "latest.json").is_file() and (run / "checkpoints" / "step-00000060").is_dir()
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60 and {"actor/path_kl", "dual/kl_ema", "dual/lam", "critic/loss"} <= set(rows[-1])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(run / "trqam")).Reload().Tags()["scalars"])  # the run's scalars (not hparams)
    assert {"dual/lam", "critic/loss", "eval/success_rate", "eval/ci95_high"} <= tags  # namespaces kept end to end
    summary = json.loads((out / "results.json").read_text())
    assert summary["runs"][0]["seed"] == 0 and summary["episodes"] == 2
    bc = json.loads((task / "bc" / "seed0" / "result.json").read_text())
    assert bc["episodes"] == 2 and summary["runs"][0]["bc"]["success"] == bc["success"]
    assert_matches_recording(DATA / "demo_metrics_a983887.jsonl", run / "metrics.jsonl", rows=20)
