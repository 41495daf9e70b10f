"""Run logs under kills: a torn last jsonl line is dropped (and repaired before the next append), any other bad
line is an error naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trqam_sdk.io import append_jsonl, read_jsonl


def test_a_torn_last_line_is_dropped_and_repaired_before_appending(tmp_path: Path) -> None:
    log = tmp_path / "evals.jsonl"
    log.write_text(json.dumps({"step": 0}) + "\n" + '{"step": 4, "succ')  # a kill mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        assert read_jsonl(log) == [{"step": 0}]
    with pytest.warns(UserWarning, match="torn last line"):
        append_jsonl(log, {"step": 4})
    assert log.read_text() == '{"step": 0}\n{"step": 4}\n'  # the new row is not glued to the torn one
    assert read_jsonl(log) == [{"step": 0}, {"step": 4}]


def test_a_bad_line_that_is_not_a_torn_tail_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON row"):
        read_jsonl(log)
    log.write_text('{"step": 1}\n{"step": 2, \n')  # complete (newline-terminated) but bad last line
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_jsonl(log)
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl", missing_ok=False)
