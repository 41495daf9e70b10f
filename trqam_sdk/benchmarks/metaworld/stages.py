"""Stage bookkeeping of the MetaWorld pipeline: wall time and peak memory per stage, and stage result files.

A stage's result is a JSON file written atomically when the stage finishes; its presence (with the same spec)
means the stage is done, which is how ``trqam metaworld`` resumes stage by stage. Peak memory is the resident set's
high-water mark (``VmHWM``), reset at the start of each in-process stage through ``/proc/self/clear_refs`` (Linux;
elsewhere the process-lifetime peak is reported and marked so), and for stages run as subprocesses
(``lerobot-train``, ``lerobot-eval``) the child's own peak from ``wait4``'s rusage.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trqam_sdk.io import atomic_write_text, read_json


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def measure(into: dict[str, Any], name: str) -> Iterator[None]:
    """Record ``{name: {seconds, peak_rss_mb, children_peak_rss_mb}}`` into ``into`` for the enclosed stage."""
    reset = _reset_hwm()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    try:
        yield
    finally:
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        into[name] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": _vm_hwm_mb(),
                      "peak_is_per_stage": reset,
                      # ru_maxrss of children is the largest child so far (KiB): report it when it grew here
                      "children_peak_rss_mb": children / 1024.0 if children > children0 else None}


def read_stage(path: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The stage result at ``path`` if it finished with ``spec``; None if it has not run. A result from another
    spec is an error: the run folder belongs to a different configuration (use a new ``--out`` or delete it)."""
    if not path.is_file():
        return None
    try:
        saved = read_json(path, "stage result")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to redo the stage") from e
    if saved.get("spec") != json.loads(json.dumps(spec, default=str)):
        raise ValueError(f"{path} was produced with a different configuration than this run's; use another --out "
                         f"or delete {path.parent} to redo it (saved spec {saved.get('spec')}, now {spec})")
    return saved["result"]


def write_stage(path: Path, spec: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"spec": spec, "result": result}, indent=1, default=str))
    return result


def cached_stage(path: Path, spec: dict[str, Any], name: str, seconds: dict[str, Any], fn: Any) -> Any:
    """Run ``fn()`` once for ``spec`` and keep its result and cost (time, peak memory) in ``path``: later runs
    (every other method and seed sharing the stage) read both back, so each result reports what the stage cost."""
    saved = read_stage(path, spec)
    if saved is not None:
        seconds[name] = {**saved["cost"], "cached": True}
        return saved["value"]
    with measure(seconds, name):
        value = fn()
    write_stage(path, spec, {"value": value, "cost": seconds[name]})
    return value
