"""The non-finite guard: a run whose every update is non-finite stops with an error naming what went non-finite
(loss terms, gradients and weights by network, the batch's scale); some skipped updates only warn; the CLI
reports it in one line. Also the CLI's one-line errors for bad config values."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from runkit import (
    arrays,
    cfg,
    data,
    fresh_accelerate_state,  # noqa: F401 (autouse fixture)
    log_rows,
    prior,
    step_dirs,
)

from trqam_sdk.cli import main
from trqam_sdk.data.transitions import Transitions
from trqam_sdk.training.finetuner import Finetuner
from trqam_sdk.training.nonfinite import NonFiniteTrainingError


# ------------------------------------------------------------------------------------ the non-finite guard
def _nan_prior() -> Any:
    p = copy.deepcopy(prior())
    with torch.no_grad():
        next(p.parameters()).fill_(math.nan)
    return p


def _huge_data() -> Transitions:
    a = dict(arrays())
    a["observations"], a["next_observations"] = a["observations"] * 1e20, a["next_observations"] * 1e20
    return Transitions.from_numpy(a)


@pytest.mark.parametrize("case,expect", [
    ("observations-1e20", ["loss nan", "critic/loss", "gradient norm nan (in actor", "critic (",
                           "largest |batch value|: observations 1"]),
    ("nan-policy-weights", ["loss nan", "weights already non-finite in actor (1 tensor)"]),
    ("lam-init-tiny", ["loss inf (non-finite terms: actor/adj_loss)"]),
])
def test_every_update_non_finite_stops_the_run(case: str, expect: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from trqam_sdk.config import TrustRegionConfig

    kw: dict[str, Any] = {"max_nonfinite_skips": 3, "steps": 50}
    policy, d = prior(), data()
    if case == "observations-1e20":
        d = _huge_data()
    elif case == "nan-policy-weights":
        policy = _nan_prior()
    else:
        kw["trust_region"] = TrustRegionConfig(lam_init=1e-45, lam_min=1e-45)
    ft = Finetuner(cfg(tmp_path / "run", **kw), policy, d)
    with pytest.raises(NonFiniteTrainingError) as e:
        ft.train(progress=False)
    msg = str(e.value)
    assert "3 consecutive updates (steps 0..2) were non-finite and skipped" in msg and "max_nonfinite_skips" in msg
    assert all(x in msg for x in expect), msg
    assert step_dirs(tmp_path / "run") == []  # stopped at once: no checkpoint of a dead run
    assert [r["train/nonfinite_skips"] for r in log_rows(tmp_path / "run")] == [1, 2]  # the third raised
    assert "warning: step 0: non-finite update skipped" in capsys.readouterr().err


@pytest.mark.parametrize("calls", [[3], [1, 1, 1]], ids=["one-call", "three-1-step-calls"])
def test_a_run_whose_every_update_was_skipped_raises_below_the_limit(calls: list[int], tmp_path: Path) -> None:
    """Judged over every update since the Finetuner was built, whatever the length of each train() call."""
    ft = Finetuner(cfg(tmp_path / "run", max_nonfinite_skips=50), _nan_prior(), data())
    done = 0
    for n in calls:
        done += n
        with pytest.raises(NonFiniteTrainingError, match=f"all {done} updates \\(steps 0..{done - 1}\\) were "
                                                         "non-finite and skipped, the weights never changed"):
            ft.train(steps=n, progress=False)


def test_limit_zero_never_stops_but_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ft = Finetuner(cfg(tmp_path / "run", max_nonfinite_skips=0), _nan_prior(), data())
    ft.train(steps=3, progress=False)
    assert ft.nonfinite_skips == 3 and "3 of 3 updates were non-finite and skipped" in capsys.readouterr().err


def test_one_bad_step_in_short_calls_only_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A healthy run trained in 1-step calls (an online loop) with one non-finite batch does not stop."""
    d = dataclasses.replace(data(), rewards=data().rewards.clone())
    ft = Finetuner(cfg(tmp_path / "run", max_nonfinite_skips=20, steps=6), prior(), d)
    ft.train(steps=1, progress=False)
    poisoned = ft.shard

    def shard(step: int) -> Any:
        batch, noise = poisoned(step)
        if step == 1:
            batch["rewards"] = batch["rewards"] * float("nan")
        return batch, noise

    ft.shard = shard  # type: ignore[method-assign]
    for _ in range(5):
        ft.train(steps=1, progress=False)
    assert ft.step == 6 and ft.nonfinite_skips == 1 and "1 of 1 updates were non-finite" in capsys.readouterr().err


def test_some_skipped_updates_warn_with_the_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = dataclasses.replace(data(), rewards=data().rewards.clone())
    ft = Finetuner(cfg(tmp_path / "run"), prior(), d)
    clean = ft.data.rewards.clone()

    def poison(step: int) -> None:
        ft.data.rewards.copy_(torch.full_like(clean, math.nan) if step == 1 else clean)

    ft.train(progress=False, before_step=poison)
    assert ft.nonfinite_skips == 1
    assert "warning: 1 of 4 updates were non-finite and skipped" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    np.savez(root / "data.npz", **arrays())
    a = dict(arrays())
    a["observations"], a["next_observations"] = a["observations"] * 1e20, a["next_observations"] * 1e20
    np.savez(root / "huge.npz", **a)
    prior().save_pretrained(root / "prior")
    (root / "cfg.yaml").write_text("batch_size: 4\nflow_steps: 2\nlog_every: 1\ntrackers: []\n"
                                   "critic: {num_critics: 2, width: 16, depth: 1}\nmax_nonfinite_skips: 2\n")
    return {"data": root / "data.npz", "huge": root / "huge.npz", "prior": root / "prior", "cfg": root / "cfg.yaml"}


def _cli(files: dict[str, Path], out: Path, *extra: str, npz: str = "data") -> list[str]:
    return ["train", "--data", str(files[npz]), "--policy", str(files["prior"]), "--config", str(files["cfg"]),
            "--output-dir", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("extra,match", [
    (("--steps", "-3"), "--set: steps: must be >= 0, got -3"),
    (("--set", "steps=yes"), "steps: expected an integer, got 'yes' (str)"),
    (("--set", "grad_clip=0"), "grad_clip: must be > 0, got 0"),
    (("--set", "trust_region.lam_init=0"), "trust_region.lam_init: must be > 0, got 0"),
    (("--set", "critic.num_critics=0"), "critic.num_critics: must be >= 1, got 0"),
], ids=["steps-negative", "steps-yes", "grad-clip-0", "lam-init-0", "num-critics-0"])
def test_cli_bad_values_are_one_line(extra: tuple[str, ...], match: str, cli_files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(cli_files, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("trqam: error: ") and match in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_cli_all_non_finite_run_fails_with_the_message(cli_files: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(cli_files, tmp_path / "run", "--steps", "20", npz="huge")) == 2
    out = capsys.readouterr()
    assert "trqam: error: training stopped: 2 consecutive updates (steps 0..1) were non-finite" in out.err
    assert "observations 1" in out.err and "warning: step 0: non-finite update skipped" in out.err
    assert "done:" not in out.out and "Traceback" not in out.err
