"""`trqam train`: fine-tune a saved policy on a transitions file with a YAML config (1 or N processes).

``trqam train --data d.npz --config cfg.yaml --set trust_region.kl_budget=0.1``; ``--help`` lists every
FinetuneConfig field.

Multi-process on CPU: ``torchrun --nproc_per_node 2 -m trqam_sdk.cli train ...`` (gloo); on GPUs
``accelerate launch -m trqam_sdk.cli train ...``.
"""

from __future__ import annotations

import argparse

from trqam_sdk.adapters.base import load_policy
from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
from trqam_sdk.cli.args import add_config_arguments, add_run_dir_arguments, config_from_args, int_at_least, on_existing
from trqam_sdk.config import FinetuneConfig
from trqam_sdk.data.files import load_transitions
from trqam_sdk.training import rundir
from trqam_sdk.training.finetuner import Finetuner, pretrain_bc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="transitions .npz")
    p.add_argument("--policy", help="pretrained policy folder or Hub repo id (default: BC-pretrain an MLP)")
    p.add_argument("--horizon", type=int_at_least(1), default=5,
                   help="chunk length H when pretraining a new MLP prior (>= 1)")
    p.add_argument("--bc-steps", type=int_at_least(0), default=1000,
                   help="BC steps when pretraining a new MLP prior (>= 0)")
    add_config_arguments(p, FinetuneConfig, {"--output-dir": "output_dir", "--steps": "steps"})
    add_run_dir_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, FinetuneConfig)
    rundir.plan(cfg.output_dir, on_existing(args))  # read-only: a used folder is refused before any work
    data = load_transitions(args.data)
    if args.policy:
        policy = load_policy(args.policy)
    else:
        pc = cfg.policy
        policy = MLPFlowPolicy(MLPPolicyConfig(data.obs_dim, args.horizon, data.action_dim, pc.width, pc.depth,
                                               pc.layer_norm))
        policy = pretrain_bc(policy, data, args.bc_steps, cfg.batch_size, cfg.lr, cfg.seed, not args.no_progress)
    ft = Finetuner(cfg, policy, data, on_existing=on_existing(args))
    metrics = ft.train(progress=not args.no_progress)
    if ft.accelerator.is_main_process:
        shown = [*ft.agent.progress_keys, "train/nonfinite_skips"]  # the method's own headline metrics
        values = "  ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
        print(f"done: {cfg.method} step {ft.step}  {values}")
    ft.end()
    return 0
