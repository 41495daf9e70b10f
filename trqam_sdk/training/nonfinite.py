"""Loud non-finite updates: what went non-finite (loss terms, gradients, weights — by network), a console warning,
and an error that stops a run whose updates keep being skipped instead of ending it with a normal "done" line."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from tqdm.auto import tqdm


class NonFiniteTrainingError(RuntimeError):
    """Training stopped because too many consecutive updates were non-finite (and skipped)."""

    user_error = True  # the CLI reports it as one `trqam: error:` line (the run's inputs are at fault)


def _by_network(module: torch.nn.Module, what: str) -> list[str]:
    """Top-level networks of ``module`` with a non-finite parameter (``what="weights"``) or gradient."""
    bad: dict[str, int] = {}
    for name, p in module.named_parameters():
        t = p if what == "weights" else p.grad
        if t is not None and not bool(torch.isfinite(t).all()):
            net = name.split(".", 1)[0]
            bad[net] = bad.get(net, 0) + 1
    return [f"{net} ({n} tensor{'s' * (n > 1)})" for net, n in bad.items()]


def _largest(batch: dict[str, Any]) -> str:
    """The largest |value| of each float entry of the batch (observations of 1e20 overflow the networks)."""
    out = []
    for key, value in batch.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, t in items:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                t = t.detach()
                nans = int(torch.isnan(t).sum())
                top = float(t.nan_to_num(nan=0.0).abs().max())
                out.append(f"{key}{'.' + sub if sub else ''} {top:.3g}" + (f" ({nans} NaN)" if nans else ""))
    return ", ".join(out)


def diagnose(module: torch.nn.Module, loss: float, grad_norm: float, metrics: dict[str, float],
             batch: dict[str, Any]) -> str:
    """One line naming every non-finite piece of a skipped update."""
    parts = []
    terms = [k for k, v in metrics.items() if not math.isfinite(v)]
    if not math.isfinite(loss):
        parts.append(f"loss {loss}" + (f" (non-finite terms: {', '.join(terms)})" if terms else ""))
    if not math.isfinite(grad_norm):
        parts.append(f"gradient norm {grad_norm} (in {', '.join(_by_network(module, 'grads')) or 'no network'})")
    weights = _by_network(module, "weights")
    if weights:
        parts.append(f"weights already non-finite in {', '.join(weights)}")
    return "; ".join(parts) + f"; largest |batch value|: {_largest(batch)}"


class NonFiniteGuard:
    """Counts this process's skipped and successful updates, warns on the console (the first skip, then at powers
    of two) and raises :class:`NonFiniteTrainingError` after ``limit`` consecutive skips (0: never)."""

    def __init__(self, limit: int, loud: bool) -> None:
        self.limit, self.loud = limit, loud
        self.consecutive, self.first_step = 0, 0
        self.skipped_total, self.succeeded = 0, 0

    def ok(self, step: int) -> None:
        self.consecutive = 0
        self.succeeded += 1

    def skipped(self, step: int, why: str) -> None:
        if self.consecutive == 0:
            self.first_step = step
        self.consecutive += 1
        self.skipped_total += 1
        total = self.skipped_total
        if self.loud and total & (total - 1) == 0:  # 1, 2, 4, 8, ...
            tqdm.write(f"warning: step {step}: non-finite update skipped (weights unchanged; {total} skipped so "
                       f"far): {why}", file=sys.stderr)
        if self.limit and self.consecutive >= self.limit:
            raise NonFiniteTrainingError(
                f"training stopped: {self.consecutive} consecutive updates (steps {self.first_step}..{step}) were "
                f"non-finite and skipped; at the last: {why}. Check the data's scale (normalise observations and "
                "rewards), the prior's weights, lr and lam_init; metrics.jsonl logs train/nonfinite_skips "
                "(max_nonfinite_skips sets this limit, 0 never stops)")
