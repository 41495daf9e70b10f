"""Pytree helpers for conditioning and observations: a tensor, or a dict / tuple / list of them (batch first).

A VLA's condition is a KV cache per layer plus masks; its observations are dicts of images, tokens and state.
These let the samplers, the agent and the data code treat every such structure like one batched tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

Cond = Any
"""A tensor, or a dict/tuple/list of tensors whose leading axis is the batch."""


def tree_map(fn: Callable[[Tensor], Tensor], cond: Cond) -> Cond:
    """Apply ``fn`` to every tensor of a conditioning pytree (dict / list / tuple / tensor)."""
    if isinstance(cond, Tensor):
        return fn(cond)
    if isinstance(cond, dict):
        return {k: tree_map(fn, v) for k, v in cond.items()}
    if isinstance(cond, list | tuple):
        return type(cond)(tree_map(fn, v) for v in cond)
    return cond


def first_leaf(tree: Cond) -> Tensor:
    """The first tensor of a pytree (its batch size and device are the batch's)."""
    if isinstance(tree, Tensor):
        return tree
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list | tuple) else ()
    for v in items:
        if isinstance(v, Tensor | dict | list | tuple):
            try:
                return first_leaf(v)
            except ValueError:
                continue
    raise ValueError(f"no tensor in {type(tree).__name__}")


def repeat_condition(cond: Cond, n: int) -> Cond:
    """Tile a per-state conditioning n times along the batch (block order: [cond; cond; ...])."""
    return tree_map(lambda c: c.repeat(n, *([1] * (c.ndim - 1))), cond)


def leaves(tree: Cond) -> Iterator[Tensor]:
    """Every tensor of a pytree, in a fixed order (dict keys sorted)."""
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, dict):
        for k in sorted(tree):
            yield from leaves(tree[k])
    elif isinstance(tree, list | tuple):
        for v in tree:
            yield from leaves(v)
