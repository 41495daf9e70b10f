"""`trqam bench`: time the finetuner's own update of every method, for the paper config and a small one
(trqam_sdk.profiling.bench): one row per (config, method)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from trqam_sdk.cli.args import add_methods_argument, int_at_least
from trqam_sdk.profiling.bench import ANALYTIC, CONFIGS, run_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", type=int_at_least(1), default=3,
                        help="timed updates per (config, method) (median reported; one paper-config update takes "
                             "1-7 s per method on 2 shared CPU cores, CGQL-Linex the most)")
    parser.add_argument("--warmup", type=int_at_least(0), default=None,
                        help="untimed updates first (default 1; 2 with --compile, which compiles on the first "
                             "and recompiles on the second)")
    parser.add_argument("--configs", default="paper,small", help=f"comma list of {sorted(CONFIGS)}")
    add_methods_argument(parser, ["all"], "all (every registered fine-tuning method)")
    parser.add_argument("--threads", type=int_at_least(0), default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-count", action="store_true",
                        help=f"skip the counted check of the analytic FLOPs ({', '.join(ANALYTIC)}); the "
                             "other methods' FLOPs are always counted")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="route the MLP/ensemble forwards through torch.compile, as TRQAM_COMPILE=1 does "
                             "(default: eager, what training uses unless TRQAM_COMPILE=1; compiling every method "
                             "costs minutes on CPU)")
    parser.add_argument("--fused-adam", action="store_true",
                        help="Adam(fused=True) instead of the finetuner's default (foreach) Adam")
    parser.set_defaults(func=run)


def format_rows(res: dict[str, Any]) -> str:
    """The table: one row per (config, method); FLOPs analytic (checked: the counted/analytic difference) or
    counted (torch.utils.flop_counter's formulas); utilisation = GFLOP/s ÷ the measured GEMM peak."""
    lines = [f"{'config':<7} {'method':<11} {'ms/step':>9} {'GFLOP/step':>11} {'FLOPs':>9} {'check':>7} "
             f"{'GFLOP/s':>8} {'util':>6}"]
    for name in CONFIGS:
        for method, r in res.get(name, {}).items():
            if "error" in r:
                lines.append(f"{name:<7} {method:<11} FAILED: {r['error']}")
                continue
            check = f"{100 * r['flops_rel_diff']:+6.1f}%" if "flops_rel_diff" in r else f"{'-':>7}"
            lines.append(f"{name:<7} {method:<11} {r['ms_per_step']:9.1f} {r['flops_per_step'] / 1e9:11.3f} "
                         f"{r['flops_source']:>9} {check} {r['gflops_per_s']:8.1f} {r['utilization']:6.3f}")
    lines.append(f"FLOPs: analytic for {', '.join(ANALYTIC)} (check: counted / analytic - 1), counted on one "
                 "update with torch.utils.flop_counter's formulas for the others; util = GFLOP/s / fp32 GEMM peak")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    warmup = (2 if args.compile else 1) if args.warmup is None else args.warmup
    res = run_bench([c.strip() for c in args.configs.split(",") if c.strip()], args.steps, warmup,
                    args.threads or None, not args.no_count, args.compile, args.fused_adam, args.methods)
    failed = any("error" in r for name in CONFIGS for r in res.get(name, {}).values())
    if args.json:
        print(json.dumps(res))
        return 1 if failed else 0
    print(f"torch {res['torch']}, {res['threads']} threads, compile={res['compile']}, "
          f"fp32 GEMM peak {res['peak_gflops']:.1f} GFLOP/s, load {res['load_avg']}")
    if "compile_error" in res:
        print(f"torch.compile failed, eager from then on: {res['compile_error']}")
    print(format_rows(res))
    return 1 if failed else 0
