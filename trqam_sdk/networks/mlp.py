"""The paper's networks: an MLP (Linear → GELU(tanh) → LayerNorm(eps 1e-6)) and a batched Q ensemble.

Shapes and details follow SPEC §2 so weights map one-to-one onto the authors' Flax modules
(kernel (in, out) ⇔ our weight transposed; LayerNorm eps 1e-6; tanh-approximate GELU; lecun-normal init, or
the authors' Xavier-uniform with ``init="xavier_uniform"``, see trqam_sdk.conventions).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_COMPILE: dict[str, bool] = {"enabled": os.environ.get("TRQAM_COMPILE", "0") == "1"}
_COMPILED: dict[str, Callable[..., Tensor]] = {}


def compile_enabled() -> bool:
    return _COMPILE["enabled"]


def set_compile(enabled: bool) -> None:
    """Run MLP / EnsembleMLP forwards through ``torch.compile`` (inductor) — opt-in (env TRQAM_COMPILE=1).

    The compiled graphs are shared by every instance (parameters are graph inputs) and specialised on
    shapes and on which inputs require grad, so VJPs via ``torch.autograd.grad`` keep working.
    """
    _COMPILE["enabled"] = enabled


def _maybe_compiled(name: str, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    if not _COMPILE["enabled"]:
        return fn
    if name not in _COMPILED:
        import torch._dynamo

        cfg = torch._dynamo.config
        name_ = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        setattr(cfg, name_, max(getattr(cfg, name_), 64))  # one graph per (shape, grad-mode) variant
        import torch._inductor.config as inductor_config

        # generated kernels bake in their OpenMP thread count: use torch's (else they take every core)
        inductor_config.cpp.threads = torch.get_num_threads()
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def gelu_tanh(x: Tensor) -> Tensor:
    """tanh-approximate GELU (JAX's default ``gelu``): 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).

    Eager: ATen's fused kernel. Under ``torch.compile`` it is written as
    x · sigmoid(2√(2/π) (x + 0.044715 x³)) — the same function, since 0.5 (1 + tanh z) = sigmoid(2 z) —
    which inductor vectorises ~2× faster than its tanh (agreement ~5e-7 absolute in float32).
    """
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(1.5957691216057308 * x * (1.0 + 0.044715 * x * x))
    return F.gelu(x, approximate="tanh")


Init = Literal["lecun_normal", "xavier_uniform"]
INITS: tuple[str, ...] = ("lecun_normal", "xavier_uniform")


def _lecun_normal_(weight: Tensor, fan_in: int) -> None:
    nn.init.trunc_normal_(weight, std=1.0 / math.sqrt(fan_in), a=-2.0 / math.sqrt(fan_in),
                          b=2.0 / math.sqrt(fan_in))


def init_kernel_(weight: Tensor, fan_in: int, fan_out: int, init: Init = "lecun_normal") -> None:
    """Initialise a Dense kernel in place: ``lecun_normal`` (this SDK) or ``xavier_uniform`` (Flax's, the authors':
    U(±sqrt(6 / (fan_in + fan_out)))). Fans are passed explicitly because ensemble kernels are (K, in, out)."""
    if init == "lecun_normal":
        _lecun_normal_(weight, fan_in)
    elif init == "xavier_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(weight, -bound, bound)
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


def reinit_(module: nn.Module, init: Init) -> nn.Module:
    """Re-draw every MLP / EnsembleMLP kernel inside ``module`` with ``init`` (biases 0, LayerNorm 1/0): for
    networks built by code that does not take an ``init`` (e.g. an adapter), under the caller's RNG state."""
    found = False
    for m in module.modules():
        if isinstance(m, MLP | EnsembleMLP):
            m.reset_parameters(init)
            found = True
    if not found:
        raise TypeError(f"{type(module).__name__} holds no MLP or EnsembleMLP to re-initialise")
    return module


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` (Linear → GELU(tanh) → [LayerNorm]), then Linear → ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 512, depth: int = 4, layer_norm: bool = False,
                 init: Init = "lecun_normal"):
        super().__init__()
        dims = [in_dim] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.norms = (nn.ModuleList(nn.LayerNorm(width, eps=1e-6) for _ in range(depth)) if layer_norm
                      else None)
        self.out = nn.Linear(dims[-1], out_dim)
        self.reset_parameters(init)

    def reset_parameters(self, init: Init = "lecun_normal") -> None:
        """Kernels by ``init``, biases 0, LayerNorms identity (as Flax's defaults)."""
        for lin in [*self.hidden, self.out]:
            init_kernel_(lin.weight, lin.in_features, lin.out_features, init)
            nn.init.zeros_(lin.bias)
        for norm in self.norms or []:
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def forward(self, x: Tensor) -> Tensor:
        return _maybe_compiled("mlp", MLP._forward)(self, x)

    def _forward(self, x: Tensor) -> Tensor:
        for i, lin in enumerate(self.hidden):
            x = gelu_tanh(lin(x))
            if self.norms is not None:
                x = self.norms[i](x)
        return self.out(x)


class EnsembleMLP(nn.Module):
    """K independent MLPs evaluated as one batched computation: (B, in) -> (K, B, out).

    The first layer is one (B, in) × (in, K·width) GEMM because every member sees the same input;
    the rest are batched matmuls. This keeps the K = 10 critic ensemble a handful of large GEMMs.
    """

    def __init__(self, num: int, in_dim: int, out_dim: int = 1, width: int = 512, depth: int = 4,
                 layer_norm: bool = True, init: Init = "lecun_normal"):
        super().__init__()
        self.num, self.width, self.layer_norm = num, width, layer_norm
        dims = [in_dim] + [width] * depth + [out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            w = torch.empty(num, a, b)
            init_kernel_(w, a, b, init)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(num, 1, b)))
        if layer_norm:
            self.ln_scale = nn.ParameterList(nn.Parameter(torch.ones(num, 1, width)) for _ in range(depth))
            self.ln_bias = nn.ParameterList(nn.Parameter(torch.zeros(num, 1, width)) for _ in range(depth))

    @torch.no_grad()
    def reset_parameters(self, init: Init = "lecun_normal") -> None:
        """Every member's kernels by ``init`` (fans of one member's (in, out) kernel), biases 0, LayerNorms 1/0."""
        for w, b in zip(self.weights, self.biases, strict=True):
            init_kernel_(w, w.shape[1], w.shape[2], init)
            b.zero_()
        if self.layer_norm:
            for s, b in zip(self.ln_scale, self.ln_bias, strict=True):
                s.fill_(1.0)
                b.zero_()

    def _act(self, h: Tensor, i: int) -> Tensor:
        h = gelu_tanh(h)
        if self.layer_norm:
            h = F.layer_norm(h, (self.width,), eps=1e-6) * self.ln_scale[i] + self.ln_bias[i]
        return h

    def forward(self, x: Tensor) -> Tensor:
        return _maybe_compiled("ensemble", EnsembleMLP._forward)(self, x)

    def _forward(self, x: Tensor) -> Tensor:
        k, (b, d) = self.num, x.shape
        w0 = self.weights[0].permute(1, 0, 2).reshape(d, k * self.width)
        h = (x @ w0).view(b, k, self.width).transpose(0, 1) + self.biases[0]
        h = self._act(h, 0)
        n = len(self.weights)
        for i in range(1, n):
            h = torch.baddbmm(self.biases[i], h, self.weights[i])
            if i < n - 1:
                h = self._act(h, i)
        return h


class QEnsemble(nn.Module):
    """Q_k(s, chunk) for k = 1..K over ``[obs, flattened chunk]`` (SPEC §2, §5); returns (K, B)."""

    def __init__(self, obs_dim: int, action_dim: int, num_critics: int = 10, width: int = 512, depth: int = 4,
                 layer_norm: bool = True, init: Init = "lecun_normal"):
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.net = EnsembleMLP(num_critics, obs_dim + action_dim, 1, width, depth, layer_norm, init)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        return self.net(torch.cat([obs, action.flatten(1)], dim=-1)).squeeze(-1)
