"""TRQAM fine-tune of a LeRobot pi0 / pi0.5 / SmolVLA checkpoint on a LeRobotDataset (the library side of
`trqam lerobot-train`, whose flags live in :mod:`trqam_sdk.cli.lerobot_train`). Any registered method runs the
same way (``method: dsrl``, ``--method dsrl``); every one gets the VLA critic built here (``vla_critic``).

Runs on N processes under ``torchrun --nproc_per_node N -m trqam_sdk.cli lerobot-train ...`` (CPU, gloo) or
``accelerate launch``. The reference velocity is the frozen pretrained expert (``reference: frozen``), the VLM
is frozen, the action expert (or its LoRA adapters) trains; the result is written as a lerobot checkpoint
(+ processors, trqam_state.json, model card) and optionally pushed to the Hub.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from trqam_sdk.config import CriticConfig, FinetuneConfig, validate


def vla_defaults() -> FinetuneConfig:
    """The config used when no YAML is given: frozen reference, a small critic on the VLA's features."""
    return FinetuneConfig(reference="frozen", batch_size=8, flow_steps=10, trackers=[], log_every=1,
                          critic=CriticConfig(num_critics=2, width=128, depth=2))


def finetune_lerobot(cfg: FinetuneConfig, policy: str | Path, dataset: str | Path, repo_id: str | None = None,
                     lora_rank: int = 0, push_to: str | None = None, tiny: bool = False,
                     on_existing: str = "new") -> dict[str, Any] | None:
    """Fine-tune ``policy`` (a lerobot checkpoint folder or Hub id) on the LeRobotDataset at ``dataset`` and
    save it under ``cfg.output_dir/policy`` (and push it to ``push_to``). Returns the run summary on the main
    process, None on the others. ``tiny`` loads pi0 / pi0.5 with the tiny test backbone sizes; ``on_existing``: what
    to do with an earlier run in ``cfg.output_dir`` (the Finetuner's: new, resume, overwrite, auto)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from trqam_sdk.adapters.lerobot import from_pretrained
    from trqam_sdk.integrations.lerobot.data import lerobot_transitions
    from trqam_sdk.integrations.lerobot.hub import push_to_hub, save_pretrained, training_summary
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture
    from trqam_sdk.training.finetuner import Finetuner

    validate(cfg)
    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0, got {lora_rank}")
    with tiny_pi_architecture() if tiny else contextlib.nullcontext():
        vla = from_pretrained(policy, lora_rank=lora_rank)
    if vla.preprocessor is None:
        raise FileNotFoundError(f"{policy} has no policy_preprocessor.json: the dataset cannot be encoded "
                                "the way the checkpoint expects")
    root = Path(dataset)
    if not root.is_dir():
        raise FileNotFoundError(f"LeRobotDataset folder not found: {root}")
    data = lerobot_transitions(LeRobotDataset(repo_id or root.name, root=str(root)), vla.preprocessor)
    c = cfg.critic
    torch.manual_seed(cfg.seed)  # the critic's init is part of the run: seed it (it was not reproducible)
    ft = Finetuner(cfg, vla, data, critic=vla_critic(vla, c.num_critics, c.width, c.depth, layer_norm=c.layer_norm),
                   on_existing=on_existing)  # type: ignore[arg-type]
    metrics = ft.train(progress=False)
    acc, result = ft.accelerator, None
    if acc.is_main_process:
        summary = training_summary(ft, results={"final_critic_loss": metrics.get("critic/loss")},
                                   base_model=str(policy))
        summary["num_processes"] = acc.num_processes
        out = save_pretrained(ft.agent.policy, Path(cfg.output_dir) / "policy", summary, push_to)
        if push_to:
            push_to_hub(ft.agent.policy, push_to, summary)
        result = {"policy": str(out), "steps": ft.step, "num_processes": acc.num_processes,
                  "lam": summary["final_lambda"], "kl_ema": summary["final_kl_ema"]}
    acc.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result
