"""Count the prefix and expert passes of whatever runs inside a block: what an update costs against a sample.

A *prefix pass* is one ``condition`` call (a VLA's vision-language prefix: the per-state cost); an *expert
pass* is one ``velocity`` call (the action expert against a computed condition). Rows are summed too, so a
call over the condition tiled T times counts T·B expert rows. A VJP costs one expert forward (counted) plus
its backward (not counted: ``expert_calls`` / ``expert_rows`` are forwards)::

    with count_passes(agent) as n:
        agent(batch, noise)
    n["prefix"], n["prefix_rows"], n["expert_calls"], n["expert_rows"]

The count is by instance patching (restored on exit), so it sees every path: sampling, the agent's losses,
the lean adjoint, the critic target. ``n["by_model"]`` splits the counts by the agent's attribute names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.core.pytree import first_leaf

KEYS = ("prefix", "prefix_rows", "expert_calls", "expert_rows")


def flow_models(agent_or_adapter: Any) -> dict[str, FlowPolicy]:
    """The distinct flow policies to count: the adapter itself, or an agent's direct children that are flow
    policies (``actor``, ``base``, ``ref``...), each once even when held under two names."""
    if isinstance(agent_or_adapter, FlowPolicy):
        return {"policy": agent_or_adapter}
    seen: dict[int, str] = {}
    out: dict[str, FlowPolicy] = {}
    for name, child in agent_or_adapter._modules.items():  # not named_children: it hides a second name
        if isinstance(child, FlowPolicy):
            if id(child) in seen:
                out[f"{seen[id(child)]}={name}"] = out.pop(seen[id(child)])
                seen[id(child)] = f"{seen[id(child)]}={name}"
            else:
                seen[id(child)] = name
                out[name] = child
    if not out:
        raise ValueError(f"{type(agent_or_adapter).__name__} holds no flow policy to count passes of")
    return out


def _rows(tree: Any) -> int:
    try:
        return int(first_leaf(tree).shape[0])
    except ValueError:
        return 0


@contextlib.contextmanager
def count_passes(agent_or_adapter: Any) -> Iterator[dict[str, Any]]:
    """Count ``condition`` (prefix) and ``velocity`` (expert) calls and rows inside the block (see module)."""
    models = flow_models(agent_or_adapter)
    total: dict[str, Any] = dict.fromkeys(KEYS, 0)
    total["by_model"] = {name: dict.fromkeys(KEYS, 0) for name in models}

    def wrap(name: str, fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
        calls, rows = ("prefix", "prefix_rows") if kind == "prefix" else ("expert_calls", "expert_rows")

        def counted(*args: Any, **kw: Any) -> Any:
            n = _rows(args[0] if args else next(iter(kw.values()))) if kind == "prefix" else \
                _rows(args[1] if len(args) > 1 else kw["x"])
            for d in (total, total["by_model"][name]):
                d[calls] += 1
                d[rows] += n
            return fn(*args, **kw)
        return counted

    patched: list[tuple[FlowPolicy, str]] = []
    try:
        for name, model in models.items():
            for attr, kind in (("condition", "prefix"), ("velocity", "expert")):
                if attr in model.__dict__:
                    raise RuntimeError(f"{name}.{attr} is already patched on the instance: nested count_passes?")
                object.__setattr__(model, attr, wrap(name, getattr(model, attr), kind))
                patched.append((model, attr))
        yield total
    finally:
        for model, attr in patched:
            model.__dict__.pop(attr, None)
