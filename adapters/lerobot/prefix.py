"""LeRobot flow VLAs whose state-only part is a vision-language prefix held as a per-layer KV cache.

``condition`` embeds the prefix (images, language, and the state where it lives there) once per state under
``no_grad`` into a KV cache; ``velocity`` runs only the action expert against it. Each velocity call builds a
fresh ``DynamicCache`` over the cached tensors: SmolVLA appends to and crops its cache in place, so a shared
cache object would make a second VJP differ from the first.

pi0 and pi0.5 (one PaliGemma-with-expert joint forward) and SmolVLA (a SmolVLM prefix, an expert alternating
cross- and self-attention) differ only in how the prefix is embedded and what the expert's denoise step takes.

With ``vlm_dtype="bfloat16"`` the cache is computed in bf16 under ``no_grad`` and cast once, at the end of
``condition``, to the expert's fp32 (exact: every value stays bf16-representable). pi0's expert attention
(transformers' Gemma) needs one dtype. Keeping it in bf16 and casting per velocity call would halve the stored
condition but make a fresh fp32 copy per call, which the graph of every tracked rollout step / VJP keeps alive
(T copies instead of one) and which the reference's T-times tiled call adds on top of the tile.

Gradient checkpointing recomputes per expert layer: pi0 / pi0.5 each Gemma-expert decoder layer; SmolVLA,
whose layer loop interleaves the VLM and the expert inside lerobot's forward, each layer's attention half
(``forward_attn_layer`` / ``forward_cross_attn_layer``) and the expert's MLP. Layers that append the suffix
K/V to the cache get their cache slot put back before a recompute, so it sees the cache the forward saw.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from trqam_sdk.adapters.lerobot.base import (
    TOKEN_MASK,
    TOKENS,
    LeRobotFlowPolicy,
    _recompute,
    checkpoint_module,
    checkpointed_forward,
)


def _with_cache_slot(cache: Any, layer_idx: int, fn: Any) -> Any:
    """``fn`` that first puts cache slot ``layer_idx`` back as it is now (a recompute then sees the prefix-only
    slot the forward saw, not the one the forward appended to)."""
    if cache is None or layer_idx >= len(cache.layers):
        return fn
    slot = cache.layers[layer_idx]
    saved = slot.keys, slot.values

    def run(*a: Any) -> Any:
        slot.keys, slot.values = saved
        return fn(*a)
    return run


def _checkpointed_decoder_layer(self: Any, hidden_states: Tensor, **kwargs: Any) -> Any:
    """A transformers decoder layer (pi0's Gemma expert) recomputed in the backward; it appends to its cache."""
    fwd = _with_cache_slot(kwargs.get("past_key_values"), self.self_attn.layer_idx,
                           lambda h: type(self).forward(self, h, **kwargs))
    return _recompute(fwd, hidden_states)


def _checkpointed_attn_layer(self: Any, model_layers: Any, inputs_embeds: Any, layer_idx: int, *args: Any,
                             **kwargs: Any) -> Any:
    """SmolVLA's ``forward_attn_layer`` (self-attention, appends the suffix K/V) recomputed in the backward."""
    fwd = _with_cache_slot(kwargs.get("past_key_values"), layer_idx, lambda e: type(self).forward_attn_layer(
        self, model_layers, e, layer_idx, *args, **kwargs))
    return _recompute(fwd, inputs_embeds)


def _checkpointed_cross_attn_layer(self: Any, model_layers: Any, inputs_embeds: Any, layer_idx: int, *args: Any,
                                   **kwargs: Any) -> Any:
    """SmolVLA's ``forward_cross_attn_layer`` (reads the cache only) recomputed in the backward."""
    return _recompute(lambda e: type(self).forward_cross_attn_layer(self, model_layers, e, layer_idx, *args,
                                                                    **kwargs), inputs_embeds)


class KVPrefixPolicy(LeRobotFlowPolicy):
    """A LeRobot policy with a cached prefix: subclasses implement :meth:`_prefix_kv` (and :meth:`_denoise`,
    :meth:`_suffix_inputs` when the expert takes more than the cache)."""

    def _images(self, obs: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.policy._preprocess_images(obs)

    def _prefix_kv(self, obs: dict[str, Tensor]) -> tuple[Any, Tensor]:
        """Run the frozen VLM over the prefix: (DynamicCache, prefix pad mask)."""
        raise NotImplementedError

    @torch.no_grad()
    def condition(self, obs: dict[str, Tensor]) -> dict[str, Any]:
        """The prefix KV cache (per layer keys/values), its pad mask, and the suffix-side state for pi0."""
        self.check_observations(obs)
        obs = self.float_images(obs)  # uint8 rows (the SDK's storage) → float / 255, as lerobot's loader gives
        kv, pad = self._prefix_kv(obs)
        dtype = self.expert_dtype  # a bf16 prefix's cache is cast once here, not in every velocity call
        cond: dict[str, Any] = {"keys": [layer.keys.to(dtype) for layer in kv.layers],
                                "values": [layer.values.to(dtype) for layer in kv.layers], "pad": pad}
        cond.update(self._suffix_inputs(obs))
        return cond

    def _suffix_inputs(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def _denoise(self, cond: dict[str, Any], cache: Any, x: Tensor, t: Tensor) -> Tensor:
        return self.policy.model.denoise_step(prefix_pad_masks=cond["pad"], past_key_values=cache, x_t=x,
                                              timestep=t)

    def _native_velocity(self, cond: dict[str, Any], padded: Tensor, t_native: Tensor) -> Tensor:
        """The expert's denoise step against a fresh cache over the condition's tensors (in the expert's dtype:
        ``.to`` is a no-op for a condition from :meth:`condition`)."""
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(tuple((k.to(padded.dtype), v.to(padded.dtype), None)
                                   for k, v in zip(cond["keys"], cond["values"], strict=True)))
        return self._denoise(cond, cache, padded, t_native)


class _PiFamily(KVPrefixPolicy):
    vlm_module = "paligemma_with_expert.paligemma"

    def _prefix_kv(self, obs: dict[str, Tensor]) -> tuple[Any, Tensor]:
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

        model = self.policy.model
        images, img_masks = self._images(obs)
        embs, pad, att = model.embed_prefix(images, img_masks, obs[TOKENS], obs[TOKEN_MASK])
        embs = embs.to(self.prefix_dtype)  # lerobot hands the image features back in the images' dtype
        pwe = model.paligemma_with_expert
        pwe.paligemma.model.language_model.config._attn_implementation = "eager"
        pwe.gemma_expert.model.config._attn_implementation = "eager"
        _, kv = pwe.forward(attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad, att)),
                            position_ids=torch.cumsum(pad, dim=1) - 1, past_key_values=None,
                            inputs_embeds=[embs, None], use_cache=True)
        return kv, pad

    def _checkpoint_expert(self) -> None:
        for layer in self.policy.model.paligemma_with_expert.gemma_expert.model.layers:
            checkpoint_module(layer, _checkpointed_decoder_layer)


class LeRobotPI0Policy(_PiFamily):
    """pi0: the (padded, normalised) state is a token of the action expert's suffix, so it rides in the
    condition and ``state_proj`` trains with the expert."""

    type_name = "lerobot_pi0"
    lerobot_type = "pi0"
    expert_modules = ("paligemma_with_expert.gemma_expert.model", "action_in_proj", "action_out_proj",
                      "action_time_mlp_in", "action_time_mlp_out", "state_proj")

    def _suffix_inputs(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"state": self.policy.prepare_state(obs)}

    def _denoise(self, cond: dict[str, Any], cache: Any, x: Tensor, t: Tensor) -> Tensor:
        return self.policy.model.denoise_step(state=cond["state"], prefix_pad_masks=cond["pad"],
                                              past_key_values=cache, x_t=x, timestep=t)


class LeRobotPI05Policy(_PiFamily):
    """pi0.5: the state is discretised into the prompt by the pre-processor (so it is in the cached prefix);
    time enters the expert through adaRMS."""

    type_name = "lerobot_pi05"
    lerobot_type = "pi05"
    expert_modules = ("paligemma_with_expert.gemma_expert.model", "action_in_proj", "action_out_proj", "time_mlp_in",
                      "time_mlp_out")


class LeRobotSmolVLAPolicy(KVPrefixPolicy):
    """SmolVLA: the state is a prefix token (``state_proj`` is frozen with the VLM); the expert alternates
    cross-attention to the prefix KV and self-attention that appends to (then crops) the cache."""

    type_name = "lerobot_smolvla"
    lerobot_type = "smolvla"
    vlm_module = "vlm_with_expert.vlm"
    expert_modules = ("vlm_with_expert.lm_expert", "action_in_proj", "action_out_proj", "action_time_mlp_in",
                      "action_time_mlp_out")

    def _images(self, obs: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.policy.prepare_images(obs)

    def _prefix_kv(self, obs: dict[str, Tensor]) -> tuple[Any, Tensor]:
        from lerobot.policies.common.vla_utils import make_att_2d_masks

        model = self.policy.model
        images, img_masks = self._images(obs)
        state = self.policy.prepare_state(obs).to(self.prefix_dtype)  # state_proj is prefix-side here
        embs, pad, att = model.embed_prefix(images, img_masks, obs[TOKENS], obs[TOKEN_MASK], state=state)
        _, kv = model.vlm_with_expert.forward(attention_mask=make_att_2d_masks(pad, att),
                                              position_ids=torch.cumsum(pad, dim=1) - 1, past_key_values=None,
                                              inputs_embeds=[embs, None], use_cache=True)
        return kv, pad

    def _checkpoint_expert(self) -> None:
        vwe = self.policy.model.vlm_with_expert
        checkpoint_module(vwe, _checkpointed_attn_layer, "forward_attn_layer")
        checkpoint_module(vwe, _checkpointed_cross_attn_layer, "forward_cross_attn_layer")
        for layer in vwe.lm_expert.layers:
            checkpoint_module(layer.mlp, checkpointed_forward)
