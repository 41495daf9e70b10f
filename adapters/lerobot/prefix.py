"""LeRobot flow VLAs whose state-only part is a vision-language prefix held as a per-layer KV cache.

``condition`` embeds the prefix (images, language, and the state where it lives there) once per state under
``no_grad`` into a KV cache; ``velocity`` runs only the action expert against it. Each velocity call builds a
fresh ``DynamicCache`` over the cached tensors: SmolVLA appends to and crops its cache in place, so a shared
cache object would make a second VJP differ from the first.

pi0 and pi0.5 (one PaliGemma-with-expert joint forward) and SmolVLA (a SmolVLM prefix, an expert alternating
cross- and self-attention) differ only in how the prefix is embedded and what the expert's denoise step takes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from trqam_sdk.adapters.lerobot.base import TOKEN_MASK, TOKENS, LeRobotFlowPolicy


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
        cond: dict[str, Any] = {"keys": [layer.keys for layer in kv.layers],
                                "values": [layer.values for layer in kv.layers], "pad": pad}
        cond.update(self._suffix_inputs(obs))
        return cond

    def _suffix_inputs(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def _denoise(self, cond: dict[str, Any], cache: Any, x: Tensor, t: Tensor) -> Tensor:
        return self.policy.model.denoise_step(prefix_pad_masks=cond["pad"], past_key_values=cache, x_t=x,
                                              timestep=t)

    def _native_velocity(self, cond: dict[str, Any], padded: Tensor, t_native: Tensor) -> Tensor:
        """The expert's denoise step against a fresh cache over the condition's tensors."""
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(tuple((k, v, None) for k, v in zip(cond["keys"], cond["values"], strict=True)))
        return self._denoise(cond, cache, padded, t_native)


class _PiFamily(KVPrefixPolicy):
    vlm_module = "paligemma_with_expert.paligemma"

    def _prefix_kv(self, obs: dict[str, Tensor]) -> tuple[Any, Tensor]:
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

        model = self.policy.model
        images, img_masks = self._images(obs)
        embs, pad, att = model.embed_prefix(images, img_masks, obs[TOKENS], obs[TOKEN_MASK])
        pwe = model.paligemma_with_expert
        pwe.paligemma.model.language_model.config._attn_implementation = "eager"
        pwe.gemma_expert.model.config._attn_implementation = "eager"
        _, kv = pwe.forward(attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad, att)),
                            position_ids=torch.cumsum(pad, dim=1) - 1, past_key_values=None,
                            inputs_embeds=[embs, None], use_cache=True)
        return kv, pad


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
        state = self.policy.prepare_state(obs)
        embs, pad, att = model.embed_prefix(images, img_masks, obs[TOKENS], obs[TOKEN_MASK], state=state)
        _, kv = model.vlm_with_expert.forward(attention_mask=make_att_2d_masks(pad, att),
                                              position_ids=torch.cumsum(pad, dim=1) - 1, past_key_values=None,
                                              inputs_embeds=[embs, None], use_cache=True)
        return kv, pad
