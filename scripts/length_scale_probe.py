"""Does log-n logit scaling carry dense-200k's needle retrieval from its 8K training length to 204,800?

    python scripts/length_scale_probe.py --out FILE.json [--bases none,4096,8192,16384] \
        [--lengths 16K,64K,128K,204752] [--n 2]

One loaded checkpoint, one NIAH grid per ``length_scale_base`` (ModelConfig; switched in place with
MSATransformer.set_inference_config, so every setting sees the same weights and the same questions).
Prints a line per setting and writes the grids with the card and versions to FILE.json.
"""
from __future__ import annotations

import argparse
import json
import time

from msa_lab.api import load_model
from msa_lab.bench import parse_lengths
from msa_lab.eval import _versions, niah_grid


def parse_bases(text: str) -> list:
    out = []
    for x in text.split(","):
        x = x.strip().lower()
        if x:
            out.append(None if x in ("none", "off", "0") else parse_lengths(x)[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="dense-200k")
    ap.add_argument("--bases", default="none,4096,8192,16384", help="length_scale_base values; none = off")
    ap.add_argument("--lengths", default="16K,64K,128K,204752")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--n", type=int, default=2, help="questions per (length, depth)")
    ap.add_argument("--seed", type=int, default=1,
                    help="question seed (default 1: msa_lab.eval's grid uses 0, so a base chosen here is not tuned on it)")
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    model = load_model(a.model, a.device)
    chunk = 16384 if model.device.type == "cuda" else 4096
    lengths = parse_lengths(a.lengths)
    depths = [float(x) for x in a.depths.split(",") if x]
    res = {"versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "model": a.model, "sha256": model.card.get("sha256"), "device": str(model.device),
           "shipped_length_scale_base": model.config.length_scale_base, "seed": a.seed, "settings": []}
    for base in parse_bases(a.bases):
        model.net.set_inference_config(length_scale_base=base)
        t0 = time.perf_counter()
        grid = niah_grid(model, lengths=lengths, depths=depths, n=a.n, seed=a.seed, chunk_size=chunk)
        by_len = grid.groupby("length")["accuracy"].mean().round(3).to_dict()
        res["settings"].append({"length_scale_base": base, "niah": grid.to_dict(orient="records"),
                                "niah_by_length": by_len, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{a.model} length_scale_base={base}: niah {by_len} [{time.perf_counter() - t0:.0f} s]", flush=True)
        with open(a.out, "w") as f:  # after every setting: a cut call keeps what it measured
            json.dump(res, f, indent=2, default=str)


if __name__ == "__main__":
    main()
