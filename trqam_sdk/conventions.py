"""Implementation conventions on which this SDK and the authors' published code differ (SPEC §3 step 8, §5.1).

Each field is one difference. The defaults are this SDK's historical choices, so existing runs replay bit for
bit; :meth:`Conventions.reference` switches every difference to the authors' implementation (the ``reference``
profile, for comparing numbers with theirs), and :meth:`Conventions.only` switches one on alone (for ablations).
What each one does and what it was measured to change: docs/conventions.md.

This module imports nothing from :mod:`trqam_sdk.config` (which holds it as ``FinetuneConfig.conventions``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from trqam_sdk.schema import ConfigBase, ranged

REFERENCE_ACTION_CLIP = 1.0 - 1e-5
"""|a| bound the authors' code clips dataset actions to on load (SPEC §5.1)"""

BCLoss = Literal["sum", "mean"]
Init = Literal["lecun_normal", "xavier_uniform"]
ChunkSampling = Literal["episode", "reference"]


@dataclass
class Conventions(ConfigBase):
    """Where the authors' implementation and this SDK differ; defaults are this SDK's (bit-identical to before)."""

    bc_loss: BCLoss = "sum"
    """flow-matching BC loss per chunk (SPEC §3 step 8): sum: squared error summed over the H·A chunk dims;
    mean: divided by H·A (the authors'). Matters because one global grad-norm clip acts on the summed loss"""
    init: Init = "lecun_normal"
    """Dense kernels of the MLP actor and the critic ensemble (SPEC §5.1): lecun_normal (truncated normal,
    std 1/sqrt(fan_in)); xavier_uniform (U(±sqrt(6 / (fan_in + fan_out))), the authors'). Biases are 0 either way"""
    bc_grad_clip: float | None = ranged(None, gt=0)
    """global grad-norm clip in BC pretraining (SPEC §5.1): None: none; 1.0: the authors' (the same optimiser
    chain as fine-tuning)"""
    chunk_sampling: ChunkSampling = "episode"
    """chunk semantics (SPEC §5, §5.1). episode: starts over every row, steps past an episode end clamped to it
    and masked per step, rewards after a task termination zeroed. reference (the authors'): starts uniform in
    [0, N - H] over the concatenated data, per-step validity from episode ends, rewards after a task termination
    kept, the critic and BC losses weight each chunk by its last step's validity"""
    action_clip: float | None = ranged(None, gt=0, le=1)
    """clip dataset actions to ±action_clip on load (SPEC §5.1): None: keep them; 1 - 1e-5: the authors'"""

    @classmethod
    def reference(cls) -> Conventions:
        """Every difference set to the authors' implementation (the ``reference`` profile)."""
        return cls(bc_loss="mean", init="xavier_uniform", bc_grad_clip=1.0, chunk_sampling="reference",
                   action_clip=REFERENCE_ACTION_CLIP)

    @classmethod
    def only(cls, *names: str) -> Conventions:
        """This SDK's defaults with the named differences switched to the reference (``only("init")``)."""
        unknown = [n for n in names if n not in DIFFERENCES]
        if unknown:
            raise ValueError(f"unknown convention(s) {unknown}; known: {list(DIFFERENCES)}")
        ref = cls.reference()
        return cls(**{n: getattr(ref, n) for n in names})

    @classmethod
    def profile(cls, name: str) -> Conventions:
        """By profile name: ``default`` (this SDK), ``reference`` (all differences) or one difference's name."""
        if name == "default":
            return cls()
        if name == "reference":
            return cls.reference()
        if name in DIFFERENCES:
            return cls.only(name)
        raise ValueError(f"unknown conventions profile {name!r}; known: {list(PROFILES)}")

    def differences(self) -> list[str]:
        """Names of the fields that differ from this SDK's defaults."""
        default = Conventions()
        return [n for n in DIFFERENCES if getattr(self, n) != getattr(default, n)]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DIFFERENCES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Conventions))
"""the field names, one per difference, in SPEC order"""
PROFILES: tuple[str, ...] = ("default", "reference", *DIFFERENCES)
"""names :meth:`Conventions.profile` accepts"""
