"""The CLI's config style (``--config`` + ``--set``), generated ``--help`` and one-line errors for bad input."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trqam_sdk.cli import main
from trqam_sdk.cli.args import add_config_arguments, config_from_args
from trqam_sdk.config import FinetuneConfig, describe_fields
from trqam_sdk.testing.toy import random_episodes

ROOT = Path(__file__).parents[1]


def parser_for(module: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"trqam {module}")
    importlib.import_module(f"trqam_sdk.cli.{module}").add_arguments(p)
    return p


@pytest.mark.parametrize("command", ["train", "lerobot-train"])
def test_help_lists_every_field_with_docstring_default_and_range(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's wrapping
    for f in describe_fields(FinetuneConfig):
        assert f"{f.key}: {f.type} = {f.default}" in out, f.key
        assert " ".join(f.doc.split()) in out, f.key
    assert "trust_region.lam_min: float = 0.01 (> 0)" in out and "--set KEY=VALUE" in out
    assert "ε_KL, the path-space KL budget per chunk step" in out


def test_dotted_overrides_are_applied_in_order_with_types(tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("steps: 5\nbatch_size: 16\ntrust_region: {kl_budget: 0.2}\n")
    args = parser_for("train").parse_args([
        "--data", "d.npz", "--config", str(cfg_file), "--set", "trust_region.kl_budget=1e-1", "--steps", "7",
        "--set", "trackers=[]", "--output-dir", "123", "--set", "critic.layer_norm=false", "--set", "lr=3e-4",
        "--set", "trust_region.kl_budget_schedule=[[10, 2]]"])
    cfg = config_from_args(args, FinetuneConfig)
    assert cfg.trust_region.kl_budget == 0.1 and cfg.steps == 7 and cfg.batch_size == 16
    assert cfg.trackers == [] and cfg.output_dir == "123" and cfg.critic.layer_norm is False
    assert type(cfg.lr) is float and cfg.lr == 3e-4 and cfg.trust_region.kl_budget_schedule == [(10, 2.0)]
    later = parser_for("train").parse_args(["--data", "d", "--steps", "7", "--set", "steps=9"])
    assert config_from_args(later, FinetuneConfig).steps == 9, "the last of --steps / --set wins"
    assert config_from_args(parser_for("train").parse_args(["--data", "d"]), FinetuneConfig) == FinetuneConfig()


def test_a_shorthand_must_name_a_field() -> None:
    with pytest.raises(ValueError, match="has no field 'trust_region.kl'"):
        add_config_arguments(argparse.ArgumentParser(), FinetuneConfig, {"--kl": "trust_region.kl"})


def test_lerobot_train_builds_its_config_and_calls_the_library(tmp_path: Path, monkeypatch) -> None:
    import trqam_sdk.integrations.lerobot.train as lib

    seen: dict[str, Any] = {}

    def fake(cfg: FinetuneConfig, policy: str, dataset: str, **kw: Any) -> dict[str, Any]:
        seen.update(cfg=cfg, policy=policy, dataset=dataset, **kw)
        return {"steps": cfg.steps}

    monkeypatch.setattr(lib, "finetune_lerobot", fake)
    common = ["lerobot-train", "--policy", "p", "--dataset", "d", "--output-dir", str(tmp_path / "run")]
    assert main([*common, "--steps", "2", "--batch-size", "4", "--kl-budget", "0.3", "--lora-rank", "8"]) == 0
    cfg = seen["cfg"]
    assert (cfg.steps, cfg.batch_size, cfg.trust_region.kl_budget, cfg.reference) == (2, 4, 0.3, "frozen")
    assert cfg.critic.num_critics == 2 and cfg.output_dir == str(tmp_path / "run") and seen["lora_rank"] == 8
    (tmp_path / "c.yaml").write_text("steps: 3\noutput_dir: elsewhere\n")
    assert main([*common, "--config", str(tmp_path / "c.yaml")]) == 0
    cfg = seen["cfg"]
    assert cfg.steps == 3 and cfg.reference == "ema" and cfg.output_dir == str(tmp_path / "run")


@pytest.mark.parametrize(("extra", "message"), [
    (["--set", "lr=-1"], "trqam: error: --set: lr: must be > 0, got -1.0"),
    (["--set", "trust_region.lam_mn=1"], "trqam: error: --set: trust_region.lam_mn: unknown keys ['lam_mn'] "
                                         "(did you mean 'lam_min'?)"),
    (["--steps", "yes"], "trqam: error: --set: steps: expected an integer, got 'yes' (str)"),
    (["--set", "method=sac"], "trqam: error: --set: method: unknown method 'sac'"),
])
def test_bad_config_input_is_one_line_and_exit_2(extra: list[str], message: str, tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "missing.npz"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_bad_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("steps: 3\nlr: 1e-3\nsteps: 4\n")
    assert main(["train", "--data", "x.npz", "--config", str(dup)]) == 2
    assert capsys.readouterr().err == f"trqam: error: {dup}:3: duplicate key 'steps' (first at line 1)\n"
    assert main(["train", "--data", str(tmp_path / "none.npz")]) == 2
    assert capsys.readouterr().err == f"trqam: error: transitions file not found: {tmp_path / 'none.npz'}\n"
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(["train", "--data", str(tmp_path / "junk.npz")]) == 2
    assert capsys.readouterr().err.startswith(f"trqam: error: {tmp_path / 'junk.npz'}: not a readable .npz")
    assert main(["train", "--data", "x.npz", "--config", str(tmp_path / "no.yaml")]) == 2
    assert capsys.readouterr().err == f"trqam: error: config file not found: {tmp_path / 'no.yaml'}\n"


@pytest.mark.parametrize(("argv", "fragment"), [
    (["train", "--data", "x", "--set", "novalue"], "argument --set: expected key=value"),
    (["train", "--data", "x", "--horizon", "0"], "argument --horizon: must be >= 1, got 0"),
    (["lerobot-train", "--policy", "p", "--dataset", "d", "--output-dir", "o", "--lora-rank", "-1"],
     "argument --lora-rank: must be >= 0, got -1"),
])
def test_bad_flags_are_argparse_errors(argv: list[str], fragment: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and fragment in capsys.readouterr().err


def test_train_subprocess_end_to_end_and_errors(tmp_path: Path) -> None:
    """As a user runs it: typed --set overrides reach the run's config.json; bad input is one line, no
    traceback, exit 2; TRQAM_DEBUG=1 gives the traceback."""
    np.savez(tmp_path / "toy.npz", **random_episodes())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "trqam_sdk.cli", "train", "--data", str(tmp_path / "toy.npz"), "--no-progress",
            "--bc-steps", "3", "--horizon", "2", "--output-dir", str(tmp_path / "run")]
    sets = ["steps=2", "batch_size=8", "flow_steps=2", "trackers=[]", "log_every=1", "policy.width=16",
            "policy.depth=1", "critic.num_critics=2", "critic.width=16", "critic.depth=1", "lr=1e-3",
            "trust_region.kl_budget=5e-2"]
    ok = subprocess.run([*base, *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lr"] == 1e-3 and saved["trust_region"]["kl_budget"] == 0.05 and saved["critic"]["width"] == 16
    bad = subprocess.run([*base, "--set", "critic.discount=1.5"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr == "trqam: error: --set: critic.discount: must be in (0, 1], got 1.5\n"
    debug = subprocess.run([*base, "--set", "critic.discount=1.5"], capture_output=True, text=True, cwd=ROOT,
                           env={**env, "TRQAM_DEBUG": "1"}, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
