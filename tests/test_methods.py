"""Every method runs the shared method contract (trqam_sdk.testing.method_contract), including one defined
outside the package (tests/plugins/toy_method.py), which also runs through the CLI by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trqam_sdk.testing.method_contract import MethodContract
from trqam_sdk.testing.toy import random_episodes
from trqam_sdk.training.checkpoint import latest_checkpoint

PLUGINS = Path(__file__).parent / "plugins"
BIN = Path(sys.executable).parent


class TestTRQAM(MethodContract):
    method = "trqam"


class TestTRQAMFrozenReference(MethodContract):
    method = "trqam"

    def make_config(self, output_dir: Path, **overrides):  # noqa: ANN003, ANN201
        return super().make_config(output_dir, **{"reference": "frozen", **overrides})

    def test_frozen_copies_are_not_written_and_a_different_prior_is_refused(self, tmp_path: Path) -> None:
        ft = self.finetuner(tmp_path)
        ft.train(progress=False)
        ck = latest_checkpoint(tmp_path)
        keys = load_file(str(ck / "algorithm.safetensors")).keys()
        assert not any(k.startswith(("base.", "ref.", "actor.")) for k in keys)
        assert {"lam", "kl_ema"} <= set(keys) and any(k.startswith("critic.") for k in keys)
        data = self.make_data()
        other = self.make_policy(data)
        with torch.no_grad():
            next(other.parameters()).add_(0.5)
        from trqam_sdk.training.finetuner import Finetuner

        with pytest.raises(ValueError, match="same pretrained policy"):
            Finetuner(self.make_config(tmp_path), other, data, on_existing="resume")


class TestQAM(MethodContract):
    method = "qam"


class TestQAMExternalKL(MethodContract):
    method = "qam_ext_kl"


class TestBC(MethodContract):
    method = "bc"


sys.path.insert(0, str(PLUGINS))
import toy_method  # noqa: E402,F401  (registers "bc_anchor", as `--plugin toy_method` does)


class TestMethodFromOutside(MethodContract):
    method = "bc_anchor"
    options = {"weight": 0.05}


def test_outside_method_runs_through_the_cli_by_name(tmp_path: Path) -> None:
    """`trqam --plugin toy_method train` with `method: bc_anchor`: no edit to the package needed."""
    np.savez(tmp_path / "toy.npz", **random_episodes(num_episodes=3, length=10, obs_dim=4, action_dim=2))
    (tmp_path / "cfg.yaml").write_text(
        "method: bc_anchor\nmethod_options: {weight: 0.2}\nbatch_size: 4\nflow_steps: 3\nlog_every: 1\n"
        "trackers: []\npolicy: {width: 16, depth: 1}\n")
    env = {"PYTHONPATH": str(PLUGINS), "OMP_NUM_THREADS": "1", "PATH": str(BIN)}
    cmd = [str(BIN / "trqam"), "--plugin", "toy_method", "train", "--config", str(tmp_path / "cfg.yaml"),
           "--data", str(tmp_path / "toy.npz"), "--horizon", "2", "--bc-steps", "5", "--steps", "3",
           "--output-dir", str(tmp_path / "run"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("actor/anchor" in r for r in rows)
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["method"] == "bc_anchor" and state["config"]["method_options"] == {"weight": 0.2}
    without = subprocess.run([c for c in cmd if c not in ("--plugin", "toy_method")], capture_output=True,
                             text=True, timeout=240, env=env)
    assert without.returncode != 0 and "bc_anchor" in without.stderr  # unknown without the plugin, by name


def test_outside_method_runs_through_a_recipe_and_aggregate(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`trqam run` / `aggregate` of a benchmark recipe with the outside method, by name, no package edit."""
    from trqam_sdk import cli

    out = str(tmp_path / "runs")
    plugins = ["--plugin", "toy_method", "--plugin", "trqam_toy_benchmark"]
    assert cli.main([*plugins, "run", "--benchmark", "toy-line", "--recipe", "line", "--profile", "tiny",
                     "--method", "bc_anchor", "--out", out, "--set", "finetune.method_options={weight: 0.3}"]) == 0
    assert "RESULT toy-line line task 1 bc_anchor seed 0: success" in capsys.readouterr().out
    rdir = tmp_path / "runs" / "line" / "task1" / "bc_anchor" / "seed0"
    result = json.loads((rdir / "result.json").read_text())
    assert result["method"] == "bc_anchor" and result["episodes"] == 4
    cfg = json.loads((rdir / "config.json").read_text())
    assert cfg["method"] == "bc_anchor" and cfg["method_options"] == {"weight": 0.3}
    assert cli.main([*plugins, "aggregate", "--benchmark", "toy-line", "--runs", out, "--no-plots"]) == 0
    assert "| bc_anchor |" in capsys.readouterr().out
