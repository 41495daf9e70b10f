"""Small file helpers shared by training, benchmarks and integrations: atomic text writes, jsonl logs."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path, missing_ok: bool = True) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.jsonl`` / ``evals.jsonl`` (blank lines skipped); [] for a missing file when
    ``missing_ok`` (a run that has not logged yet). A last line without its newline that does not parse is a
    write a kill tore: dropped with a warning. Any other bad line is an error naming the file and line."""
    return _parse_jsonl(Path(path), missing_ok)[0]


def _parse_jsonl(path: Path, missing_ok: bool) -> tuple[list[dict[str, Any]], bool]:
    """(rows, whether a torn last line was dropped)."""
    if missing_ok and not path.is_file():
        return [], False
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not text.endswith("\n"):
                warnings.warn(f"{path}: dropping a torn last line (a write interrupted by a kill)", stacklevel=3)
                return rows, True
            raise ValueError(f"{path}:{i + 1}: not a JSON row ({e})") from e
    return rows, False


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row; a torn last line left by a kill is removed first (atomically), so the new row never lands
    on the same line as a half-written one."""
    path = Path(path)
    rows, torn = _parse_jsonl(path, missing_ok=True)
    if torn:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader (resume, a resuming sweep) never sees half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
