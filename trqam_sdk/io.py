"""Small file helpers shared by training, benchmarks and integrations: atomic writes, jsonl logs, and readers of
JSON / safetensors files whose errors name the file (a corrupt file must never surface as a bare parser error)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


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
    on the same line as a half-written one. Only the last byte is read when the file is intact (logs grow long)."""
    path = Path(path)
    if _torn_tail(path):
        write_jsonl(path, _parse_jsonl(path, missing_ok=True)[0])
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _torn_tail(path: Path) -> bool:
    """Whether a non-empty file does not end in a newline (its last write was interrupted)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace a log with ``rows`` atomically (resume truncates a log to its checkpoint this way)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file's value; a missing or unparsable file is an error naming the file (and ``what`` it should be)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable {what} ({e}); the file is corrupt or was cut short") from None


def read_safetensors(path: str | Path, what: str = "safetensors file") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (never a pickle); missing or corrupt files are errors naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable {what} ({e}); the file is corrupt, cut short or not "
                         "safetensors") from None


def safetensors_intact(path: str | Path) -> bool:
    """Whether ``path`` is a complete safetensors file: its header parses and the data it declares is all there
    (a cheap check, no tensor is read; used to pick the newest intact checkpoint)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) == size
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader (resume, a resuming sweep) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")  # dot-named: run folders clean these up
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
