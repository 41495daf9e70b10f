"""LeRobot pi0 / pi0.5 / SmolVLA at their *released* shapes with random weights, built offline.

Nothing can be downloaded here, so the real-size models are built from configs with lerobot's own classes —
the same classes (and, after ``save_pretrained``, the same loading path) as a Hub checkpoint:

* SmolVLA reads its VLM from ``vlm_model_name``: :func:`build_smolvlm2_500m_folder` writes a
  SmolVLM2-500M-Video-Instruct-shaped ``SmolVLMConfig`` and processor (with a small local tokenizer: the
  *vocabulary size* stays the model's 49 280) to a folder; lerobot's ``SmolVLAConfig`` defaults do the rest
  (``num_vlm_layers=16`` of the 32 text layers, ``expert_width_multiplier=0.75``, cross-attention every other
  layer).
* pi0 / pi0.5 build PaliGemma from lerobot's variant names (``gemma_2b`` VLM + SigLIP so400m, ``gemma_300m``
  expert): at real size nothing is patched; only the tokenizer name lerobot hard-codes
  (``google/paligemma-3b-pt-224``) is resolved to a local folder.

``device="meta"`` builds without allocating (``torch.device("meta")``): shapes and parameter counts of all
three in seconds. Processors are always built on CPU (they hold the normalisation statistics).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from trqam_sdk.testing.tiny_lerobot import (
    IMAGE_KEY,
    build_tiny_lerobot,
    build_tokenizer,
    default_stats,
    local_tokenizer,
    policy_features,
)

KINDS = ("smolvla", "pi0", "pi05")
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"  # the name lerobot's pi0 / pi0.5 processors hard-code

# SmolVLM2-500M-Video-Instruct's text decoder (the SmolLM2-360M-shaped decoder). Sources: the Hub config.json of
# HuggingFaceTB/SmolVLM2-500M-Video-Instruct as mirrored in the `search` docs corpus (vocab 49280, 32 layers, 15
# heads / 5 KV heads, rope 1e5, rms eps 1e-5) and the SmolVLM-500M text_config (hidden 960, intermediate 2560,
# head_dim 64 = 960 / 15, max positions 8192). tie_word_embeddings False (transformers' SmolVLMConfig default):
# with an untied lm_head the model has 507 M parameters = 2.03 GB in fp32, the size of the Hub's model.safetensors.
SMOLVLM2_500M_TEXT: dict[str, Any] = dict(
    hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
    head_dim=64, vocab_size=49280, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=False)
# Its vision tower: SigLIP base patch16/512 (the "93M-parameter SigLIP base patch-16/512" of the SmolVLM-256M/500M
# release blog): hidden 768, 12 layers, 12 heads, MLP 3072, 512 px images, 16 px patches.
SMOLVLM2_500M_VISION: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=512,
    patch_size=16)
# Pixel shuffle 4: (512 / 16)² = 1024 patches → 1024 / 4² = 64 tokens per image, the Hub processor_config.json's
# image_seq_len of 64.
SMOLVLM2_500M_SCALE_FACTOR = 4
SMOLVLM_SPECIAL = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                   "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>",
                   "video_token": "<video>"}
NATIVE_IMAGE = {"smolvla": 512, "pi0": 224, "pi05": 224}  # SmolVLAConfig.resize_imgs_with_padding, pi image_resolution

RELEASED_PARAMS = {  # what the releases state (rounded), for the reports
    "smolvla": {"total": 450e6, "expert": 100e6},  # SmolVLA paper / model card: 0.45 B, ~100 M action expert
    "pi0": {"total": 3.3e9, "expert": 300e6},      # openpi: PaliGemma 3 B + 300 M action expert
    "pi05": {"total": 3.3e9, "expert": 300e6},
}


def build_smolvlm2_500m_folder(folder: str | Path) -> Path:
    """A SmolVLM2-500M-Video-Instruct-shaped config + processor (local word-level tokenizer) in ``folder``."""
    from transformers import (
        AutoTokenizer,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(build_tokenizer(folder / "_tokenizer", SMOLVLM_SPECIAL)))
    image = SMOLVLM2_500M_VISION["image_size"]
    cfg = SmolVLMConfig(text_config=dict(SMOLVLM2_500M_TEXT), vision_config=dict(SMOLVLM2_500M_VISION),
                        scale_factor=SMOLVLM2_500M_SCALE_FACTOR, tie_word_embeddings=False,
                        image_token_id=tok.convert_tokens_to_ids("<image>"))
    cfg.save_pretrained(str(folder))
    seq = (image // SMOLVLM2_500M_VISION["patch_size"] // SMOLVLM2_500M_SCALE_FACTOR) ** 2
    proc = SmolVLMProcessor(SmolVLMImageProcessor(size={"longest_edge": image}, max_image_size={"longest_edge": image}),
                            tok, SmolVLMVideoProcessor(), image_seq_len=seq)
    proc.save_pretrained(str(folder))
    (folder / "RANDOM_REAL_SIZE_MODEL.json").write_text(json.dumps(
        {"note": "SmolVLM2-500M-Video-Instruct-shaped config with a local test tokenizer; random weights"}))
    return folder


def image_keys(n_images: int) -> list[str]:
    """Camera keys: the tiny builders' one camera first, then ``observation.images.cam1`` …"""
    return [IMAGE_KEY] + [f"observation.images.cam{i}" for i in range(1, n_images)]


def _stats(keys: list[str], state_dim: int, action_dim: int) -> dict[str, dict[str, torch.Tensor]]:
    stats = default_stats(state_dim, action_dim, keys[0])
    for k in keys[1:]:
        stats[k] = dict(stats[keys[0]])
    return stats


def build_lerobot(kind: str, root: str | Path, size: str = "real", *, device: str = "cpu", chunk_size: int = 50,
                  state_dim: int = 6, action_dim: int = 6, image_size: int | None = None, n_images: int = 1,
                  seed: int = 0) -> tuple[Any, Any, Any]:
    """A random-weight lerobot ``kind`` policy at ``size`` ("real": the released shapes; "tiny": the test models of
    :func:`~trqam_sdk.testing.tiny_lerobot.build_tiny_lerobot`) and its pre/post-processors.

    ``root`` receives the tokenizer (and SmolVLA's VLM folder): keep it while the policy (or a checkpoint saved
    from it, whose config names the folder) is used. ``image_size`` is the camera resolution (default: the
    model's own, 512 for SmolVLA, 224 for pi); ``state_dim`` / ``action_dim`` default to a 6-DoF arm (SO-100,
    SmolVLA's data). Actions are MIN_MAX-normalised (the SDK's box), pi0.5 keeps its QUANTILES.
    ``device="meta"`` allocates nothing (shapes and parameter counts only; not for running).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown lerobot policy kind {kind!r}; choose one of {KINDS}")
    if device not in ("cpu", "meta"):
        raise ValueError(f"device must be 'cpu' or 'meta', got {device!r}")
    root = Path(root)
    if size == "tiny":
        if n_images != 1 or device != "cpu":
            raise ValueError("size='tiny' builds the one-camera CPU test models: n_images=1, device='cpu'")
        return build_tiny_lerobot(kind, root, chunk_size=chunk_size, state_dim=state_dim, action_dim=action_dim,
                                  image_size=image_size or 64, seed=seed)
    if size != "real":
        raise ValueError(f"size must be 'real' or 'tiny', got {size!r}")
    from lerobot.configs import NormalizationMode
    from lerobot.policies.factory import make_pre_post_processors

    torch.manual_seed(seed)
    keys = image_keys(n_images)
    inputs, outputs = policy_features(state_dim, action_dim, image_size or NATIVE_IMAGE[kind], keys)
    common = dict(chunk_size=chunk_size, n_action_steps=chunk_size, input_features=inputs, output_features=outputs,
                  device="cpu")
    norm = {"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MIN_MAX}
    tok: Path | None = None
    if kind == "smolvla":
        from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy

        vlm = build_smolvlm2_500m_folder(root / "smolvlm2-500m")
        # lerobot's defaults are SmolVLA's released shape: 16 of 32 VLM layers, expert width 0.75 × 960 = 720
        cfg = SmolVLAConfig(**common, vlm_model_name=str(vlm), load_vlm_weights=False, normalization_mapping=norm)
        policy_cls: Any = SmolVLAPolicy
        tokenizer_ctx: Any = contextlib.nullcontext()
    else:
        tok = build_tokenizer(root / "tokenizer")
        if kind == "pi0":
            from lerobot.policies.pi0 import PI0Config, PI0Policy

            cfg, policy_cls = PI0Config(**common, dtype="float32", normalization_mapping=norm), PI0Policy
        else:
            from lerobot.policies.pi05 import PI05Config, PI05Policy

            cfg, policy_cls = PI05Config(**common, dtype="float32"), PI05Policy
        tokenizer_ctx = local_tokenizer(PALIGEMMA_TOKENIZER, tok)
    if device == "meta":
        cfg.device = "meta"  # lerobot moves the model to config.device at the end of __init__
        with torch.device("meta"):
            policy = policy_cls(cfg)
        cfg.device = "cpu"
    else:
        policy = policy_cls(cfg)
    with tokenizer_ctx:
        pre, post = make_pre_post_processors(cfg, dataset_stats=_stats(keys, state_dim, action_dim))
    if tok is not None:
        for step in pre.steps:  # the saved processor must name the local tokenizer, not the Hub one
            if hasattr(step, "tokenizer_name"):
                step.tokenizer_name = str(tok)
    return policy.eval(), pre, post


def parameter_counts(policy: Any) -> dict[str, int]:
    """Parameters of a lerobot pi0 / pi0.5 / SmolVLA policy by part (unique tensors; works on meta).

    ``lm_heads`` are the language-model heads lerobot builds but no action path uses (untied in lerobot 0.6.1);
    ``used`` excludes them — the number to compare with the released sizes.
    """
    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    model = policy.model
    total = count(policy)
    if hasattr(model, "vlm_with_expert"):
        vlm, expert_lm = model.vlm_with_expert.vlm, model.vlm_with_expert.lm_expert
        heads = [vlm.lm_head]
        vision = vlm.model.vision_model
    else:
        pwe = model.paligemma_with_expert
        vlm, expert_lm = pwe.paligemma, pwe.gemma_expert.model
        heads = [pwe.paligemma.lm_head, pwe.gemma_expert.lm_head]
        vision = vlm.model.vision_tower
    lm_heads = sum(count(h) for h in heads)
    projections = sum(count(m) for n, m in model.named_children() if n.startswith(("action_", "time_", "state_")))
    return {"total": total, "used": total - lm_heads, "lm_heads": lm_heads, "vlm": count(vlm),
            "vision": count(vision), "expert": count(expert_lm),
            "expert_with_projections": count(expert_lm) + projections}
