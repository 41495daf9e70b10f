"""Tiny random-weight LeRobot pi0 / pi0.5 / SmolVLA checkpoints, built offline (test and benchmark tooling).

Real checkpoints come from the Hub; here nothing can be downloaded, so these builders make architecturally
faithful miniatures with lerobot's own classes:

* pi0 / pi0.5 name their Gemma sizes by variant (``gemma_2b`` / ``gemma_300m``) and lerobot validates those
  names, so :func:`tiny_pi_architecture` temporarily redefines what the two variants mean (2 layers, 8 heads of
  dim 8) and shrinks the SigLIP tower. A tiny pi checkpoint must be *built and loaded* inside that context —
  outside it lerobot would build the full 2B model and fail on the weights' shapes (loudly).
* SmolVLA reads its VLM from ``vlm_model_name``: we write a tiny ``SmolVLMConfig`` and processor to a folder.
* Both need a tokenizer; a small word-level one is written locally (the vocabulary stays the model's).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

IMAGE_KEY = "observation.images.top"
WORDS = ["pick", "the", "cube", "place", "it", "on", "plate", "push", "block", "left", "right", "task", "state",
         "action", ":", ";", ","] + [str(i) for i in range(256)]


def build_tokenizer(folder: Path, named_special: dict[str, str] | None = None,
                    extra_words: Sequence[str] = ()) -> Path:
    """A word-level fast tokenizer (whitespace split, known words, digits 0-255) saved to ``folder``.

    ``named_special`` adds model-specific special tokens reachable as attributes (``tok.image_token_id``);
    ``extra_words`` extends the vocabulary (after the default words, so their ids are unchanged).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<bos>", "<eos>", *(named_special or {}).values()]
    words = special + WORDS
    words += [w for w in dict.fromkeys(extra_words) if w not in set(words)]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>", extra_special_tokens=named_special or None)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


@contextlib.contextmanager
def tiny_pi_architecture(vision_width: int = 32, patch_size: int = 8) -> Iterator[None]:
    """While active, lerobot's pi0 / pi0.5 build tiny Gemma backbones and a one-layer SigLIP.

    ``gemma_2b`` (the VLM) becomes width 64 and ``gemma_300m`` (the action expert) width 32; both keep 8 heads
    (lerobot's joint attention hard-codes 8) of dim 8, one KV head, 2 layers.
    """
    from lerobot.policies.pi0 import modeling_pi0
    from lerobot.policies.pi05 import modeling_pi05

    def gemma(variant: str) -> Any:
        sizes = {"gemma_2b": (64, 128), "gemma_300m": (32, 64)}
        if variant not in sizes:
            raise ValueError(f"unknown variant {variant!r}")
        width, mlp = sizes[variant]
        return modeling_pi0.GemmaConfig(width=width, depth=2, mlp_dim=mlp, num_heads=8, num_kv_heads=1, head_dim=8)

    saved = {}
    for mod in (modeling_pi0, modeling_pi05):
        real_vlm = mod.PaliGemmaForConditionalGenerationWithPiGemma

        def small_vlm(config: Any, _real: Any = real_vlm) -> Any:
            v = config.vision_config
            v.hidden_size, v.intermediate_size, v.num_hidden_layers = vision_width, 2 * vision_width, 1
            v.num_attention_heads, v.patch_size = 2, patch_size
            v.projection_dim = config.text_config.hidden_size
            config.projection_dim = config.text_config.hidden_size
            return _real(config=config)

        saved[mod] = (mod.get_gemma_config, real_vlm)
        mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma = gemma, small_vlm
    try:
        yield
    finally:
        for mod, (cfg_fn, vlm) in saved.items():
            mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma = cfg_fn, vlm


@contextlib.contextmanager
def local_tokenizer(name: str, folder: Path) -> Iterator[None]:
    """Resolve the tokenizer ``name`` that lerobot's processor factories hard-code to a local folder."""
    from lerobot.processor import tokenizer_processor

    real = tokenizer_processor.AutoTokenizer

    class _Local:
        @staticmethod
        def from_pretrained(path: str, *a: Any, **kw: Any) -> Any:
            return real.from_pretrained(str(folder) if path == name else path, *a, **kw)

    tokenizer_processor.AutoTokenizer = _Local
    try:
        yield
    finally:
        tokenizer_processor.AutoTokenizer = real


def policy_features(state_dim: int, action_dim: int, image_size: int, image_keys: Sequence[str] = (IMAGE_KEY,)
                    ) -> tuple[dict, dict]:
    """LeRobot input features (the cameras, then the state) and the action feature of a synthetic policy."""
    from lerobot.configs import FeatureType, PolicyFeature

    inputs = {k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, image_size, image_size)) for k in image_keys}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))
    return inputs, {"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}


def default_stats(state_dim: int, action_dim: int, image_key: str = IMAGE_KEY
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """Normalisation statistics for synthetic data: state in N(0, 1)-ish, actions in [-2, 2]."""
    def block(dim: int, scale: float) -> dict[str, torch.Tensor]:
        ones = torch.ones(dim)
        return {"mean": 0 * ones, "std": scale * ones / 2, "min": -scale * ones, "max": scale * ones,
                "q01": -scale * ones, "q99": scale * ones}
    return {"observation.state": block(state_dim, 2.0), "action": block(action_dim, 2.0),
            image_key: {"mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)}}


def build_tiny_lerobot(kind: str, root: str | Path, *, chunk_size: int = 8, state_dim: int = 4, action_dim: int = 3,
                       image_size: int = 32, seed: int = 0, image_key: str = IMAGE_KEY) -> tuple[Any, Any, Any]:
    """A tiny random-weight lerobot ``kind`` ("pi0", "pi05", "smolvla") policy and its pre/post-processors.

    ``root`` receives the tokenizer (and SmolVLA's VLM folder). Actions are MIN_MAX-normalised to [-1, 1]
    (the SDK's action box); pi0.5 keeps its QUANTILES (also [-1, 1]). ``image_key`` names the one camera
    (``"observation.image"`` for LeRobot's single-camera envs such as MetaWorld).
    """
    from lerobot.configs import NormalizationMode
    from lerobot.policies.factory import make_pre_post_processors

    root = Path(root)
    torch.manual_seed(seed)
    inputs, outputs = policy_features(state_dim, action_dim, image_size, (image_key,))
    common = dict(chunk_size=chunk_size, n_action_steps=chunk_size, input_features=inputs, output_features=outputs,
                  tokenizer_max_length=16, device="cpu")
    norm = {"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MIN_MAX}
    stats = default_stats(state_dim, action_dim, image_key)
    if kind in ("pi0", "pi05"):
        tok = build_tokenizer(root / "tokenizer")
        with tiny_pi_architecture(), local_tokenizer("google/paligemma-3b-pt-224", tok):
            if kind == "pi0":
                from lerobot.policies.pi0 import PI0Config, PI0Policy
                cfg = PI0Config(**common, dtype="float32", image_resolution=(image_size, image_size),
                                normalization_mapping=norm)
                policy = PI0Policy(cfg)
            else:
                from lerobot.policies.pi05 import PI05Config, PI05Policy
                cfg = PI05Config(**common, dtype="float32", image_resolution=(image_size, image_size))
                policy = PI05Policy(cfg)
            pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
        for step in pre.steps:  # the saved processor must name the local tokenizer, not the Hub one
            if hasattr(step, "tokenizer_name"):
                step.tokenizer_name = str(tok)
    elif kind == "smolvla":
        from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy
        vlm = build_smolvlm_folder(root / "smolvlm")
        cfg = SmolVLAConfig(**common, vlm_model_name=str(vlm), load_vlm_weights=False, num_vlm_layers=2,
                            resize_imgs_with_padding=(image_size, image_size), normalization_mapping=norm,
                            num_steps=10)
        policy = SmolVLAPolicy(cfg)
        pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    else:
        raise ValueError(f"unknown lerobot policy kind {kind!r}; choose pi0, pi05 or smolvla")
    return policy.eval(), pre, post


def build_smolvlm_folder(folder: Path, image_size: int = 32) -> Path:
    """A 2-layer SmolVLM config plus a processor (local tokenizer, image processor) in ``folder``."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = build_tokenizer(folder / "_tokenizer", {
        "image_token": "<image>", "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>", "video_token": "<video>"})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=len(tok), max_position_embeddings=512)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=8)
    cfg = SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=2,
                        image_token_id=tok.convert_tokens_to_ids("<image>"))
    cfg.save_pretrained(str(folder))
    proc = SmolVLMProcessor(SmolVLMImageProcessor(size={"longest_edge": image_size},
                                                  max_image_size={"longest_edge": image_size}),
                            tok, SmolVLMVideoProcessor(), image_seq_len=4)
    proc.save_pretrained(str(folder))
    (folder / "TINY_TEST_MODEL.json").write_text(json.dumps({"note": "random tiny SmolVLM for tests"}))
    return folder


# A SmolVLM "size" is (text config, vision config); "tiny" is the test model of build_smolvlm_folder, "cpu" one
# big enough to learn a single MetaWorld task from 64 px images on 2 CPU cores in a few thousand steps.
SMOLVLM_SIZES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "tiny": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16),
             dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8)),
    "cpu": (dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32),
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=8)),
}


def metaworld_words() -> list[str]:
    """Every word of LeRobot's MetaWorld task descriptions (as written and lower-cased), for the tokenizer."""
    import re

    from lerobot.envs.metaworld import TASK_DESCRIPTIONS

    words = [w for d in TASK_DESCRIPTIONS.values() for w in re.findall(r"\w+|[^\w\s]+", d)]
    return list(dict.fromkeys(words + [w.lower() for w in words]))


def build_smolvlm(folder: Path, size: str = "tiny", image_size: int = 64,
                  extra_words: Sequence[str] = ()) -> Path:
    """A SmolVLM config of ``size`` (:data:`SMOLVLM_SIZES`) and its processor in ``folder``, for random init.

    The tokenizer also knows ``extra_words`` (pass :func:`metaworld_words` so that task strings are not all
    ``<unk>``). Unlike :func:`build_smolvlm_folder` the processor's image token count follows ``image_size``.
    """
    from transformers import (
        AutoTokenizer,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    if size not in SMOLVLM_SIZES:
        raise ValueError(f"unknown SmolVLM size {size!r}; choose one of {sorted(SMOLVLM_SIZES)}")
    text, vision = (dict(d) for d in SMOLVLM_SIZES[size])
    if image_size % (2 * vision["patch_size"]):
        raise ValueError(f"image_size {image_size} must be a multiple of {2 * vision['patch_size']} "
                         f"(patch {vision['patch_size']} × pixel-shuffle 2)")
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = build_tokenizer(folder / "_tokenizer", {
        "image_token": "<image>", "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>", "video_token": "<video>"}, extra_words)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    text.update(vocab_size=len(tok), max_position_embeddings=512)
    vision.update(image_size=image_size)
    cfg = SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=2,
                        image_token_id=tok.convert_tokens_to_ids("<image>"))
    cfg.save_pretrained(str(folder))
    seq = (image_size // vision["patch_size"] // 2) ** 2
    proc = SmolVLMProcessor(SmolVLMImageProcessor(size={"longest_edge": image_size},
                                                  max_image_size={"longest_edge": image_size}),
                            tok, SmolVLMVideoProcessor(), image_seq_len=seq)
    proc.save_pretrained(str(folder))
    (folder / "TINY_TEST_MODEL.json").write_text(json.dumps({"note": f"random {size} SmolVLM", "size": size}))
    return folder


def write_metaworld_like_dataset(root: str | Path, repo_id: str = "local/metaworld-like", *, episodes: int = 2,
                                 length: int = 24, image_size: int = 64, task: str = "push-v3", fps: int = 80,
                                 seed: int = 0) -> Path:
    """A random LeRobotDataset with the MetaWorld pipeline's features (test tooling, before real data exist).

    Features as the shared design names them: ``observation.image`` (uint8 image), ``observation.state`` (4),
    ``action`` (4, uniform in [-1, 1] like MetaWorld's box), ``next.reward`` / ``next.done`` / ``next.success``,
    the task string being LeRobot's description of ``task``. Odd episodes end in success (done), even ones are
    truncated. Returns ``root``.
    """
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.envs.metaworld import TASK_DESCRIPTIONS

    if task not in TASK_DESCRIPTIONS:
        raise KeyError(f"unknown MetaWorld task {task!r} (not in lerobot.envs.metaworld.TASK_DESCRIPTIONS)")
    rng = np.random.default_rng(seed)
    vec = {"dtype": "float32", "shape": (4,), "names": None}
    flag = {"dtype": "bool", "shape": (1,), "names": None}
    features = {"observation.image": {"dtype": "image", "shape": (image_size, image_size, 3),
                                      "names": ["height", "width", "channel"]},
                "observation.state": vec, "action": dict(vec),
                "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                "next.done": flag, "next.success": dict(flag)}
    ds = LeRobotDataset.create(repo_id, fps, features, root=str(root), use_videos=False)
    for e in range(episodes):
        for i in range(length):
            end = e % 2 == 1 and i == length - 1
            ds.add_frame({"observation.image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
                          "observation.state": rng.normal(size=4).astype(np.float32),
                          "action": rng.uniform(-1, 1, 4).astype(np.float32),
                          "next.reward": np.array([rng.uniform(0, 10)], dtype=np.float32),
                          "next.done": np.array([end]), "next.success": np.array([end]),
                          "task": TASK_DESCRIPTIONS[task]})
        ds.save_episode()
    ds.finalize()
    return Path(root)
