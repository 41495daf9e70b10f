"""A small VLA-shaped adapter: a frozen prefix encoder + a transformer action expert over a cached prefix.

It has the structure of pi0 / SmolVLA at toy scale: ``condition`` runs the (frozen) prefix encoder once per
state under no_grad and returns per-layer key/value caches; ``velocity`` runs only the action expert, whose
chunk tokens attend to [prefix KV ; own tokens]. It exists to prove the protocol on a cached-prefix model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trqam_sdk.adapters.base import ActionSpec, FlowPolicy


@dataclass
class PrefixTransformerConfig:
    obs_dim: int
    horizon: int
    action_dim: int
    width: int = 64
    heads: int = 4
    layers: int = 2
    prefix_tokens: int = 4


class _ExpertLayer(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.prefix_kv = nn.Linear(d, 2 * d)  # projects prefix features into this layer's cache

    def split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, k_pre: Tensor, v_pre: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        k = torch.cat([k_pre, self.split(k)], dim=2)
        v = torch.cat([v_pre, self.split(v)], dim=2)
        att = F.scaled_dot_product_attention(self.split(q), k, v)
        x = x + self.proj(att.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


class PrefixTransformerPolicy(FlowPolicy):
    """Transformer action expert attending to a KV cache of a frozen prefix encoder."""

    type_name = "prefix_transformer"

    def __init__(self, config: PrefixTransformerConfig):
        super().__init__()
        self.config = c = config
        self.spec = ActionSpec(c.horizon, c.action_dim)
        d = c.width
        self.prefix_encoder = nn.Sequential(nn.Linear(c.obs_dim, d * c.prefix_tokens), nn.GELU())
        self.prefix_encoder.requires_grad_(False)  # the "VLM" is frozen
        self.action_in = nn.Linear(c.action_dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.pos = nn.Parameter(torch.randn(1, c.horizon, d) * 0.02)
        self.blocks = nn.ModuleList(_ExpertLayer(d, c.heads) for _ in range(c.layers))
        self.action_out = nn.Linear(d, c.action_dim)
        for blk in self.blocks:  # the prefix cache belongs to the frozen side
            blk.prefix_kv.requires_grad_(False)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PrefixTransformerPolicy:
        return cls(PrefixTransformerConfig(**config))

    @torch.no_grad()
    def condition(self, obs: Tensor) -> dict[str, list[Tensor]]:
        """Embed the prefix once and project it into every layer's key/value cache."""
        if obs.ndim != 2 or obs.shape[1] != self.config.obs_dim:
            raise ValueError(f"observations: expected (B, {self.config.obs_dim}), got {tuple(obs.shape)}")
        feats = self.prefix_encoder(obs).view(obs.shape[0], self.config.prefix_tokens, self.config.width)
        ks, vs = [], []
        for blk in self.blocks:
            k, v = blk.prefix_kv(feats).chunk(2, dim=-1)
            ks.append(blk.split(k))
            vs.append(blk.split(v))
        return {"k": ks, "v": vs}

    def _time_embedding(self, t: Tensor) -> Tensor:
        half = self.config.width // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        ang = t.to(torch.float32)[:, None] * freqs[None] * 2 * math.pi
        return self.time_mlp(torch.cat([ang.sin(), ang.cos()], dim=-1).to(self.pos.dtype))

    def velocity(self, cond: dict[str, list[Tensor]], x: Tensor, t: Tensor) -> Tensor:
        c = self.config
        tok = self.action_in(x.view(-1, c.horizon, c.action_dim)) + self.pos
        tok = tok + self._time_embedding(t)[:, None]
        for blk, k_pre, v_pre in zip(self.blocks, cond["k"], cond["v"], strict=True):
            tok = blk(tok, k_pre, v_pre)
        return self.action_out(tok).flatten(1)
