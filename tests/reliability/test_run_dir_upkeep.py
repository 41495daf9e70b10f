"""Run-folder upkeep and the ``trqam train`` face of run folders (issue 12, item 1): orphaned temporaries cleaned
(an ``.old-step-N`` without its ``step-N`` restored), retention of the newest N plus the best, one process per
folder, and the CLI's one-line refusals; plus probes of edges the lead's code gets wrong (strict xfails)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from runkit import (
    arrays,
    assert_like_reference,
    cfg,
    ck,
    earlier_run,
    finetuner,
    fresh_accelerate_state,  # noqa: F401 (autouse fixture)
    log_rows,
    prior,
    reference,
    step_dirs,
    temporaries,
    tree,
)

from trqam_sdk.cli import main
from trqam_sdk.training.rundir import RunDirError, step_name


# ------------------------------------------------------------------- orphaned temporaries
def test_orphaned_temporaries_are_cleaned_on_the_next_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    root = run / "checkpoints"
    shutil.copytree(ck(run, 2), root / ".tmp-step-00000003-999")
    (root / ".tmp-step-00000003-999" / "state.json").unlink()
    shutil.copytree(ck(run, 1), root / ".trash-step-00000001-999")
    shutil.copytree(ck(run, 2), root / ".old-step-00000002-999")  # its step-2 is there: a stale copy
    (run / ".trash-checkpoints-999").mkdir()
    ft = finetuner(run, "resume")
    assert ft.step == 2 and temporaries(run) == [] and step_dirs(run) == [step_name(1), step_name(2)]


def test_an_old_checkpoint_without_its_replacement_is_restored(tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run, checkpoints=3)
    ck(run, 3).rename(run / "checkpoints" / ".old-step-00000003-999")  # a kill between a re-save's renames
    ft = finetuner(run, "resume")
    assert ft.step == 3 and ft.resumed_from == ck(run, 3) and temporaries(run) == []
    ft.train(progress=False)
    assert_like_reference(ft)


def test_orphaned_atomic_write_temporaries_are_cleaned(tmp_path: Path) -> None:
    """What a kill inside atomic_write_text leaves (config.json, the log's rewrite, latest.json) is cleaned up."""
    run = tmp_path / "run"
    earlier_run(run)
    for p in (run / ".tmp-config.json-9", run / ".tmp-metrics.jsonl-9", run / "checkpoints" / ".tmp-latest.json-9"):
        p.write_text("half")
    finetuner(run, "resume")
    left = sorted(p.name for d in (run, run / "checkpoints") for p in d.iterdir() if ".tmp" in p.name)
    assert left == []


# ------------------------------------------------------------------- retention
@pytest.mark.parametrize("keep,best,want", [(2, None, [3, 4]), (2, 2, [2, 3, 4]), (0, None, [1, 2, 3, 4])],
                         ids=["keep-2", "keep-2-plus-best", "keep-all"])
def test_retention_keeps_the_newest_and_the_best(keep: int, best: int | None, want: list[int],
                                                  tmp_path: Path) -> None:
    run = tmp_path / "run"
    ft = finetuner(run, keep_checkpoints=keep, checkpoint_every=1)
    if best is not None:
        ft.train(steps=best, progress=False)
        ft.save_checkpoint(best=True, success=0.5)
        assert json.loads((run / "checkpoints" / "best.json").read_text()) == {
            "step": best, "path": step_name(best), "success": 0.5}
    ft.train(progress=False)
    assert step_dirs(run) == [step_name(s) for s in want] and temporaries(run) == []
    assert_like_reference(ft)


def test_an_unreadable_best_json_protects_nothing_and_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ft = finetuner(run, keep_checkpoints=1, checkpoint_every=1)
    ft.train(steps=1, progress=False)
    (run / "checkpoints" / "best.json").write_text("{not json")
    with pytest.warns(UserWarning, match=r"best\.json is unreadable"):
        ft.train(progress=False)
    assert step_dirs(run) == [step_name(4)]


# ------------------------------------------------------------------- one process per run folder
HOLD = ("import sys; from pathlib import Path; from trqam_sdk.training.rundir import RunLock; "
        "lock = RunLock(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()")


@pytest.mark.parametrize("on_existing", ["new", "resume", "overwrite"])
def test_a_folder_locked_by_another_process_is_refused(on_existing: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    if on_existing != "new":
        earlier_run(run)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        before = tree(run)
        with pytest.raises(RunDirError, match=f"another process is training into {run}"):
            finetuner(run, on_existing)
        assert tree(run) == before
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    finetuner(run, on_existing).end()  # released with the process


def test_finetuners_of_one_process_share_the_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = finetuner(run)
    first.train(steps=2, progress=False)
    second = finetuner(run, "resume")  # a notebook rebuilding its Finetuner
    second.train(progress=False)
    first.end()
    second.end()
    assert_like_reference(second)
    done = subprocess.run([sys.executable, "-c", HOLD, str(run)], input="", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]  # both released: another process may take it


# ------------------------------------------------------------------- the same through `trqam train`
@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    np.savez(root / "data.npz", **arrays())
    prior().save_pretrained(root / "prior")
    c = cfg(root)
    (root / "cfg.yaml").write_text(yaml.safe_dump({
        "batch_size": c.batch_size, "flow_steps": c.flow_steps, "log_every": 1, "trackers": [],
        "policy": {"width": 16, "depth": 1}, "critic": {"num_critics": 2, "width": 16, "depth": 1}}))
    return root / "data.npz", root / "prior", root / "cfg.yaml"


def _train(inputs: tuple[Path, Path, Path], run: Path, *extra: str, steps: int = 4) -> list[str]:
    npz, policy, config = inputs
    return ["train", "--data", str(npz), "--policy", str(policy), "--config", str(config), "--output-dir", str(run),
            "--steps", str(steps), "--no-progress", *extra]


def test_cli_resume_and_overwrite_work(cli_inputs: tuple[Path, Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(_train(cli_inputs, run, steps=2)) == 0
    assert main(_train(cli_inputs, run, "--resume")) == 0
    assert "from step-00000002 (step 2)" in capsys.readouterr().out
    rows = log_rows(run)
    assert rows == reference()[1]
    assert main(_train(cli_inputs, run, "--overwrite")) == 0
    assert log_rows(run) == rows  # replaced, not appended


@pytest.mark.parametrize("extra,setup,match", [
    ((), True, "is not empty .*--resume .*--overwrite"),
    (("--resume",), False, "nothing to resume"),
    (("--resume", "--set", "seed=1"), True, "trained with seed=0, this run has 1"),
    (("--resume", "--set", "flow_steps=3"), True, "trained with flow_steps=2, this run has 3"),
], ids=["new-into-used", "resume-nothing", "resume-seed-conflict", "resume-flow-steps-conflict"])
def test_cli_refusals_are_one_line(extra: tuple[str, ...], setup: bool, match: str, tmp_path: Path,
                                   cli_inputs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    if setup:
        earlier_run(run)
    before = tree(run)
    assert main(_train(cli_inputs, run, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("trqam: error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err
    assert tree(run) == before


def test_cli_resume_and_overwrite_are_exclusive(tmp_path: Path, cli_inputs: tuple[Path, Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(_train(cli_inputs, tmp_path / "run", "--resume", "--overwrite"))
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- probes of the edges
def test_a_corrupt_log_line_refuses_the_resume_before_touching_anything(tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("{half a row\n" + "".join(lines[1:]))
    before = tree(run)
    with pytest.raises(ValueError, match=r"metrics\.jsonl:1: not a JSON row"):
        finetuner(run, "resume", steps=6)
    assert tree(run) == before


def test_pruning_never_leaves_only_broken_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier_run(run)
    shutil.copytree(ck(run, 2), ck(run, 9))  # e.g. a copy of the run folder cut short
    (ck(run, 9) / "state.json").unlink()
    with pytest.warns(UserWarning, match="passing over checkpoint step-00000009"):
        ft = finetuner(run, "resume", keep_checkpoints=1)
    ft.train(progress=False)
    assert step_name(4) in step_dirs(run)
