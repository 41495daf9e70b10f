"""`trqam data`: regenerate an OGBench play dataset (any manipulation domain) in the official format,
multi-process and resumable."""

from __future__ import annotations

import argparse

from trqam_sdk.cli.args import check_out_dir, int_at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trqam_sdk.benchmarks.ogbench.generate import DEFAULT_CACHE, EPISODE_LENGTH, MANIPULATION_DOMAINS

    a = parser.add_argument
    a("--domain", required=True, help=f"one of {', '.join(MANIPULATION_DOMAINS)} (or any env with --random)")
    a("--dataset-type", default="play", help="dataset type in the file name (play; navigate with --random)")
    a("--episodes", type=int_at_least(1), default=1000, help="episodes (OGBench's 1M play sets: 1000 of 1001 rows)")
    a("--val-episodes", type=int_at_least(0), default=None, help="default: a tenth of --episodes")
    a("--episode-length", type=int_at_least(1), default=EPISODE_LENGTH)
    a("--seed", type=int_at_least(0), default=0)
    a("--workers", type=int_at_least(1), default=None, help="processes (default: all cores)")
    a("--episodes-per-shard", type=int_at_least(1), default=5, help="resume granularity")
    a("--out", default=None, help=f"cache root (default {DEFAULT_CACHE})")
    a("--random", action="store_true", help="a correlated-random policy instead of the oracle: NOT expert data, "
      "for official-format test files (e.g. antmaze/humanoidmaze, whose expert checkpoints are not available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.ogbench.generate import generate_dataset

    check_out_dir(args.out, "--out")
    task = f"{args.domain}-{args.dataset_type}-singletask-task1-v0"
    out = generate_dataset(task, episodes=args.episodes, val_episodes=args.val_episodes, seed=args.seed,
                           dataset_dir=args.out, workers=args.workers, episode_length=args.episode_length,
                           episodes_per_shard=args.episodes_per_shard, policy="random" if args.random else "oracle")
    print(f"wrote {out} (load it with dataset_dir={out})")
    return 0
