"""What every LeRobot flow policy shares, whatever its backbone: loading, processors, padding, time, save/LoRA.

* Observations are lerobot's *pre-processed* batch (the output of the checkpoint's own pre-processor:
  normalised state, images in [0, 1], language tokens + mask; for pi0.5 the state is already tokenised into the
  prompt). Images may also be uint8 (how the SDK stores them: ``round(255 x)``); they become ``float / 255``
  where the model reads them (:meth:`LeRobotFlowPolicy.float_images`), bit-identical to the float row.
  :meth:`LeRobotFlowPolicy.check_observations` validates the batch, naming the offending key.
* Time: lerobot integrates t' = 1 (noise) → t' = 0 (action) with v' ≈ noise − action; we return
  v = −v'(x, 1 − t) (SPEC §1).
* Padding: the models work on (chunk_size, max_action_dim) chunks. The SDK flows over the *real* action dims only,
  (H, A) = (chunk_size, action_dim); the padded dims are held at 0 — the value lerobot's ``pad_vector`` gives them
  in training — for every velocity evaluation, so the velocity is a deterministic function of the real dims and
  the critic, KL and adjoint never see dims the robot does not execute. The chunk length is the model's
  ``chunk_size`` (its tokens are generated jointly): set it when building/fine-tuning a model for RL.
* Trainable: the action expert (and its projections); the VLM, vision tower and any prefix-side projection are
  frozen. Optionally LoRA adapters (peft) on the expert instead (``lora_rank``).
* Saved in lerobot's own checkpoint format (LoRA merged), processors alongside.
* Memory options (keyword arguments of the constructors and ``from_pretrained``): ``vlm_dtype="bfloat16"``
  stores and runs the frozen prefix side in bf16 (the expert, and so every VJP, stays fp32);
  ``gradient_checkpointing=True`` recomputes the expert's layers in the backward of every pass that builds a
  graph (rollout, loss, BC, VJPs) instead of keeping their activations (:mod:`.prefix` says where each model
  checkpoints). :meth:`LeRobotFlowPolicy.freeze_as_reference` makes the agent's frozen base / reference
  LoRA-free (merged).

How the condition is computed and how the model is asked for its native velocity is backbone-specific: see
:mod:`.prefix` for the models that cache a vision-language prefix as a KV cache (pi0, pi0.5, SmolVLA).
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from trqam_sdk.adapters.base import ActionSpec, FlowPolicy, check_state_dict, read_config_json, resolve_folder

from trqam_sdk.io import read_json, read_safetensors
from trqam_sdk.networks.encoders import unit_image

TOKENS, TOKEN_MASK, STATE = "observation.language.tokens", "observation.language.attention_mask", "observation.state"
PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")
VLM_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""the dtypes the frozen prefix side may be stored and run in (``vlm_dtype``)"""


def _recompute(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` under non-reentrant activation checkpointing when a graph is being built (else plain)."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)  # eval mode: no randomness


def checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A module's own ``forward`` with its activations recomputed in the backward (bound per instance with
    ``types.MethodType``, so a deep copy rebinds it to the copy)."""
    return _recompute(lambda *a: type(self).forward(self, *a, **kwargs), *args)


def checkpoint_module(module: nn.Module, forward: Callable[..., Any] = checkpointed_forward,
                      method: str = "forward") -> None:
    """Make ``module.<method>`` run ``forward`` bound to it (an instance attribute; the class is untouched)."""
    setattr(module, method, types.MethodType(forward, module))


class _Shared:
    """Holds the pre/post-processors; shared (not copied) by ``copy.deepcopy`` of the adapter."""

    def __init__(self, pre: Any, post: Any):
        self.pre, self.post = pre, post

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


def resolve_checkpoint(path_or_repo: str | Path, revision: str | None) -> Path:
    """A local checkpoint folder, or the Hub snapshot of a repo id (local paths are checked first and never
    fetched; a failed Hub lookup says both)."""
    return resolve_folder(path_or_repo, revision, "LeRobot checkpoint folder")


def lerobot_type(folder: Path) -> str:
    """The ``type`` in a checkpoint's ``config.json`` (errors name the file: missing, corrupt, not a mapping)."""
    meta = read_config_json(folder, "LeRobot checkpoint")
    kind = meta.get("type")
    if not isinstance(kind, str):
        raise ValueError(f"{folder / 'config.json'} has no lerobot 'type' (got {kind!r}): not a LeRobot checkpoint")
    return kind


class LeRobotFlowPolicy(FlowPolicy):
    """Common part of the LeRobot adapters; subclasses name the lerobot type and the model's module layout and
    implement :meth:`condition` and :meth:`_native_velocity`."""

    lerobot_type: ClassVar[str] = ""
    expert_modules: ClassVar[tuple[str, ...]] = ()
    """submodules of ``policy.model`` that form the action expert (trainable); everything else is frozen"""
    vlm_module: ClassVar[str] = ""
    """the frozen vision-language model inside ``policy.model`` (shared by deep copies)"""

    def __init__(self, policy: nn.Module, preprocessor: Any = None, postprocessor: Any = None,
                 lora_rank: int = 0, *, vlm_dtype: str = "float32", gradient_checkpointing: bool = False):
        super().__init__()
        if vlm_dtype not in VLM_DTYPES:
            raise ValueError(f"vlm_dtype must be one of {sorted(VLM_DTYPES)}, got {vlm_dtype!r}")
        if getattr(policy, "name", None) != self.lerobot_type:
            raise ValueError(f"{type(self).__name__} wraps lerobot '{self.lerobot_type}' policies, "
                             f"got {getattr(policy, 'name', type(policy).__name__)!r}")
        self.policy = policy.float()  # fp32: the VJPs and the finite-difference checks need it
        cfg = policy.config
        self.real_action_dim = int(cfg.output_features["action"].shape[0])
        self.spec = ActionSpec(int(cfg.chunk_size), self.real_action_dim)
        self.processors = _Shared(preprocessor, postprocessor)
        self.image_keys = list(cfg.image_features)
        self.state_dim = int(cfg.input_features[STATE].shape[0]) if STATE in cfg.input_features else None
        self.policy.requires_grad_(False)
        for name in self.expert_modules:
            self.policy.model.get_submodule(name).requires_grad_(True)
        self.lora_rank = lora_rank
        if lora_rank:
            self._add_lora(lora_rank)
        self.vlm_dtype = vlm_dtype
        if vlm_dtype != "float32":
            for p in self.prefix_parameters().values():  # parameters only: buffers (RoPE frequencies) stay fp32
                p.data = p.data.to(VLM_DTYPES[vlm_dtype])
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            self._checkpoint_expert()
        self.eval()

    @property
    def prefix_dtype(self) -> torch.dtype:
        """The dtype the frozen prefix side runs in (its inputs are cast to it): read off the VLM's weights, so a
        later ``.to(dtype)`` of the whole adapter stays consistent."""
        return next(self.policy.model.get_submodule(self.vlm_module).parameters()).dtype

    @property
    def expert_dtype(self) -> torch.dtype:
        """The dtype the trainable expert runs in (fp32 unless the whole adapter was cast)."""
        return self.policy.model.action_in_proj.weight.dtype

    def _checkpoint_expert(self) -> None:
        """Activation-checkpoint the expert's layers (backbone-specific: see :mod:`.prefix`)."""
        raise NotImplementedError(f"{type(self).__name__} has no gradient checkpointing")

    # -- observations --------------------------------------------------------------------------------------
    def check_observations(self, obs: Any) -> int:
        """Validate a pre-processed batch; returns its batch size. Errors name the offending key."""
        if not isinstance(obs, dict):
            raise ValueError(f"observations: expected a dict of lerobot pre-processed tensors, got {type(obs)}")
        need = [*self.image_keys, TOKENS, TOKEN_MASK] + ([STATE] if self.state_dim else [])
        missing = [k for k in need if k not in obs]
        if missing:
            raise ValueError(f"observations lack {missing} (has {sorted(obs)}); run the checkpoint's preprocessor")
        b = obs[TOKENS].shape[0]
        for k in self.image_keys:
            img = obs[k]
            if img.ndim != 4 or img.shape[1] != 3 or img.shape[0] != b:
                raise ValueError(f"observations[{k!r}]: expected ({b}, 3, H, W) images, got {tuple(img.shape)}")
            if img.dtype != torch.uint8 and not img.is_floating_point():
                raise ValueError(f"observations[{k!r}]: images must be uint8 or float in [0, 1], got {img.dtype}")
        if obs[TOKENS].ndim != 2 or obs[TOKEN_MASK].shape != obs[TOKENS].shape:
            raise ValueError(f"observations: tokens {tuple(obs[TOKENS].shape)} and mask "
                             f"{tuple(obs[TOKEN_MASK].shape)} must both be (B, L)")
        if self.state_dim and tuple(obs[STATE].shape) != (b, self.state_dim):
            raise ValueError(f"observations[{STATE!r}]: expected ({b}, {self.state_dim}), "
                             f"got {tuple(obs[STATE].shape)}")
        return b

    def float_images(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        """``obs`` with its camera images as float in [0, 1] (uint8 → ``float32 / 255``; floats unchanged)."""
        return {**obs, **{k: unit_image(obs[k], k) for k in self.image_keys}}

    # -- velocity: padding and the time convention -----------------------------------------------------------
    def _native_velocity(self, cond: Any, padded: Tensor, t_native: Tensor) -> Tensor:
        """lerobot's own field v'(x̃, t') on (B, chunk_size, max_action_dim) chunks at native time t' (float32)."""
        raise NotImplementedError

    def velocity(self, cond: Any, x: Tensor, t: Tensor) -> Tensor:
        """SDK velocity −v'(x̃, 1 − t) on the real dims, x̃ = x zero-padded to max_action_dim."""
        h, a = self.spec.horizon, self.spec.action_dim
        padded = F.pad(x.view(-1, h, a), (0, self.policy.config.max_action_dim - a))
        native = self._native_velocity(cond, padded, (1.0 - t).to(torch.float32))
        return -native[:, :, :a].reshape(x.shape[0], h * a).to(x.dtype)

    # -- the frozen part -----------------------------------------------------------------------------------
    def prefix_parameters(self) -> dict[str, Tensor]:
        """Every parameter outside the action expert: what ``condition`` depends on (all frozen)."""
        expert = tuple(f"policy.model.{m}." for m in self.expert_modules)
        return {n: p for n, p in self.named_parameters() if not n.startswith(expert) and "lora_" not in n}

    def same_condition_as(self, other: FlowPolicy) -> bool:
        """Same adapter type and bit-identical frozen prefix weights: the condition is the same."""
        if type(other) is not type(self):
            return False
        mine, theirs = self.prefix_parameters(), other.prefix_parameters()
        return mine.keys() == theirs.keys() and all(
            not p.requires_grad and not theirs[n].requires_grad and torch.equal(p, theirs[n])
            for n, p in mine.items())

    def __deepcopy__(self, memo: dict) -> LeRobotFlowPolicy:
        """Copies share the frozen VLM (the agent's v_θ, base and reference would otherwise hold three)."""
        vlm = self.policy.model.get_submodule(self.vlm_module)
        if not any(p.requires_grad for p in vlm.parameters()):
            memo[id(vlm)] = vlm
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    # -- LoRA ----------------------------------------------------------------------------------------------
    def _add_lora(self, rank: int) -> None:
        """Replace full expert training by rank-``rank`` LoRA on the expert's attention / MLP projections."""
        from peft import LoraConfig, inject_adapter_in_model

        self.policy.requires_grad_(False)
        target = self.expert_modules[0]
        cfg = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, init_lora_weights=True,
                         target_modules=r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
        inject_adapter_in_model(cfg, self.policy.model.get_submodule(target))
        for name, p in self.named_parameters():
            p.requires_grad_("lora_" in name)

    def merged_policy(self) -> nn.Module:
        """The lerobot policy with LoRA folded into the weights (the policy itself when there is none)."""
        if not self.lora_rank:
            return self.policy
        vlm = self.policy.model.get_submodule(self.vlm_module)  # frozen, LoRA-free: not copied
        merged = copy.deepcopy(self.policy, {id(vlm): vlm})
        _merge_lora(merged)
        return merged

    def freeze_as_reference(self) -> LeRobotFlowPolicy:
        """Freeze in place for use as a frozen base / reference (returns ``self``): LoRA merged into the
        expert's weights and its wrappers removed, so its forwards pay no adapter branches. With LoRA's zero
        init (B = 0) the merged weights are the pretrained ones bit for bit."""
        if self.lora_rank:
            _merge_lora(self.policy)
            self.lora_rank = 0
        return self.requires_grad_(False)

    # -- serialisation: lerobot's own checkpoint format ---------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"lerobot_type": self.lerobot_type, "chunk_size": self.spec.horizon,
                "action_dim": self.spec.action_dim, "lora_rank": self.lora_rank}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowPolicy:
        raise NotImplementedError(f"{cls.__name__} is built from a lerobot checkpoint: use from_pretrained(path)")

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json + model.safetensors (lerobot's format, LoRA merged) and the processors."""
        directory = Path(directory)
        self.merged_policy().save_pretrained(directory)
        for proc in (self.processors.pre, self.processors.post):
            if proc is not None:
                proc.save_pretrained(directory)
        return directory

    @property
    def save_is_exact(self) -> bool:
        """A merged LoRA does not give back its A/B factors: training checkpoints then keep the trainable LoRA
        tensors in the algorithm file and rebuild the frozen rest from the prior (training/ownership.py)."""
        return not self.lora_rank

    def load_saved_weights(self, directory: str | Path) -> None:
        """Restore the weights written by :meth:`save_pretrained` (lerobot's keys, no LoRA) in place."""
        file = Path(directory) / "model.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: not a saved {self.lerobot_type} policy")
        state = read_safetensors(file, f"{self.lerobot_type} weights file")
        check_state_dict(self.policy, state, f"{file} does not match this {self.lerobot_type} policy")
        self.policy.load_state_dict(state)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, revision: str | None = None, lora_rank: int = 0, *,
                        vlm_dtype: str = "float32", gradient_checkpointing: bool = False) -> LeRobotFlowPolicy:
        """Load a lerobot checkpoint (local folder or Hub repo) and its processors into the adapter. Every
        missing or corrupt file is an error naming it (lerobot's own parse errors are re-raised with the path)."""
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        folder = resolve_checkpoint(path_or_repo, revision)
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} has no {name}: not a LeRobot checkpoint folder")
        kind = lerobot_type(folder)
        if kind != cls.lerobot_type:
            raise ValueError(f"{folder}/config.json is a lerobot {kind!r} checkpoint, {cls.__name__} loads "
                             f"{cls.lerobot_type!r}")
        processors = [f for f in PROCESSOR_FILES if (folder / f).is_file()]
        if len(processors) == 1:  # a half-copied folder: loading without processors would act un-normalised
            missing = next(f for f in PROCESSOR_FILES if f not in processors)
            raise FileNotFoundError(f"{folder} has {processors[0]} but no {missing}: the processors come as a pair")
        state = read_safetensors(folder / "model.safetensors", f"{kind} weights file")
        try:
            config = PreTrainedConfig.from_pretrained(str(folder))
        except Exception as e:  # draccus / json errors name neither the file nor the field clearly
            raise ValueError(f"{folder / 'config.json'}: lerobot cannot read it as a {kind} config: "
                             f"{type(e).__name__}: {' '.join(str(e).split())}") from e
        config.device = "cpu"
        pre = post = None
        if processors:  # before the (slow) model build, so a broken processor file fails fast
            for f in processors:
                read_json(folder / f, "LeRobot processor config")  # names the file when it is cut short
            try:
                pre, post = make_pre_post_processors(
                    config, pretrained_path=str(folder), preprocessor_overrides={"device_processor": {"device": "cpu"}})
            except Exception as e:  # json, safetensors or draccus errors from inside lerobot
                raise ValueError(f"{folder}: the processors ({', '.join(PROCESSOR_FILES)} and the statistics they "
                                 f"name) do not load: {type(e).__name__}: {' '.join(str(e).split())}") from e
        policy = get_policy_class(kind)(config)
        check_state_dict(policy, state, f"checkpoint {folder} does not match its {kind} config")
        policy.load_state_dict(state)
        return cls(policy.eval(), pre, post, lora_rank=lora_rank, vlm_dtype=vlm_dtype,
                   gradient_checkpointing=gradient_checkpointing)

    @property
    def preprocessor(self) -> Any:
        return self.processors.pre

    @property
    def postprocessor(self) -> Any:
        return self.processors.post


def _merge_lora(policy: nn.Module) -> None:
    """Fold every peft LoRA layer of ``policy`` into its base weight (W ← W + B A scale) and replace the
    wrapper by that base layer, in place."""
    for name, module in list(policy.named_modules()):
        if hasattr(module, "merge") and hasattr(module, "base_layer"):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(policy.get_submodule(parent), child, module.get_base_layer())
