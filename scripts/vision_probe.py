"""Does a checkpoint look at its images? Three numbers on the CPU in about a minute:

    python scripts/vision_probe.py [--checkpoint-dir data/checkpoints] [--out FILE.json]

- image_colour accuracy: one large shape, "What colour is the shape?" (the training-only task);
- image QA accuracy per question kind (colour, shape, count, word; the eval's task, seed 0);
- image dependence: the mean total-variation distance between the answer's first-byte distributions of
  the same question asked about different images (0: the image is ignored).
"""
from __future__ import annotations

import argparse
import collections
import json
import time

import torch

from msa_lab.api import load_model
from msa_lab.eval import _examples, _norm
from msa_lab.model.synthetic import iter_image_colour


@torch.no_grad()
def first_byte_probs(model, prompt: str, image) -> torch.Tensor:
    enc = model.encode(prompt, [image])
    logits = model.net(enc.ids[None].to(model.device), enc.patches.to(model.device), enc.patch_slot.to(model.device))
    return torch.softmax(logits[0, -1].float(), -1).cpu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    m = load_model("msa-tiny", device="cpu", checkpoint_dir=a.checkpoint_dir)
    colour = list(iter_image_colour(a.n, 777))  # the trainer draws seeds from randrange(2**31)
    acc_colour = sum(_norm(m.generate(e["prompt"], e["images"], max_new_tokens=12)) == e["answer"]
                     for e in colour) / len(colour)
    kinds = collections.defaultdict(lambda: [0, 0])
    for e in _examples("image_qa", 100, 0):
        kind = json.loads(e["meta"])["kind"]
        kinds[kind][0] += _norm(m.generate(e["prompt"], e["images"], max_new_tokens=24)) == _norm(e["answer"])
        kinds[kind][1] += 1
    probs = [first_byte_probs(m, e["prompt"], e["images"][0]) for e in colour[:20]]
    tv = [0.5 * (p - q).abs().sum().item() for p, q in zip(probs, probs[1:])]
    res = {"checkpoint_dir": a.checkpoint_dir or "data/checkpoints", "sha256": m.card.get("sha256"),
           "image_colour_accuracy": round(acc_colour, 3),
           "image_qa_by_kind": {k: round(h / n, 3) for k, (h, n) in sorted(kinds.items())},
           "image_qa_n_by_kind": {k: n for k, (_, n) in sorted(kinds.items())},
           "image_dependence_tv": round(sum(tv) / len(tv), 4), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
