"""`trqam lerobot-bench`: one TRQAM update vs sampling one chunk, tiny pi0 / pi0.5 / SmolVLA (trqam_sdk.profiling)."""

from __future__ import annotations

import argparse
import json

import torch

from trqam_sdk.cli.args import int_at_least
from trqam_sdk.profiling.lerobot_bench import bench_kind


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kinds", nargs="+", default=["pi0", "pi05", "smolvla"], choices=["pi0", "pi05", "smolvla"])
    p.add_argument("--batch-size", type=int_at_least(1), default=4)
    p.add_argument("--flow-steps", type=int_at_least(1), default=10)
    p.add_argument("--chunk-size", type=int_at_least(1), default=50,
                   help="the models' chunk length (lerobot's default 50)")
    p.add_argument("--image-size", type=int_at_least(1), default=64)
    p.add_argument("--repeats", type=int_at_least(1), default=5)
    p.add_argument("--threads", type=int_at_least(1), default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows = [bench_kind(k, args.batch_size, args.flow_steps, args.chunk_size, args.image_size, args.repeats)
                for k in args.kinds]
    finally:
        torch.set_num_threads(threads)
    if args.json:
        print(json.dumps({"threads": args.threads, "results": rows}, indent=2))
        return 0
    for r in rows:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown_ms"].items())
        print(f"{r['kind']:8s} sample {r['sample_ms']:8.1f} ms  update {r['update_ms']:8.1f} ms  "
              f"ratio {r['ratio']:5.2f}x   [{parts}]")
    return 0
