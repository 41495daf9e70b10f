"""Transition files on disk: ``.npz`` archives of the six flat arrays (what ``trqam train --data`` reads).

The archive is inspected before numpy loads anything: a file that is not a zip (a .csv, a single .npy) is named
as such — the user never sees numpy's advice to set ``allow_pickle`` — and an object-dtype (pickled) member is
refused by its key without being unpickled. Every error names the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from trqam_sdk.data.transitions import KEYS, Transitions

ZIP_MAGIC = b"PK"
NPY_MAGIC = b"\x93NUMPY"
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _member_dtypes(path: Path) -> dict[str, np.dtype]:
    """Each ``<key>.npy`` member's dtype, read from its header only (nothing is unpickled)."""
    out: dict[str, np.dtype] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            key = name.removesuffix(".npy")
            with zf.open(name) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read = HEADER_READERS.get(version)
                    if read is None:
                        raise ValueError(f"unsupported .npy format version {version}")
                    _, _, dtype = read(f)  # the header only: the data (a pickle, for objects) is never read
                except ValueError as e:
                    raise ValueError(f"{path}: member {name!r} is not a .npy array ({e})") from None
            out[key] = dtype
    return out


def load_transitions(path: str | Path) -> Transitions:
    """A ``.npz`` with observations, actions, rewards, masks, terminals, next_observations (flat, N rows), as
    validated :class:`Transitions` (:meth:`Transitions.from_numpy`). Extra keys are ignored.

    Raises FileNotFoundError (missing file), ValueError (not a .npz archive, a corrupt one, a pickled member,
    invalid data) and KeyError (missing arrays), each naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"transitions file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: is a directory, not a transitions .npz file")
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if not head.startswith(ZIP_MAGIC):
        what = ("an empty file" if not head else "a single .npy array (save the six arrays with numpy.savez)"
                if head == NPY_MAGIC else f"not a zip archive (it starts with {head!r})")
        raise ValueError(f"{path}: not a readable .npz of transitions: {what}")
    try:
        dtypes = _member_dtypes(path)
        pickled = sorted(k for k, d in dtypes.items() if d.hasobject)
        if pickled:
            raise ValueError(f"{path}: {pickled} hold Python objects (object dtype, pickled): refused, never "
                             "loaded; store numeric arrays")
        missing = [k for k in KEYS if k not in dtypes]
        if missing:
            raise KeyError(f"{path}: lacks {missing} (has {sorted(dtypes)}); a transitions .npz needs {list(KEYS)}")
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz of transitions ({e})") from None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in KEYS}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:  # e.g. a member cut short
        raise ValueError(f"{path}: not a readable .npz of transitions ({e})") from None
    try:
        return Transitions.from_numpy(arrays)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{path}: {e}") from e
