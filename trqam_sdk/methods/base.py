"""The method contract: everything the method-agnostic finetuner needs of an agent, and nothing more.

A method is a registered :class:`Agent` subclass (plus, optionally, an ``Options`` dataclass for its own
hyper-parameters, read from ``FinetuneConfig.method_options``). The finetuner draws the noise the agent asks for
(:meth:`Agent.noise_spec`), runs :meth:`Agent.loss` inside one DDP forward, steps one optimiser over the agent's
trainable parameters, and calls :meth:`Agent.after_step` (target updates, a dual step, ...). It knows nothing of
critics, KL or λ. Checkpoints keep :attr:`Agent.policy` (loadable alone) apart from what the algorithm owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from trqam_sdk.adapters.base import FlowPolicy
    from trqam_sdk.config import FinetuneConfig
    from trqam_sdk.data.transitions import Transitions


@dataclass(frozen=True)
class Noise:
    """One noise tensor of an update: its global shape, distribution and which axis is the batch."""

    shape: tuple[int, ...]
    kind: Literal["normal", "uniform"] = "normal"
    """normal: N(0, I); uniform: U[0, 1) (e.g. flow-matching times)"""
    batch_dim: int = 0
    """the axis split across processes (the SDE noise (T-1, B, D) has it at 1)"""


class FlowActor:
    """Picklable acting policy of a flow: Euler ODE sample of ``policy``, clipped to its box (``Agent.act``).

    Passing this (rather than a bound method of the agent) ships only the policy's weights to the workers.
    """

    def __init__(self, policy: FlowPolicy, flow_steps: int = 10, seed: int = 0):
        self.policy, self.flow_steps, self.seed = policy.eval(), flow_steps, seed
        self.generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, obs: Any) -> Tensor:
        # no graph: a VLA's prefix forward would otherwise keep its activations for every acted chunk; eval mode
        # because the actor may share its module with a learner that switched it back to train mode
        with torch.no_grad():
            return self.policy.eval().sample(obs, self.flow_steps, self.generator)


class AgentActor(FlowActor):
    """Picklable acting policy of a method whose actions need more than the flow (a critic for best-of-N or
    guidance, a noise-space or edit policy): calls ``agent.act(obs, generator)``. The whole agent is shipped
    to evaluation workers, so keep what ``act`` needs in the agent and nothing heavy besides."""

    def __init__(self, agent: Agent, seed: int = 0):
        self.agent, self.seed = agent.eval(), seed
        self.generator = None

    def __call__(self, obs: Any) -> Tensor:
        with torch.no_grad():
            return self.agent.act(obs, self.generator)


@dataclass
class NoOptions:
    """A method without options of its own."""


class Agent(nn.Module):
    """Base class of every method's agent. Subclasses implement :meth:`build`, :meth:`noise_spec`, :meth:`loss`."""

    method_name: ClassVar[str] = ""
    """set by ``register_method``"""
    Options: ClassVar[type] = NoOptions
    """the dataclass ``FinetuneConfig.method_options`` is parsed into (strictly: unknown keys are errors)"""
    policy_attr: ClassVar[str] = "actor"
    """the submodule holding the fine-tuned policy (saved on its own, not in the algorithm file)"""
    progress_keys: ClassVar[tuple[str, ...]] = ()
    """metrics shown on the progress bar"""

    flow_steps: int = 10

    @classmethod
    def build(cls, cfg: FinetuneConfig, policy: FlowPolicy, data: Transitions,
              critic: nn.Module | None = None) -> Agent:
        """The agent for ``policy`` (the pretrained prior, copied here, never modified in place)."""
        raise NotImplementedError

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> Any:
        from trqam_sdk.config import from_dict

        return from_dict(cls.Options, dict(options), where=f"method_options ({cls.method_name})")

    @property
    def policy(self) -> FlowPolicy:
        """The policy this method fine-tunes (what evaluation, the Hub and ``policy/`` checkpoints use)."""
        return getattr(self, self.policy_attr)

    # -- one update ------------------------------------------------------------------------------------
    def noise_spec(self, batch: int) -> dict[str, Noise]:
        """The noise one update of ``batch`` rows needs, drawn by the finetuner in this order."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss and its metrics (0-d tensors, namespaced ``critic/``, ``actor/``, ...)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Any], noise: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss(batch, noise)

    def after_step(self, metrics: dict[str, float], step: int) -> None:
        """After a finite optimiser step: target updates, dual steps. ``metrics`` are averaged over processes."""

    def status(self, step: int) -> dict[str, float]:
        """State worth logging at every step whether or not the update was applied (λ, the KL EMA, ...)."""
        return {}

    def act(self, obs: Any, generator: torch.Generator | None = None) -> Tensor:
        """Evaluation policy: (B, H, A) chunks in the box."""
        return self.policy.sample(obs, self.flow_steps, generator)

    def make_actor(self, seed: int = 0) -> FlowActor:
        """The picklable acting policy the evaluator, the online collector and videos call (obs → chunk).

        The default samples :attr:`policy` alone (what ``policy/`` checkpoints and the Hub hold); a method
        whose actions need its other networks returns ``AgentActor(self, seed)`` so they go through :meth:`act`.
        """
        return FlowActor(self.policy, self.flow_steps, seed)

    # -- what a checkpoint writes -------------------------------------------------------------------------
    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of copies that never change (e.g. a frozen reference): not written, only
        fingerprinted, since the prior passed on resume rebuilds them."""
        return ()

