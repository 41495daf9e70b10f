"""`trqam lerobot-train`: TRQAM fine-tune of a LeRobot pi0 / pi0.5 / SmolVLA checkpoint on a LeRobotDataset.

Runs on N processes with ``torchrun --nproc_per_node N -m trqam_sdk.cli lerobot-train ...`` (CPU, gloo) or
``accelerate launch``. The reference velocity is the frozen pretrained expert (``reference: frozen``), the VLM
is frozen, the action expert (or its LoRA adapters) trains; the result is written as a lerobot checkpoint
(+ processors, trqam_state.json, model card) and optionally pushed to the Hub.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="lerobot checkpoint folder or Hub repo id (pi0, pi05, smolvla)")
    p.add_argument("--dataset", required=True, help="LeRobotDataset root folder (with next.reward / next.done)")
    p.add_argument("--repo-id", default=None, help="the dataset's repo id (default: the root folder's name)")
    p.add_argument("--config", default=None, help="YAML FinetuneConfig (steps, batch, ε, ...); flags override it")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--flow-steps", type=int, default=None)
    p.add_argument("--kl-budget", type=float, default=None)
    p.add_argument("--lora-rank", type=int, default=0, help="train rank-r LoRA adapters on the expert instead")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--push-to", default=None, help="Hub repo id to push the fine-tuned checkpoint to")
    p.add_argument("--tiny", action="store_true",
                   help="load pi0/pi0.5 with the tiny test backbone sizes (trqam_sdk.testing.tiny_lerobot), for tests")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from trqam_sdk.adapters.lerobot import from_pretrained
    from trqam_sdk.config import CriticConfig, FinetuneConfig, load_yaml
    from trqam_sdk.integrations.lerobot.data import lerobot_transitions
    from trqam_sdk.integrations.lerobot.hub import push_to_hub, save_pretrained, training_summary
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture
    from trqam_sdk.training.finetuner import Finetuner

    cfg = load_yaml(FinetuneConfig, args.config) if args.config else FinetuneConfig(
        reference="frozen", batch_size=8, flow_steps=10, trackers=[], log_every=1,
        critic=CriticConfig(num_critics=2, width=128, depth=2))
    for flag, attr in (("steps", "steps"), ("batch_size", "batch_size"), ("flow_steps", "flow_steps")):
        if getattr(args, flag) is not None:
            setattr(cfg, attr, getattr(args, flag))
    if args.kl_budget is not None:
        cfg.trust_region.kl_budget = args.kl_budget
    cfg.output_dir = args.output_dir
    with tiny_pi_architecture() if args.tiny else contextlib.nullcontext():
        policy = from_pretrained(args.policy, lora_rank=args.lora_rank)
    if policy.preprocessor is None:
        raise FileNotFoundError(f"{args.policy} has no policy_preprocessor.json: the dataset cannot be encoded "
                                "the way the checkpoint expects")
    root = Path(args.dataset)
    dataset = LeRobotDataset(args.repo_id or root.name, root=str(root))
    data = lerobot_transitions(dataset, policy.preprocessor)
    c = cfg.critic
    ft = Finetuner(cfg, policy, data, critic=vla_critic(policy, c.num_critics, c.width, c.depth,
                                                          layer_norm=c.layer_norm))
    metrics = ft.train(progress=False)
    acc = ft.accelerator
    if acc.is_main_process:
        summary = training_summary(ft, results={"final_critic_loss": metrics.get("critic_loss")},
                                   base_model=str(args.policy))
        summary["num_processes"] = acc.num_processes
        out = save_pretrained(ft.agent.actor, Path(args.output_dir) / "policy", summary, args.push_to)
        if args.push_to:
            push_to_hub(ft.agent.actor, args.push_to, summary)
        print(json.dumps({"policy": str(out), "steps": ft.step, "num_processes": acc.num_processes,
                          "lam": summary["final_lambda"], "kl_ema": summary["final_kl_ema"]}))
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group() if torch.distributed.is_initialized() else None
    return 0
