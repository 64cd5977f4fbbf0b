"""A few-minute check of freshly trained checkpoints (used at the end of a GPU training call).

    python scripts/quick_eval.py --checkpoint-dir DIR --out FILE.json [--lengths 4096,16384,65536]

Prints one line per model and writes the figures to FILE.json; the full eval is msa_lab.eval.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from msa_lab.api import load_model
from msa_lab.eval import _versions, gui_click_accuracy, image_qa_accuracy, niah_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="msa-tiny,dense-200k")
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--n-vision", type=int, default=20)
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",") if x]
    res = {"versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}}
    for name in a.models.split(","):
        t0 = time.perf_counter()
        model = load_model(name, checkpoint_dir=a.checkpoint_dir)
        grid = niah_grid(model, lengths=lengths, depths=(0.1, 0.5, 0.9), n=a.n, chunk_size=16384)
        r = {"niah": grid.to_dict(orient="records"),
             "niah_by_length": grid.groupby("length")["accuracy"].mean().round(3).to_dict(),
             "gui": gui_click_accuracy(model, n=a.n_vision, seed=12345),
             "image_qa": image_qa_accuracy(model, n=a.n_vision, seed=12345),
             "seconds": round(time.perf_counter() - t0, 1)}
        res["models"][name] = r
        print(f"{name}: niah {r['niah_by_length']} gui {r['gui']['accuracy']:.2f} "
              f"(kind {r['gui']['kind_accuracy']:.2f}) image_qa {r['image_qa']['accuracy']:.2f} [{r['seconds']} s]",
              flush=True)
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2, default=str)


if __name__ == "__main__":
    main()
