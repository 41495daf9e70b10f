"""`trqam lerobot-bench`: one TRQAM update vs sampling one chunk, pi0 / pi0.5 / SmolVLA, tiny or at real size.

``--size tiny`` (default) builds the tiny test models; ``--size real`` the released shapes with random weights
(SmolVLA ≈ 450 M parameters, pi0 ≈ 4.0 B as lerobot builds it: mind the memory). ``--estimate-batches``
adds the meta-tensor memory estimate at other batch sizes (no allocation), ``--checkpoint-sizes`` saves one
training checkpoint and reports its parts' sizes (trqam_sdk.profiling.lerobot_bench).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from trqam_sdk.cli.args import int_at_least
from trqam_sdk.profiling.lerobot_bench import bench_kind, estimate_only

KINDS = ["pi0", "pi05", "smolvla"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    p.add_argument("--size", choices=["tiny", "real"], default="tiny",
                   help="tiny test models (default) or the released shapes with random weights")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int_at_least(1), default=4)
    p.add_argument("--flow-steps", type=int_at_least(1), default=10)
    p.add_argument("--chunk-size", type=int_at_least(1), default=50,
                   help="the models' chunk length (lerobot's default 50)")
    p.add_argument("--image-size", type=int_at_least(1), default=None,
                   help="camera resolution (default: 64 tiny; the model's own at real size: 512 SmolVLA, 224 pi)")
    p.add_argument("--cameras", type=int_at_least(1), default=1, help="number of cameras (real size only)")
    p.add_argument("--reference", choices=["frozen", "ema"], default="frozen")
    p.add_argument("--lora-rank", type=int_at_least(0), default=0, help="LoRA on the expert instead of full training")
    p.add_argument("--vlm-dtype", choices=["float32", "bfloat16"], default=None,
                   help="dtype of the frozen VLM / prefix (default: the adapter's, float32)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the expert")
    p.add_argument("--estimate-batches", nargs="*", type=int_at_least(1), default=[],
                   help="also estimate the peak memory of one update / sample at these batch sizes (meta tensors)")
    p.add_argument("--estimate-only", action="store_true",
                   help="only the memory estimates (no model is allocated: pi0 at real size fits anywhere)")
    p.add_argument("--checkpoint-sizes", action="store_true",
                   help="save one training checkpoint and report the size of its parts vs the policy alone")
    p.add_argument("--repeats", type=int_at_least(1), default=5)
    p.add_argument("--threads", type=int_at_least(1), default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    # lerobot prints progress ("Reducing the number of VLM layers ...") on stdout: keep stdout for the JSON
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json or args.estimate_only else contextlib.nullcontext()
    try:
        with quiet:
            if args.estimate_only:
                rows = [estimate_only(k, args.flow_steps, args.chunk_size, args.image_size, size=args.size,
                                      n_images=args.cameras, reference=args.reference, lora_rank=args.lora_rank,
                                      vlm_dtype=args.vlm_dtype, checkpointing=args.checkpointing,
                                      estimate_batches=args.estimate_batches or [1]) for k in args.kinds]
            else:
                rows = [bench_kind(k, args.batch, args.flow_steps, args.chunk_size, args.image_size, args.repeats,
                                   size=args.size, n_images=args.cameras, reference=args.reference,
                                   lora_rank=args.lora_rank, vlm_dtype=args.vlm_dtype,
                                   checkpointing=args.checkpointing, estimate_batches=args.estimate_batches,
                                   checkpoint_sizes=args.checkpoint_sizes) for k in args.kinds]
    finally:
        torch.set_num_threads(threads)
    if args.json or args.estimate_only:  # the estimate alone is always JSON
        print(json.dumps({"threads": args.threads, "results": rows}, indent=2))
        return 0
    for r in rows:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown_ms"].items())
        ps, pu = r["passes"]["sample"], r["passes"]["update"]
        m, p = r["memory"], r["params"]
        print(f"{r['kind']:8s} {r['size']} batch {r['batch']}: sample {r['sample_ms']:8.1f} ms  update "
              f"{r['update_ms']:8.1f} ms  ratio {r['ratio']:5.2f}x   [{parts}]")
        print(f"         passes sample {ps['prefix']} prefix / {ps['expert_rows']} expert rows, update "
              f"{pu['prefix']} / {pu['expert_rows']}; params {p['policy_total'] / 1e6:.1f} M "
              f"(trainable {p['policy_trainable'] / 1e6:.1f} M); peak RSS {m['process_peak_rss_gib']:.2f} GiB "
              f"(update +{m['update_rss_growth_gib']:.2f})")
        for b, e in r.get("estimate", {}).items():
            print(f"         estimate batch {b}: update {e['update_peak_gib']:.2f} GiB "
                  f"(activations {e['activations_at_peak_gib']:.2f}), sample {e['sample_peak_gib']:.2f} GiB")
        if "checkpoint" in r:
            c = r["checkpoint"]
            print(f"         checkpoint {c['total_gib']:.2f} GiB {c['parts_gib']} vs policy alone "
                  f"{c['policy_alone_gib']:.2f} GiB")
    return 0
