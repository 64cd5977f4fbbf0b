"""Indexer recall at k = 8 and 16 with its ceiling, per length and layer, on the CPU; and, for comparison, the
ceiling of dense-200k's attention (the same backbone trained dense), which no indexer can change.

    python scripts/recall_probe.py --out data/eval/msa-tiny.indexer_recall-cpu-<date>.json

recall: the share of the dense attention mass (group-averaged, per query, averaged over every query token of
one NIAH document) inside the selected blocks. ceiling: the most any k blocks could hold
(msa_lab.api.selection_ceiling). by_distance: the dense mass on the block d blocks before the query's own
(d = 0 is its own block), averaged over queries: how much of it is recent. outside_forced_k16: the same recall
counted only on the mass outside the blocks every query keeps whatever the indexer says (block 0, its own block and
the one before): the share of that mass inside the indexer's free picks (sum over queries of picked mass / sum of
that mass), and that mass's share of the whole. A model that moves its attention into the forced blocks raises
recall without the indexer finding anything; this measures what the indexer finds.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from msa_lab.api import load_model, outside_forced_recall, selection_ceiling
from msa_lab.eval import _examples, _versions, indexer_recall, selecting_top_k


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


def outside_forced(model, lengths, k: int = 16):
    """{length: {recall, mass}} of the attention mass outside the forced blocks (see the module docstring)."""
    out = {}
    for length in lengths:
        ex = next(iter(_examples("niah_single", 1, 0, length=length)))
        with selecting_top_k(model, k):
            cap = model.capture(ex["prompt"], dense_limit=max(lengths) + 16)
        msa = model.config.msa_config()
        picked = free = total = 0.0
        for sel, mass in zip(cap.selected, cap.block_mass):  # [G, N, K], [G, N, nb]
            forced, share = outside_forced_recall(sel, mass, msa)  # per group; weight by each group's free mass
            rest = (1.0 - forced) * mass.sum((1, 2))
            picked += float(np.nansum(share * rest))
            free += float(rest.sum())
            total += float(mass.sum())
        out[str(length)] = {"recall": round(picked / max(free, 1e-12), 3), "mass": round(free / total, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--lengths", default="2048,4096,8192")
    ap.add_argument("--no-dense", action="store_true", help="leave out dense-200k's attention")
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
    res["msa-tiny_outside_forced_k16"] = outside_forced(tiny, lengths)
    print("outside the forced blocks, k = 16:", res["msa-tiny_outside_forced_k16"], flush=True)
    print("msa-tiny attention:", res["msa-tiny_attention"], flush=True)
    if not a.no_dense:
        dense = load_model("dense-200k", "cpu", checkpoint_dir=a.checkpoint_dir)
        res["dense-200k_attention"] = {"sha256": dense.card["sha256"], **dense_ceiling(dense, lengths, (8, 16))}
        print("dense-200k attention:", res["dense-200k_attention"])
    res["seconds"] = round(time.perf_counter() - t0, 1)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
