"""Does a checkpoint copy from far back, and does its indexer find the source? (CPU, teacher-forced)

    python scripts/copy_eval.py --checkpoint-dir DIR [--model msa-tiny] [--lengths 1024,4096] [--n 4]

One line per (task, length, mode) from msa_lab.eval.copy_scores: greedy next-byte accuracy and loss on
the answer, and on the "copied" bytes only (past each string's 4-byte cue, which the question gives).
Modes: dense (every key) and msa (the indexer's top_k blocks through the public ops).
Tasks: copy_lines (no haystack), copy_random (4 strings in random ASCII), copy (4 strings in stdlib
source, like NIAH). Chance on a copied byte: accuracy 1/36, loss ln 36 = 3.58.
"""
from __future__ import annotations

import argparse
import json

import torch

from msa_lab.api import load_model
from msa_lab.eval import _versions, copy_scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint-dir", required=True)
    ap.add_argument("--model", default="msa-tiny")
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--tasks", default="copy_random,copy_lines")
    ap.add_argument("--modes", default="dense,msa", help="dense and/or msa (dense-200k: msa is ignored)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=777, help="differs from every training seed")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    model = load_model(a.model, device="cpu", checkpoint_dir=a.checkpoint_dir)
    modes = a.modes.split(",") if model.config.sparse else ["dense"]
    rows = []
    for task in a.tasks.split(","):
        for length in (int(x) for x in a.lengths.split(",")):
            for mode in modes:
                rows.append(copy_scores(model, task, length, a.n, a.seed, mode))
                print(json.dumps(rows[-1]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"checkpoint_dir": a.checkpoint_dir, "model": a.model, "seed": a.seed, "versions": _versions(),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
