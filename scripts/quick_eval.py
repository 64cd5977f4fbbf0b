"""A few-minute check of freshly trained checkpoints (used at the end of a GPU training call).

    python scripts/quick_eval.py --checkpoint-dir DIR --out FILE.json [--lengths 4096,16384,65536]
    # the NIAH grid alone on the CPU, every depth (the issue's CPU grid goes to 64K):
    python scripts/quick_eval.py --device cpu --models msa-tiny --lengths 4K,16K,64K \
        --depths 0,0.25,0.5,0.75,1 --n 1 --n-vision 0 --out FILE.json

Prints one line per model and writes the figures (with each model's sha256) to FILE.json; the full
eval is msa_lab.eval.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from msa_lab.api import load_model
from msa_lab.bench import parse_lengths
from msa_lab.eval import _examples, _versions, gui_click_accuracy, image_qa_accuracy, indexer_recall, niah_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint-dir", default=None, help="default: data/checkpoints")
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="msa-tiny,dense-200k")
    ap.add_argument("--lengths", default="4096,16384,65536", help="e.g. 4K,64K,1M (K = 1024)")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--n", type=int, default=2, help="NIAH questions per (length, depth)")
    ap.add_argument("--n-vision", type=int, default=20, help="GUI and image-QA examples (0: skip them)")
    ap.add_argument("--seed", type=int, default=0, help="NIAH seed (1 = held out from the shipped evals)")
    ap.add_argument("--vision-seed", type=int, default=12345,
                    help="GUI and image-QA seed (0 = the official eval's; both are below every training seed)")
    ap.add_argument("--recall", default="", help="indexer recall at k = 16 at these lengths (MSA models), e.g. 2K,4K,8K")
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    lengths = parse_lengths(a.lengths)
    depths = [float(x) for x in a.depths.split(",") if x]
    res = {"versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}}
    for name in a.models.split(","):
        t0 = time.perf_counter()
        model = load_model(name, a.device, checkpoint_dir=a.checkpoint_dir)
        chunk = 16384 if model.device.type == "cuda" else 4096  # CPU: bounded scratch memory
        grid = niah_grid(model, lengths=lengths, depths=depths, n=a.n, chunk_size=chunk, seed=a.seed)
        r = {"sha256": model.card.get("sha256"), "device": str(model.device), "niah": grid.to_dict(orient="records"),
             "niah_by_length": grid.groupby("length")["accuracy"].mean().round(3).to_dict()}
        line = f"{name}: niah {r['niah_by_length']}"
        if a.n_vision:
            r["gui"] = gui_click_accuracy(model, n=a.n_vision, seed=a.vision_seed)
            r["image_qa"] = image_qa_accuracy(model, n=a.n_vision, seed=a.vision_seed)
            r["vision_seed"] = a.vision_seed
            line += (f" gui {r['gui']['accuracy']:.2f} (kind {r['gui']['kind_accuracy']:.2f}; {r['gui']['by_target']})"
                     f" image_qa {r['image_qa']['accuracy']:.2f} ({r['image_qa']['by_kind']})")
            print(f"{line} [{time.perf_counter() - t0:.1f} s so far]", flush=True)  # a time box may end the rest
        if a.recall and model.config.sparse:
            recall_lengths = parse_lengths(a.recall)
            rec = indexer_recall(model, lengths=recall_lengths, top_k=16)
            by_len = rec.groupby("length")[["recall", "ceiling"]].mean().round(3)
            r["recall_k16"] = {"recall_by_length": by_len["recall"].to_dict(), "ceiling_by_length": by_len["ceiling"].to_dict(),
                               "recall": round(float(rec["recall"].mean()), 3),
                               "ceiling": round(float(rec["ceiling"].mean()), 3),
                               "by_layer": rec.groupby("layer")["recall"].mean().round(3).to_dict()}
            # how much dense mass the first block (the attention sink's) holds, per layer, for queries past 16 blocks
            longest = max(recall_lengths)
            ex = next(iter(_examples("niah_single", 1, 0, length=longest)))
            cap = model.capture(ex["prompt"], dense_limit=longest + 16)
            far = 16 * cap.block_size
            r["recall_k16"]["block0_mass_by_layer"] = {
                "length": longest, "mass": [round(float(m[:, far:, 0].mean()), 3) for m in cap.block_mass]}
            line += (f" recall k=16 {r['recall_k16']['recall']} {r['recall_k16']['recall_by_length']}"
                     f" block-0 mass at {longest} {r['recall_k16']['block0_mass_by_layer']['mass']}")
        r["seconds"] = round(time.perf_counter() - t0, 1)
        res["models"][name] = r
        print(f"{line} [{r['seconds']} s]", flush=True)
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2, default=str)


if __name__ == "__main__":
    main()
