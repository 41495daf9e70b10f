"""Run folders under bad input (issue 12, item 1): a new run never merges into or replaces an earlier one, a refused
resume touches nothing, ``--resume`` finds the newest intact checkpoint whatever ``latest.json`` says and passes over
broken ones by name, ``--overwrite`` removes only the run's own entries, ``auto`` does one or the other — and a
resumed run equals an uninterrupted one. Upkeep (temporaries, retention, lock) and the CLI: test_run_dir_upkeep.py."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from runkit import (
    assert_like_reference,
    ck,
    earlier_run,
    finetuner,
    fresh_accelerate_state,  # noqa: F401 (autouse fixture)
    log_rows,
    step_dirs,
    temporaries,
    tree,
)
from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig

from trqam_sdk.training.rundir import RunDirError, step_name


# ------------------------------------------------------------------------------ a new run into a used folder
def _foreign_only(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")


def _empty_checkpoints(run: Path) -> None:
    (run / "checkpoints").mkdir(parents=True)


def _log_only(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')


@pytest.mark.parametrize("make", [earlier_run, _foreign_only, _empty_checkpoints, _log_only],
                         ids=["earlier-run", "foreign-file", "empty-checkpoints", "log-only"])
def test_new_run_refuses_a_non_empty_folder(make: Callable[[Path], None], tmp_path: Path) -> None:
    run = tmp_path / "run"
    make(run)
    before = tree(run)
    with pytest.raises(RunDirError, match="not empty") as e:
        finetuner(run)
    assert str(run) in str(e.value) and "--resume" in str(e.value) and "--overwrite" in str(e.value)
    assert tree(run) == before


def test_output_folder_that_is_a_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.write_text("x")
    with pytest.raises(RunDirError, match=f"{run} is a file"):
        finetuner(run, "resume")
    assert run.read_text() == "x"


def test_new_run_accepts_an_empty_folder_and_one_holding_only_leftovers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    finetuner(run).end()
    other = tmp_path / "other"
    (other / ".tmp-step-00000001-999").mkdir(parents=True)
    (other / ".lock").write_text("")
    ft = finetuner(other)
    assert temporaries(other) == []  # cleaned on start
    ft.train(progress=False)
    assert_like_reference(ft)


# ------------------------------------------------------------------------------ refused resumes touch nothing
def _no_checkpoint(run: Path) -> None:
    earlier_run(run)
    shutil.rmtree(run / "checkpoints")


def _only_broken(run: Path) -> None:
    earlier_run(run)
    for step in (1, 2):
        (ck(run, step) / "state.json").unlink()


@pytest.mark.parametrize("make,match", [
    (_no_checkpoint, "no intact checkpoint"),
    (lambda run: None, "it does not exist"),
    (_only_broken, r"step-00000002: .*state.json"),
], ids=["no-checkpoint", "folder-missing", "only-broken-checkpoints"])
def test_resume_with_nothing_to_resume_is_refused(make: Callable[[Path], None], match: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    make(run)
    before = tree(run)
    with pytest.raises(RunDirError, match="nothing to resume") as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broken ones are named in the error too
        finetuner(run, "resume")
    assert str(run) in str(e.value) and e.match(match)
    assert tree(run) == before and run.exists() == bool(before)


@pytest.mark.parametrize("key,value", [("method", "qam"), ("flow_steps", 3), ("batch_size", 8), ("seed", 1)])
def test_resume_with_a_conflicting_config_is_refused(key: str, value: object, tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    before = tree(run)
    with pytest.raises(RunDirError, match=f"trained with {key}=") as e:
        finetuner(run, "resume", **{key: value})
    assert repr(value) in str(e.value) and str(ck(run, 2)) in str(e.value)
    assert tree(run) == before  # config.json included


def test_resume_may_change_steps_and_lr(tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    ft = finetuner(run, "resume", steps=5, lr=1e-3)
    assert ft.step == 2 and json.loads((run / "config.json").read_text())["steps"] == 5


@pytest.mark.parametrize("what", ["critic-shapes", "policy-shapes"])
def test_resume_from_a_checkpoint_of_other_shapes_is_refused(what: str, tmp_path: Path) -> None:
    from trqam_sdk.config import CriticConfig

    run = tmp_path / "run"
    earlier_run(run)
    before = tree(run)
    if what == "critic-shapes":
        with pytest.raises(ValueError, match=r"algorithm\.safetensors does not match .*critic"):
            finetuner(run, "resume", critic=CriticConfig(num_critics=2, width=8, depth=1))
    else:
        narrow = MLPFlowPolicy(MLPPolicyConfig(3, 2, 2, width=8, depth=1))
        with pytest.raises(ValueError, match=r"model\.safetensors does not match this policy"):
            finetuner(run, "resume", policy=narrow)
    assert tree(run) == before


# ------------------------------------------------------------------- resume whatever latest.json says
def _latest_missing(run: Path) -> None:
    (run / "checkpoints" / "latest.json").unlink()


def _latest_corrupt(run: Path) -> None:
    (run / "checkpoints" / "latest.json").write_text('{"step": 2, "pa')


def _latest_names_missing(run: Path) -> None:
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 9, "path": step_name(9)}))


def _latest_names_older(run: Path) -> None:
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 1, "path": step_name(1)}))


@pytest.mark.parametrize("spoil", [_latest_missing, _latest_corrupt, _latest_names_missing, _latest_names_older],
                         ids=["missing", "corrupt", "names-missing-folder", "names-older-folder"])
def test_resume_finds_the_newest_checkpoint_whatever_latest_json_says(spoil: Callable[[Path], None],
                                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    spoil(run)
    with pytest.warns(UserWarning, match=r"latest\.json is missing, corrupt or stale.*step-00000002"):
        ft = finetuner(run, "resume")
    assert ft.step == 2 and ft.resumed_from == ck(run, 2)
    ft.train(progress=False)
    assert_like_reference(ft)


# ------------------------------------------------------------------- a newer but broken checkpoint
def _garbage(p: Path) -> None:
    p.write_bytes(b"\x00not safetensors" * 4)


def _cut(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "algorithm-corrupt": (lambda c: _garbage(c / "algorithm.safetensors"), "algorithm.safetensors"),
    "optimizer-corrupt": (lambda c: _garbage(c / "optimizer.safetensors"), "optimizer.safetensors"),
    "algorithm-truncated": (lambda c: _cut(c / "algorithm.safetensors"), "algorithm.safetensors"),
    "policy-weights-truncated": (lambda c: _cut(c / "policy" / "model.safetensors"), "model.safetensors"),
    "state-missing": (lambda c: (c / "state.json").unlink(), "state.json"),
    "state-other-step": (lambda c: (c / "state.json").write_text(
        json.dumps({**json.loads((c / "state.json").read_text()), "step": 7})), "says step 7"),
    "state-corrupt": (lambda c: _cut(c / "state.json"), "state.json"),
    "policy-folder-empty": (lambda c: [p.unlink() for p in (c / "policy").iterdir()], "policy folder"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_a_broken_newer_checkpoint_is_passed_over_by_name(name: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    spoil, named = BREAKS[name]
    spoil(ck(run, 2))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ft = finetuner(run, "resume")
    said = [str(w.message) for w in seen if w.category is UserWarning]
    passed = [m for m in said if "passing over checkpoint step-00000002" in m]
    assert passed and named in passed[0], said
    assert any("latest.json is missing, corrupt or stale (names 'step-00000002')" in m for m in said), said
    assert ft.step == 1 and ft.resumed_from == ck(run, 1)
    ft.train(progress=False)  # re-saves step 2 over the broken one
    assert_like_reference(ft)


# ------------------------------------------------------------------- overwrite and auto
def test_overwrite_removes_the_earlier_run_but_keeps_foreign_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    (run / "notes.txt").write_text("mine")
    (run / "trqam").mkdir()
    (run / "trqam" / "events").write_text("old tracker log")
    (run / "config.json").write_text('{"earlier": true}')
    ft = finetuner(run, "overwrite")
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert not (run / "trqam").exists() and "earlier" not in json.loads((run / "config.json").read_text())
    ft.train(progress=False)
    assert_like_reference(ft)
    assert step_dirs(run) == [step_name(4)]


def test_auto_resumes_when_it_can(tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    ft = finetuner(run, "auto")
    assert ft.step == 2
    ft.train(progress=False)
    assert_like_reference(ft)


def test_auto_overwrites_when_nothing_is_resumable(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _no_checkpoint(run)
    (run / "notes.txt").write_text("mine")
    ft = finetuner(run, "auto")
    assert ft.step == 0 and not (run / "metrics.jsonl").exists()
    ft.train(progress=False)
    assert_like_reference(ft)  # the earlier rows are gone, not merged
    assert (run / "notes.txt").read_text() == "mine"


def test_unknown_on_existing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"on_existing must be one of .*'merge'"):
        finetuner(tmp_path / "run", "merge")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- contiguous log, exact weights
def test_resumed_run_is_contiguous_and_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ft = finetuner(run)
    ft.train(steps=2, progress=False)
    ft.train(steps=1, progress=False)
    ft.end()
    shutil.rmtree(ck(run, 3))  # a kill before step 3 was saved: its log row is there, its checkpoint is not
    assert [r["step"] for r in log_rows(run)] == [1, 2, 3]
    with pytest.warns(UserWarning, match=r"latest\.json is missing, corrupt or stale \(names 'step-00000003'\)"):
        resumed = finetuner(run, "resume")
    assert resumed.step == 2 and [r["step"] for r in log_rows(run)] == [1, 2]  # truncated to the checkpoint
    resumed.train(progress=False)
    assert_like_reference(resumed)
