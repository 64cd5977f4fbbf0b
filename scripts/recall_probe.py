"""Indexer recall at k = 8 and 16 with its ceiling, per length and layer, on the CPU; and, for comparison, the
ceiling of dense-200k's attention (the same backbone trained dense), which no indexer can change.

    python scripts/recall_probe.py --out data/eval/msa-tiny.indexer_recall-cpu-<date>.json

recall: the share of the dense attention mass (group-averaged, per query, averaged over every query token of
one NIAH document) inside the selected blocks. ceiling: the most any k blocks could hold
(msa_lab.api.selection_ceiling). by_distance: the dense mass on the block d blocks before the query's own
(d = 0 is its own block), averaged over queries: how much of it is recent.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from msa_lab.api import load_model, selection_ceiling
from msa_lab.eval import _examples, _versions, indexer_recall


def dense_ceiling(model, lengths, ks):
    out = {}
    for length in lengths:
        ex = next(iter(_examples("niah_single", 1, 0, length=length)))
        cap = model.capture(ex["prompt"], dense_limit=max(lengths) + 16)
        bs = cap.block_size
        row = {f"ceiling_k{k}": round(float(np.mean([selection_ceiling(m, k).mean() for m in cap.block_mass])), 3)
               for k in ks}
        mass = np.stack(cap.block_mass)  # [L, G, N, nb]
        qb = np.arange(mass.shape[2]) // bs
        dist = qb[:, None] - np.arange(mass.shape[3])[None, :]
        row["by_distance"] = [round(float((mass * (dist == d)).sum(-1).mean()), 3) for d in range(8)]
        row["by_layer_k16"] = [round(float(selection_ceiling(m, 16).mean()), 3) for m in cap.block_mass]
        out[str(length)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--lengths", default="2048,4096,8192")
    a = ap.parse_args()
    lengths = tuple(int(x) for x in a.lengths.split(","))
    t0 = time.perf_counter()
    tiny = load_model("msa-tiny", "cpu", checkpoint_dir=a.checkpoint_dir)
    res = {"model": "msa-tiny", "sha256": tiny.card["sha256"], "versions": _versions(), "device": "CPU",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python scripts/recall_probe.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                 vars(a).items() if v is not None),
           "definition": __doc__.split("\n\n")[2].strip(), "summary": {}}
    for k in (8, 16):
        df = indexer_recall(tiny, lengths=lengths, top_k=k)
        by_len = df.groupby("length")[["recall", "ceiling"]].mean().round(3)
        res["summary"][f"top_k={k}"] = {
            "recall_by_length": {str(i): float(v) for i, v in by_len["recall"].items()},
            "ceiling_by_length": {str(i): float(v) for i, v in by_len["ceiling"].items()},
            "recall": round(float(df["recall"].mean()), 3), "ceiling": round(float(df["ceiling"].mean()), 3)}
        print(f"k={k}: {res['summary'][f'top_k={k}']}", flush=True)
    res["msa-tiny_attention"] = dense_ceiling(tiny, lengths, (8, 16))
    dense = load_model("dense-200k", "cpu", checkpoint_dir=a.checkpoint_dir)
    res["dense-200k_attention"] = {"sha256": dense.card["sha256"], **dense_ceiling(dense, lengths, (8, 16))}
    print("msa-tiny attention:", res["msa-tiny_attention"], "\ndense-200k attention:", res["dense-200k_attention"])
    res["seconds"] = round(time.perf_counter() - t0, 1)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
