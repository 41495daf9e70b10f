"""`trqam lerobot-train`: flags for :func:`trqam_sdk.integrations.lerobot.train.finetune_lerobot`.

``trqam lerobot-train --policy user/pi0 --dataset root --output-dir runs/vla [--config cfg.yaml]
[--set trust_region.kl_budget=0.1 ...]`` (another method: ``--method dsrl --set method_options.sigma_z=1.0``).
Without ``--config`` the base is the VLA defaults (frozen reference, batch 8, a 2 × 128 critic); with it, the
file's FinetuneConfig (class defaults for what it leaves out).
"""

from __future__ import annotations

import argparse
import json

from trqam_sdk.cli.args import add_config_arguments, add_run_dir_arguments, config_from_args, int_at_least, on_existing
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.training import rundir

SHORTHANDS = {"--method": "method", "--steps": "steps", "--batch-size": "batch_size", "--flow-steps": "flow_steps",
              "--kl-budget": "trust_region.kl_budget"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="lerobot checkpoint folder or Hub repo id (pi0, pi05, smolvla)")
    p.add_argument("--dataset", required=True, help="LeRobotDataset root folder (with next.reward / next.done)")
    p.add_argument("--repo-id", default=None, help="the dataset's repo id (default: the root folder's name)")
    add_config_arguments(p, FinetuneConfig, SHORTHANDS, config_help_text=(
        "YAML FinetuneConfig (default: the VLA defaults: reference frozen, batch 8, 2 × 128 critic, no trackers)"))
    p.add_argument("--output-dir", required=True, help="run folder (FinetuneConfig.output_dir); the policy is "
                   "written to OUTPUT_DIR/policy")
    add_run_dir_arguments(p)
    p.add_argument("--lora-rank", type=int_at_least(0), default=0,
                   help="train rank-r LoRA adapters on the expert instead (0: the expert itself)")
    p.add_argument("--push-to", default=None, help="Hub repo id to push the fine-tuned checkpoint to")
    p.add_argument("--tiny", action="store_true",
                   help="load pi0/pi0.5 with the tiny test backbone sizes (trqam_sdk.testing.tiny_lerobot), for tests")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.integrations.lerobot.train import finetune_lerobot, vla_defaults

    args.overrides = [*args.overrides, f"output_dir={json.dumps(args.output_dir)}"]
    cfg = config_from_args(args, FinetuneConfig, base=None if args.config else vla_defaults())
    rundir.plan(cfg.output_dir, on_existing(args))  # read-only: a used folder is refused before the VLA loads
    result = finetune_lerobot(cfg, args.policy, args.dataset, repo_id=args.repo_id, lora_rank=args.lora_rank,
                              push_to=args.push_to, tiny=args.tiny,
                              on_existing=on_existing(args))
    if result is not None:
        print(json.dumps(result))
    return 0
