"""`trqam bench`: time the finetuner's own update for the paper config and a small one (trqam_sdk.profiling)."""

from __future__ import annotations

import argparse
import json

from trqam_sdk.profiling.bench import CONFIGS, run_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", type=int, default=7, help="timed updates per config (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--configs", default="paper,small", help=f"comma list of {sorted(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-count", action="store_true", help="skip the FlopCounterMode check")
    parser.add_argument("--no-compile", action="store_true",
                        help="eager MLP/ensemble forwards (default: torch.compile, as TRQAM_COMPILE=1 does)")
    parser.add_argument("--fused-adam", action="store_true",
                        help="Adam(fused=True) instead of the finetuner's default (foreach) Adam")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = run_bench([c.strip() for c in args.configs.split(",") if c.strip()], args.steps, args.warmup,
                    args.threads or None, not args.no_count, not args.no_compile, args.fused_adam)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"torch {res['torch']}, {res['threads']} threads, compile={res['compile']}, "
          f"fp32 GEMM peak {res['peak_gflops']:.1f} GFLOP/s, load {res['load_avg']}")
    print(f"{'config':<8} {'ms/step':>9} {'GFLOP/step':>11} {'counted':>9} {'GFLOP/s':>9} {'util':>6}")
    for name, r in res.items():
        if isinstance(r, dict) and "ms_per_step" in r:
            counted = f"{r['flops_counted'] / 1e9:9.3f}" if "flops_counted" in r else f"{'-':>9}"
            print(f"{name:<8} {r['ms_per_step']:9.1f} {r['flops_per_step'] / 1e9:11.3f} {counted} "
                  f"{r['gflops_per_s']:9.1f} {r['utilization']:6.3f}")
    return 0
