"""`trqam` command line: demo (the main job), bench, train."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trqam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from trqam_sdk import bench, demo

    demo.add_arguments(sub.add_parser("demo", help="BC → TRQAM on regenerated OGBench cube-single, evaluated"))
    bench.add_arguments(sub.add_parser("bench", help="time one full update; FLOPs and GEMM utilisation"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
