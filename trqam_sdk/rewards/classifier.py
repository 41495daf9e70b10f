"""A learned success detector: LeRobot's reward ``Classifier`` trained on a dataset's success labels, then a reward
source (``classifier``) — the situation of a real robot with no reward function.

Why a small loop here rather than ``lerobot-train --reward_model.type=reward_classifier``: LeRobot's trainer feeds
the classifier each frame's *current* image labelled with ``next.reward`` (our dense env reward), whereas a
success detector must see the image *after* the action, labelled ``next.success``; it has no held-out split by
episode, no class balancing (success frames are rare) and LeRobot's Classifier freezes its encoder and runs it
under ``no_grad`` (right for the pretrained ``lerobot/resnet10``, useless for a random-init backbone). The model,
its pre-processor (LeRobot's ``make_classifier_processor``, mean/std from the dataset stats), its loss
(``Classifier.forward``), its optimizer preset and its ``save_pretrained`` format are LeRobot's own; a saved
folder loads with plain ``Classifier.from_pretrained``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trqam_sdk.io import atomic_write_text
from trqam_sdk.rewards.registry import IMAGE_KEY, RewardInputs, RewardSource, register_reward
from trqam_sdk.rewards.sources import load_frames, next_frame_index, sparse_values

HUB_BACKBONE = "lerobot/resnet10"
PREPROCESSOR_FILE = "classifier_preprocessor.json"
METRICS_FILE = "trqam_classifier.json"
LastFrame = Literal["stand_in", "drop"]


def build_tiny_backbone(folder: str | Path, image_size: int, seed: int = 0, width: int = 16) -> Path:
    """A small random-init transformers ResNet saved to ``folder``, with as many stages as make its feature map
    4 × 4 at ``image_size`` (LeRobot's ``SpatialLearnedEmbeddings`` is built for 4 × 4)."""
    from transformers import ResNetConfig, ResNetModel

    side = image_size // 4  # the embedder's stride-2 conv and max-pool
    stages = 1
    while side > 4:
        side, stages = (side + 1) // 2, stages + 1
    if side != 4:
        raise ValueError(f"image size {image_size}: no ResNet stage count gives a 4x4 feature map "
                         "(use 16 · 2^k pixels, e.g. 32, 64, 128)")
    torch.manual_seed(seed)
    cfg = ResNetConfig(num_channels=3, embedding_size=width, hidden_sizes=[width * 2 ** i for i in range(stages)],
                       depths=[1] * stages, layer_type="basic", downsample_in_first_stage=False)
    folder = Path(folder)
    ResNetModel(cfg).save_pretrained(str(folder))
    return folder


def _trainable_classifier_cls() -> type:
    """LeRobot's Classifier with the encoder trainable (no freezing, no ``no_grad``); identical state dict."""
    from lerobot.rewards.classifier.modeling_classifier import Classifier

    class TrainableClassifier(Classifier):
        freeze_backbone = False

        def _freeze_encoder(self) -> None:
            if self.freeze_backbone:
                super()._freeze_encoder()

        def _get_encoder_output(self, x: torch.Tensor, image_key: str) -> torch.Tensor:
            if not self.is_cnn:
                return super()._get_encoder_output(x, image_key)
            return self.encoders[image_key](x)

    return TrainableClassifier


def success_pairs(episode_index: np.ndarray, success: np.ndarray, last_frame: LastFrame = "stand_in"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(image row, label) for each training example: frame i's label ``next.success[i]`` is the success *after*
    action i, so it goes with the NEXT frame's image (row i + 1 of the same episode).

    An episode's last frame has no stored next image. ``"drop"``: it gives no example. ``"stand_in"`` (needed when
    episodes terminate on success, as MetaWorld's do — the success frame is always last): its own image stands
    in, and where that image is also the next image of the previous frame with the other label, the last
    frame's label wins, so no image gets two labels.
    """
    ep = np.asarray(episode_index).reshape(-1)
    success = np.asarray(success).reshape(-1).astype(bool)
    if last_frame not in ("stand_in", "drop"):
        raise ValueError(f"last_frame must be 'stand_in' or 'drop', got {last_frame!r}")
    nxt = next_frame_index(ep)
    is_last = nxt == np.arange(len(ep))
    keep = ~is_last
    if last_frame == "stand_in":
        keep = np.ones(len(ep), dtype=bool)
        before_last = np.flatnonzero(is_last) - 1
        before_last = before_last[(before_last >= 0) & ~is_last[np.clip(before_last, 0, None)]]
        clash = success[before_last] != success[before_last + 1]
        keep[before_last[clash]] = False
    rows = np.flatnonzero(keep)
    return nxt[rows], success[rows]


def split_episodes(episodes: np.ndarray, positive: np.ndarray, held_out: float | int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out episode ids, stratified by whether an episode has any success (so both sides see some)."""
    episodes = np.asarray(episodes)
    n = len(episodes)
    count = held_out if isinstance(held_out, int) and not isinstance(held_out, bool) else None
    if count is None and not (isinstance(held_out, float) and 0.0 < held_out < 1.0):
        raise ValueError(f"held_out_episodes must be a fraction in (0, 1) or a count >= 1, got {held_out!r}")
    count = count if count is not None else max(1, round(held_out * n))
    if not 1 <= count < n:
        raise ValueError(f"held_out_episodes = {held_out!r} leaves {n - count} of {n} episodes for training")
    rng = np.random.default_rng(seed)
    positive = np.asarray(positive, dtype=bool)
    groups = [rng.permutation(episodes[positive]).tolist(), rng.permutation(episodes[~positive]).tolist()]
    held: list[int] = []
    for group in groups:  # proportional shares, each group keeping one episode for training
        share = max(1, round(count * len(group) / n)) if len(group) >= 2 else 0
        held.extend(group[:min(share, len(group) - 1, count - len(held))])
    left = [[e for e in g if e not in held] for g in groups]
    while len(held) < count:  # fill up (tiny datasets) from the class with most training episodes left (ties:
        held.append(max(left[::-1], key=len).pop(0))  # failures, so success episodes stay for training)
    held_set = set(held)
    return np.array([e for e in episodes if e not in held_set]), np.array(sorted(held_set))


def _to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → contiguous float (N, 3, H, W) in [0, 1] (what LeRobot's ``preprocess_observation``
    gives; contiguous, because the conv kernels' results depend on the memory layout in the last bits)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)


@torch.no_grad()
def classifier_probabilities(model: Any, preprocessor: Any, images: np.ndarray, image_key: str = IMAGE_KEY,
                             batch_size: int = 256) -> np.ndarray:
    """Success probability of each uint8 (N, H, W, 3) image (the model in eval mode)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = preprocessor({image_key: _to_model_input(images[start:start + batch_size])})
        out.append(model.predict([batch[image_key]]).probabilities.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def binary_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision and recall (NaN where a class is absent; None in the json)."""
    pred, label = pred.astype(bool), label.astype(bool)
    tp, tn = int((pred & label).sum()), int((~pred & ~label).sum())
    fp, fn = int((pred & ~label).sum()), int((~pred & label).sum())
    div = lambda a, b: a / b if b else math.nan  # noqa: E731
    tpr, tnr = div(tp, tp + fn), div(tn, tn + fp)
    return {"accuracy": div(tp + tn, len(label)), "balanced_accuracy": (tpr + tnr) / 2, "precision": div(tp, tp + fp),
            "recall": tpr, "true_negative_rate": tnr, "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def load_success_classifier(folder: str | Path, device: str = "cpu") -> tuple[Any, Any, str]:
    """(LeRobot Classifier in eval mode, its pre-processor, its image key) from a saved folder."""
    from lerobot.configs.rewards import RewardModelConfig
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.rewards.classifier.modeling_classifier import Classifier

    folder = Path(folder)
    for name in ("config.json", "model.safetensors", PREPROCESSOR_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a trained success classifier: it lacks {name} "
                                    "(train one with trqam_sdk.rewards.train_success_classifier)")
    config = RewardModelConfig.from_pretrained(str(folder))
    if not Path(config.model_name).exists() and (folder / "backbone").is_dir():
        config.model_name = str(folder / "backbone")  # the folder moved: its own copy of the backbone
    config.device = device
    model = Classifier.from_pretrained(str(folder), config=config)
    preprocessor = PolicyProcessorPipeline.from_pretrained(str(folder), config_filename=PREPROCESSOR_FILE)
    keys = [k for k in config.input_features if k.startswith(IMAGE_KEY)]
    if len(keys) != 1:
        raise ValueError(f"{folder}: the classifier reads {len(keys)} cameras {keys}; this source supports one")
    return model.eval(), preprocessor, keys[0]


@register_reward("classifier")
class ClassifierReward(RewardSource):
    """LeRobot's reward classifier on the next image: success = p > ``threshold``; the reward is the sparse value
    of the predicted success. ``folder``: a checkpoint from :func:`train_success_classifier`."""

    @dataclass(frozen=True)
    class Options:
        folder: str
        threshold: float = 0.5
        success_reward: float = 0.0
        failure_reward: float = -1.0
        batch_size: int = 256
        device: str = "cpu"

    def __init__(self, options: Any):
        super().__init__(options)
        if not 0.0 < options.threshold < 1.0:
            raise ValueError(f"classifier threshold must be in (0, 1), got {options.threshold}")
        self.model, self.preprocessor, self.image_key = load_success_classifier(options.folder, options.device)

    def probabilities(self, inputs: RewardInputs) -> np.ndarray:
        return classifier_probabilities(self.model, self.preprocessor, inputs.image(self.image_key),
                                        self.image_key, self.options.batch_size)

    def score(self, inputs: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        success = self.probabilities(inputs) > self.options.threshold
        return sparse_values(success, self.options.success_reward, self.options.failure_reward), success


def _resolve_backbone(backbone: str, out_dir: Path, image_size: int, seed: int) -> str:
    """The backbone the config names: ``"tiny"`` builds one in ``out_dir/backbone``; a local folder is copied
    there (the checkpoint is self-contained); anything else is a Hub id (needs the internet once)."""
    if backbone == "tiny":
        return str(build_tiny_backbone(out_dir / "backbone", image_size, seed))
    if Path(backbone).is_dir():
        shutil.copytree(backbone, out_dir / "backbone")
        return str(out_dir / "backbone")
    return backbone


def train_success_classifier(dataset_root: Path, repo_id: str, out_dir: Path, *, steps: int, batch_size: int,
                             held_out_episodes: float | int, seed: int, image_key: str = IMAGE_KEY,
                             backbone: str = HUB_BACKBONE, learning_rate: float = 1e-3,
                             hidden_dim: int = 64, latent_dim: int = 64, freeze_backbone: bool = False,
                             last_frame: LastFrame = "stand_in", threshold: float = 0.5) -> dict:
    """Train LeRobot's reward Classifier to detect success from the next image; save it to ``out_dir``.

    Examples come from :func:`success_pairs` (image after action i ↔ ``next.success[i]``); episodes are split into
    train / held-out (stratified by outcome); batches are class-balanced (half positives) because success frames
    are rare. The metrics on the held-out frames are returned and written to ``out_dir/trqam_classifier.json``.
    ``backbone``: ``"lerobot/resnet10"`` (the Hub default), a local transformers folder, or ``"tiny"`` (a small
    random-init ResNet for this image size, built offline). A finished ``out_dir`` trained with the same
    arguments returns its metrics; different arguments are refused.
    """
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.rewards.classifier.configuration_classifier import RewardClassifierConfig
    from lerobot.rewards.classifier.processor_classifier import make_classifier_processor

    out_dir = Path(out_dir)
    args = {"dataset_root": str(dataset_root), "repo_id": repo_id, "steps": steps, "batch_size": batch_size,
            "held_out_episodes": held_out_episodes, "seed": seed, "image_key": image_key, "backbone": backbone,
            "learning_rate": learning_rate, "hidden_dim": hidden_dim, "latent_dim": latent_dim,
            "freeze_backbone": freeze_backbone, "last_frame": last_frame, "threshold": threshold}
    if (out_dir / METRICS_FILE).is_file():
        done = json.loads((out_dir / METRICS_FILE).read_text())
        if done.get("args") != args:
            raise FileExistsError(f"{out_dir} holds a classifier trained with other arguments "
                                  f"({done.get('args')}); choose another out_dir or delete it")
        return done
    if steps < 1 or batch_size < 2:
        raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    start_time = time.perf_counter()
    frames = load_frames(dataset_root, repo_id, [image_key])
    if frames.success is None:
        raise KeyError(f"{dataset_root}: the dataset has no 'next.success' feature to learn from")
    rows, labels = success_pairs(frames.episode_index, frames.success, last_frame)
    pair_ep = frames.episode_index[rows]
    episodes = np.unique(pair_ep)
    positive_eps = np.array([labels[pair_ep == e].any() for e in episodes])
    train_eps, held_eps = split_episodes(episodes, positive_eps, held_out_episodes, seed)
    train, held = np.isin(pair_ep, train_eps), np.isin(pair_ep, held_eps)
    pos, neg = np.flatnonzero(train & labels), np.flatnonzero(train & ~labels)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"{dataset_root}: the training episodes have {len(pos)} success and {len(neg)} failure "
                         f"examples; a success detector needs both (last_frame={last_frame!r})")
    images = frames.images[image_key]
    size = images.shape[1]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
    try:
        torch.manual_seed(seed)
        config = RewardClassifierConfig(
            num_cameras=1, model_name=_resolve_backbone(backbone, tmp, size, seed), hidden_dim=hidden_dim,
            latent_dim=latent_dim, learning_rate=learning_rate, device="cpu",
            input_features={image_key: PolicyFeature(FeatureType.VISUAL, (3, size, images.shape[2]))},
            output_features={"next.reward": PolicyFeature(FeatureType.REWARD, (1,))})
        cls = _trainable_classifier_cls()
        cls.freeze_backbone = freeze_backbone
        try:
            model = cls(config)
        except OSError as e:
            raise OSError(f"could not load the classifier backbone {backbone!r} ({e}); offline, pass "
                          "backbone='tiny' or a local transformers folder") from e
        stats = LeRobotDatasetMetadata(repo_id, root=str(dataset_root)).stats
        preprocessor, _ = make_classifier_processor(config, dataset_stats={image_key: stats[image_key]})
        optimizer = config.get_optimizer_preset().build([p for p in model.parameters() if p.requires_grad])
        gen = np.random.default_rng(seed)
        model.train()
        half = batch_size // 2
        losses = []
        for _ in range(steps):
            idx = np.concatenate([gen.choice(pos, half), gen.choice(neg, batch_size - half)])
            batch = preprocessor({image_key: _to_model_input(images[rows[idx]])})
            batch["next.reward"] = torch.from_numpy(labels[idx].astype(np.float32))
            loss, _ = model(batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
        prob = classifier_probabilities(model, preprocessor, images[rows[held]], image_key)
        metrics = binary_metrics(prob > threshold, labels[held])
        if config.model_name.startswith(str(tmp)):  # saved pointing at its final place: plain LeRobot loads it
            config.model_name = str(out_dir.resolve() / "backbone")
        model.save_pretrained(str(tmp))
        preprocessor.save_pretrained(str(tmp), config_filename=PREPROCESSOR_FILE)
        result = {**metrics, "positives": int(labels[held].sum()), "held_out_frames": int(held.sum()),
                  "held_out_episodes": int(len(held_eps)), "train_frames": int(train.sum()),
                  "train_episodes": int(len(train_eps)), "train_positives": int(len(pos)),
                  "positive_fraction": float(labels.mean()), "final_loss": float(np.mean(losses[-20:])),
                  "held_out_episode_ids": held_eps.tolist(), "seconds": time.perf_counter() - start_time,
                  "args": args}
        result = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.items()}
        atomic_write_text(tmp / METRICS_FILE, json.dumps(result, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an unfinished earlier attempt (no metrics file)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return result
