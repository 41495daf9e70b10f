"""A few TRQAM updates of a tiny problem on however many processes it is launched with (test tooling).

The 1-process-vs-N-process equality tests of tests/test_distributed.py launch this module twice, e.g.::

    accelerate launch --config_file recipes/accelerate/cpu_ddp.yaml -m trqam_sdk.testing.distributed_check \\
        --kind smolvla --out OUT --steps 2
    accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 2 \\
        -m trqam_sdk.testing.distributed_check --kind smolvla --out OUT --force-fsdp-on-cpu

and compare what each wrote to ``OUT``: ``weights.safetensors`` (the full, unsharded agent state, gathered on every
rank and written by rank 0), ``metrics.json`` (per-step metrics, all-reduced means) and ``info.json`` (process
count, distributed type, which modules FSDP wrapped, which parameters it sharded).

Every process builds the same prior, data and critic from the seed (identical on any process count), and the
Finetuner splits each global batch into contiguous shards, so N processes must reproduce one to float tolerance.

``--force-fsdp-on-cpu``: Accelerate 1.15 turns ``ACCELERATE_USE_FSDP`` on only for GPU-like distributed types; on a
CPU (MULTI_CPU, gloo) it silently falls back to DDP. This flag switches the shared AcceleratorState to FSDP after
the Accelerator is built, so that Accelerate's own FSDP2 path (``fully_shard`` on a CPU gloo mesh, the plugin read
from the launcher's FSDP_* variables) prepares the agent. It is a CPU test device, not a training mode.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

KINDS = ("mlp", "smolvla", "pi0", "pi05")
CHUNK, STATE_DIM, ACTION_DIM, IMAGE = 4, 4, 3, 32
TASKS = ("pick the cube", "push the block left")


def build_problem(kind: str, root: Path, seed: int = 0) -> tuple[Any, Any, Any]:
    """(policy, data, critic) of a tiny ``kind`` problem, identical on every process (built from ``seed``).

    ``mlp``: the toy MLP prior on random episodes; a VLA: a tiny random-weight lerobot model
    (:func:`~trqam_sdk.testing.tiny_lerobot.build_tiny_lerobot`) on in-memory synthetic frames (reward a[0] / 2)."""
    from trqam_sdk.adapters import MLPFlowPolicy, MLPPolicyConfig
    from trqam_sdk.data.transitions import Transitions
    from trqam_sdk.testing.toy import random_episodes

    torch.manual_seed(seed)
    if kind == "mlp":
        data = Transitions.from_numpy(random_episodes())
        return MLPFlowPolicy(MLPPolicyConfig(data.obs_dim, 3, data.action_dim, width=32, depth=2)), data, None
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS
    from trqam_sdk.integrations.lerobot.data import lerobot_transitions
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.testing.tiny_lerobot import IMAGE_KEY, build_tiny_lerobot

    policy, pre, post = build_tiny_lerobot(kind, root, chunk_size=CHUNK, state_dim=STATE_DIM,
                                           action_dim=ACTION_DIM, image_size=IMAGE, seed=seed)
    adapter = LEROBOT_ADAPTERS[kind](policy, pre, post)
    with torch.no_grad():  # random init has tiny output layers: make the expert's field non-trivial
        adapter.policy.model.action_out_proj.weight.normal_(0.0, 0.15, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(seed)
    rows = []
    for episode in range(3):
        for i in range(8):
            action = torch.from_numpy(rng.uniform(-1.8, 1.8, ACTION_DIM).astype(np.float32))
            rows.append({IMAGE_KEY: torch.from_numpy(rng.random((3, IMAGE, IMAGE), dtype=np.float32)),
                         "observation.state": torch.from_numpy(rng.normal(size=STATE_DIM).astype(np.float32)),
                         "task": TASKS[episode % 2], "action": action, "episode_index": torch.tensor(episode),
                         "next.reward": action[:1] / 2, "next.done": torch.tensor([episode % 2 == 1 and i == 7])})
    data = lerobot_transitions(rows, pre)
    torch.manual_seed(seed + 1)
    return adapter, data, vla_critic(adapter, 2, 32, 2)


def vlm_module(kind: str) -> str:
    """The frozen VLM's module path inside a ``kind`` adapter's lerobot model (what fsdp.yaml replicates)."""
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS

    return LEROBOT_ADAPTERS[kind].vlm_module


def expert_module(kind: str) -> str:
    """The action expert's transformer inside a ``kind`` adapter's lerobot model (what fsdp.yaml shards)."""
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS

    return LEROBOT_ADAPTERS[kind].expert_modules[0]


def force_fsdp_on_cpu(accelerator: Any) -> None:
    """Let Accelerate's FSDP2 path run on a CPU gloo group (see the module docstring): FSDP plugin from the
    launcher's environment, distributed type FSDP. Refuses when the launcher did not ask for FSDP2."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        raise RuntimeError("--force-fsdp-on-cpu needs an FSDP launch (accelerate launch --config_file fsdp.yaml)")
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise RuntimeError(f"--force-fsdp-on-cpu supports FSDP2 only, the launcher asked for {plugin.fsdp_version}")
    state = accelerator.state
    state.fsdp_plugin = plugin
    # both shared states: every AcceleratorState() built later copies PartialState's fields over its own
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    patch_finetuner_for_fsdp2(accelerator)


def patch_finetuner_for_fsdp2(accelerator: Any) -> None:
    """What the Finetuner needs under FSDP2 (on any device), applied to this ``accelerator`` only: the gradient
    norm of sharded (DTensor) gradients comes back as a DTensor, which ``acc.reduce`` cannot all-reduce; its
    ``full_tensor()`` is the global norm (the same number DDP reports)."""
    from torch.distributed.tensor import DTensor

    clip = accelerator.clip_grad_norm_

    def clip_full(*args: Any, **kwargs: Any) -> Any:
        norm = clip(*args, **kwargs)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    accelerator.clip_grad_norm_ = clip_full


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The agent's unsharded state dict on CPU. Collective under FSDP: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if any(isinstance(m, FSDPModule) for m in model.modules()):
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = (model.module if hasattr(model, "module") else model).state_dict()
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def sharding_info(model: torch.nn.Module) -> dict[str, Any]:
    """Which modules are FSDP units and which parameters are sharded (DTensor) or replicated (plain)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters())
    sharded = sorted(n for n, p in params.items() if isinstance(p, DTensor))
    return {"fsdp_units": sorted(n for n, m in model.named_modules() if isinstance(m, FSDPModule)),
            "sharded_params": sharded, "replicated_params": sorted(set(params) - set(sharded)),
            "unit_classes": sorted({type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)})}


def run(kind: str, out: Path, steps: int = 2, batch_size: int = 4, flow_steps: int = 3,
        force_fsdp: bool = False) -> dict[str, Any]:
    """Train ``steps`` TRQAM updates (reference frozen for a VLA) and write weights / metrics / info to ``out``."""
    from accelerate import Accelerator

    from trqam_sdk.config import CriticConfig, FinetuneConfig, PolicyConfig, TrustRegionConfig
    from trqam_sdk.training.finetuner import Finetuner

    acc = Accelerator(cpu=not torch.cuda.is_available())  # precision from the launcher, not a default "no"
    if force_fsdp:
        force_fsdp_on_cpu(acc)
    rank_root = out / f"build-rank{acc.process_index}"  # each process writes its own tokenizer / VLM folder
    policy, data, critic = build_problem(kind, rank_root)
    cfg = FinetuneConfig(batch_size=batch_size, steps=steps, flow_steps=flow_steps, log_every=1, trackers=[],
                         output_dir=str(out / "run"), reference="ema" if kind == "mlp" else "frozen",
                         policy=PolicyConfig(width=32, depth=2), critic=CriticConfig(num_critics=2, width=32, depth=2),
                         trust_region=TrustRegionConfig(kl_budget=0.05, lam_lr=0.5))
    ft = Finetuner(cfg, policy, data, critic=critic, accelerator=acc, on_existing="overwrite")
    metrics = []
    for _ in range(steps):
        m = ft.train_step()
        metrics.append({k: v for k, v in m.items() if not k.startswith("time/")})
    weights = full_state_dict(ft.model)
    info = {"kind": kind, "num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
            "is_fsdp2": acc.is_fsdp2,
            "mixed_precision": acc.mixed_precision, "model_class": type(ft.model).__name__,
            **sharding_info(ft.model)}
    if acc.is_main_process:
        from trqam_sdk.training.checkpoint import unshared

        save_file(unshared(weights), str(out / "weights.safetensors"))  # never a pickle
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (out / "info.json").write_text(json.dumps(info, indent=1))
    acc.wait_for_everyone()
    ft.end()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--kind", choices=KINDS, default="mlp")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--flow-steps", type=int, default=3)
    p.add_argument("--force-fsdp-on-cpu", action="store_true")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    run(a.kind, a.out, a.steps, a.batch_size, a.flow_steps, a.force_fsdp_on_cpu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
