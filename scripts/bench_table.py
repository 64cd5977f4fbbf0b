#!/usr/bin/env python
"""Print the README "Performance" section (markdown) from `msa-lab bench` results.

    python scripts/bench_table.py data/bench/2025-01-01-nvidia-h100-80gb-hbm3.json
    python scripts/bench_table.py A.json B.json --merged-out data/bench/X.json   # runs split over calls
    python scripts/bench_table.py X.json --rows                                  # every row, one line each

The card and the torch / triton / CUDA versions are in the caption line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from msa_lab.bench import load_json, merge_results, render_markdown, render_rows, write_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results JSON written by python -m msa_lab.bench")
    ap.add_argument("--rows", action="store_true", help="also print every row (long format)")
    ap.add_argument("--merged-out", default=None, help="write the merged results of several files here")
    args = ap.parse_args(argv)
    try:
        parts = [load_json(p) for p in args.results]
        d = merge_results(parts) if len(parts) > 1 else parts[0]
    except (OSError, ValueError) as e:
        print(f"bench_table: {e}", file=sys.stderr)
        return 2
    if args.merged_out:
        write_json(d, Path(args.merged_out))
    print(render_markdown(d))
    if args.rows:
        print("\n" + render_rows(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
