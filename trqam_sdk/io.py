"""Small file helpers shared by training, benchmarks and integrations: atomic text writes, jsonl logs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path, missing_ok: bool = True) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.jsonl`` / ``evals.jsonl`` (blank lines skipped); [] for a missing file when
    ``missing_ok`` (a run that has not logged yet)."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader (resume, a resuming sweep) never sees half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
