"""NIAH depth x length grid of a shipped model on the CPU (the issue's CPU grid goes to 64K):

    python scripts/cpu_niah_grid.py --model msa-tiny --lengths 4K,16K,64K --n 1 --out data/eval/msa-tiny.niah-cpu.json

Writes the rows, the card's sha256 and the versions; the GPU grid (to 1M) is msa_lab.eval's.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from msa_lab.api import load_model
from msa_lab.bench import parse_lengths
from msa_lab.eval import _versions, niah_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="msa-tiny")
    ap.add_argument("--lengths", default="4K,16K,64K")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    model = load_model(a.model, device="cpu")
    rows = []
    for length in parse_lengths(a.lengths):
        t0 = time.perf_counter()
        df = niah_grid(model, lengths=[length], n=a.n, chunk_size=4096)
        rows += df.to_dict(orient="records")
        print(f"{length:>8,}: accuracy {df['accuracy'].mean():.2f} over {int(df['n'].sum())} questions "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    res = {"model": a.model, "sha256": model.card["sha256"], "device": f"CPU ({os.cpu_count()} cores)",
           "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python scripts/cpu_niah_grid.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()),
           "niah": rows}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
