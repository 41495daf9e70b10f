"""Critics over dict observations: a Q ensemble on top of a pluggable observation encoder.

The agent only ever calls ``critic(obs, chunk) -> (K, B)``; :class:`EncodedQEnsemble` keeps that signature for
observations that are not a flat vector (a VLA's images + state + tokens) by running ``encoder(obs)`` first.

Trade-off (docs/vla.md): a *small trainable encoder* (this file's :class:`ImageStateEncoder`) is cheap — the
critic is evaluated on s and s' every update and differentiated w.r.t. the chunk for the adjoint — and learns
features relevant to value, but sees no language. The *frozen VLM prefix features* would give the critic the
VLA's own vision-language understanding for free at inference, but cost a VLM forward per critic call and a
large input to the ensemble, and cannot adapt to the reward. We ship the trainable encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trqam_sdk.networks.mlp import QEnsemble


def unit_image(img: Tensor, key: str = "image") -> Tensor:
    """An image as float in [0, 1]: uint8 → ``float32 / 255`` (bit-identical to torchvision's ``ToTensor`` and to
    lerobot's ``preprocess_observation``, so a row stored as uint8 gives the model exactly the float it was made
    from); a float image is returned unchanged. Images are stored as uint8 (4× smaller) and converted only here,
    where a network reads them."""
    if img.dtype == torch.uint8:
        return img.to(torch.float32).div(255)
    if not img.is_floating_point():
        raise TypeError(f"observations[{key!r}]: images must be uint8 or float in [0, 1], got {img.dtype}")
    return img


class EncodedQEnsemble(nn.Module):
    """Q_k(encoder(s), chunk) for k = 1..K: (K, B). The encoder trains with the critic (one loss)."""

    def __init__(self, encoder: nn.Module, feature_dim: int, action_dim: int, num_critics: int = 10,
                 width: int = 512, depth: int = 4, layer_norm: bool = True):
        super().__init__()
        self.encoder = encoder
        self.q = QEnsemble(feature_dim, action_dim, num_critics, width, depth, layer_norm)

    def forward(self, obs: Any, action: Tensor) -> Tensor:
        return self.q(self.encoder(obs), action)


class ImageStateEncoder(nn.Module):
    """Per camera a two-layer strided conv + global average pool; concatenated with the state; Linear → LN.

    Expects lerobot's pre-processed observations: images (B, 3, H, W), uint8 or float in [0, 1] (the same image
    gives the same features either way), and the normalised state.
    """

    def __init__(self, image_keys: list[str], state_key: str | None, state_dim: int, feature_dim: int = 64,
                 channels: int = 16):
        super().__init__()
        if not image_keys and not state_key:
            raise ValueError("ImageStateEncoder needs at least one image key or a state key")
        self.image_keys, self.state_key = list(image_keys), state_key
        self.convs = nn.ModuleList(nn.Sequential(
            nn.Conv2d(3, channels, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten()) for _ in self.image_keys)
        in_dim = 2 * channels * len(self.image_keys) + (state_dim if state_key else 0)
        self.head = nn.Sequential(nn.Linear(in_dim, feature_dim), nn.LayerNorm(feature_dim))
        self.feature_dim = feature_dim

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        missing = [k for k in [*self.image_keys, *([self.state_key] if self.state_key else [])] if k not in obs]
        if missing:
            raise ValueError(f"critic observations lack {missing}; has {sorted(obs)}")
        parts = [conv(unit_image(obs[k], k).float() * 2.0 - 1.0)
                 for conv, k in zip(self.convs, self.image_keys, strict=True)]
        if self.state_key:
            parts.append(obs[self.state_key].float())
        return self.head(torch.cat(parts, dim=-1))


def vla_critic(policy: Any, num_critics: int = 2, width: int = 128, depth: int = 2, feature_dim: int = 64,
               layer_norm: bool = True) -> EncodedQEnsemble:
    """The default critic for a LeRobot adapter: :class:`ImageStateEncoder` on its cameras and state."""
    state_key = "observation.state" if getattr(policy, "state_dim", None) else None
    encoder = ImageStateEncoder(policy.image_keys, state_key, policy.state_dim or 0, feature_dim)
    return EncodedQEnsemble(encoder, feature_dim, policy.spec.flat_dim, num_critics, width, depth, layer_norm)
