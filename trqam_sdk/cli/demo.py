"""`trqam demo`: the main job (BC → TRQAM on regenerated OGBench cube-single, both evaluated, printed, plotted)."""

from __future__ import annotations

import argparse

from trqam_sdk.benchmarks.ogbench.demo import DemoOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `trqam demo` (the fields of :class:`DemoOptions`)."""
    d = DemoOptions()
    a = parser.add_argument
    a("--task", default=d.task, help="OGBench singletask play name (dataset regenerated offline)")
    a("--dataset-episodes", type=int, default=d.dataset_episodes, help="play episodes to regenerate (1000 rows each)")
    a("--data-dir", default=None, help="dataset cache folder (default ~/.cache/trqam/ogbench)")
    a("--data-seed", type=int, default=d.data_seed, help="seed of the regenerated dataset")
    a("--episode-length", type=int, default=d.episode_length, help="rows per regenerated episode (OGBench: 1001)")
    a("--bc-steps", type=int, default=d.bc_steps, help="BC pretraining steps of the prior")
    a("--steps", type=int, default=d.steps, help="TRQAM fine-tuning steps")
    a("--width", type=int, default=d.width, help="actor hidden width (the paper uses 512)")
    a("--critic-width", type=int, default=d.critic_width, help="critic hidden width (the paper uses 512)")
    a("--num-critics", type=int, default=d.num_critics, help="critic ensemble size K (the paper uses 10)")
    a("--critic-tau", type=float, default=d.critic_tau, help="EMA rate of the target critic")
    a("--batch-size", type=int, default=d.batch_size)
    a("--kl-budget", type=float, default=d.kl_budget, help="ε, the path-KL budget (SPEC: 0.5 for cube)")
    a("--flow-steps", type=int, default=d.flow_steps, help="T, Euler steps of the flow")
    a("--episodes", type=int, default=d.episodes,
      help="evaluation episodes per policy (default %(default)s; success is printed with a 95%% Wilson interval)")
    a("--eval-max-steps", type=int, default=None, help="episode time limit in evaluation (env default: 200)")
    a("--seeds", type=int, nargs="+", default=d.seeds, help="training seeds; several print mean ± std")
    a("--workers", type=int, default=None, help="processes for data generation and evaluation (default: cores)")
    a("--threads", type=int, default=d.threads,
      help="torch threads for training (0: all cores, or 1 when the machine is already busy: with other "
      "processes on the cores, one thread ran a TRQAM step 3-7x faster than two in our measurements)")
    a("--output-dir", default=d.output_dir)
    a("--no-progress", action="store_true", help="no tqdm bars")
    parser.set_defaults(func=run)


def options(args: argparse.Namespace) -> DemoOptions:
    """The parsed flags as :class:`DemoOptions`, range-checked with errors naming the flag."""
    for flag in ("dataset_episodes", "episode_length", "steps", "width", "critic_width", "num_critics", "batch_size",
                 "flow_steps", "episodes"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"trqam demo: --{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.bc_steps < 0 or args.threads < 0:
        raise SystemExit("trqam demo: --bc-steps and --threads must be >= 0")
    return DemoOptions(task=args.task, dataset_episodes=args.dataset_episodes, data_dir=args.data_dir,
                       data_seed=args.data_seed, episode_length=args.episode_length, bc_steps=args.bc_steps,
                       steps=args.steps, width=args.width, critic_width=args.critic_width,
                       num_critics=args.num_critics, critic_tau=args.critic_tau, batch_size=args.batch_size,
                       kl_budget=args.kl_budget, flow_steps=args.flow_steps, episodes=args.episodes,
                       eval_max_steps=args.eval_max_steps, seeds=list(args.seeds), workers=args.workers,
                       threads=args.threads, output_dir=args.output_dir, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.ogbench.demo import run_demo

    run_demo(options(args))
    return 0
