"""Can msa-tiny's vision front end learn to read the word in an image-QA "word" picture at all?

The written word is at chance in every vision run (answer loss ln 30), and scripts/word_probe.py finds it
missing from the encoder's output. This trains the front end alone (patch projection, patch positions and the
2-layer bidirectional encoder, the shipped model's architecture) with a linear 30-way word head on the pooled
output, on CPU, for a fixed time, and reports held-out accuracy. If it learns here, the LM's answer pathway (not
the encoder's capacity or the 64-px input) is what fails; if it does not learn at 64 px but does at 128 px, the
resolution is.

    python scripts/word_encoder_probe.py --size 64 --seconds 240 [--fresh] --out FILE.json

Pictures come from the image-QA generator with training seeds (>= 2**20); the test set uses other seeds.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import time

import torch
import torch.nn.functional as F

from msa_lab import load_model
from msa_lab.eval import _versions
from msa_lab.model.vision import prepare_image
from msa_lab.tasks.image_qa import iter_image_qa
from msa_lab.train import resize_patch_pos


def pictures(seed: int, n: int, size: int, patch: int):
    xs, ys = [], []
    for ex in itertools.islice(iter_image_qa(n, seed=seed, kinds=("word",)), n):
        xs.append(prepare_image(ex["images"][0], size).patches(patch))
        ys.append(ex["answer"])
    return torch.stack(xs), ys  # [n, P, patch_dim]


class WordReader(torch.nn.Module):
    def __init__(self, net, n_words: int, patches: int, fresh: bool):
        super().__init__()
        self.proj, self.vision = copy.deepcopy(net.patch_proj), copy.deepcopy(net.vision)
        pos = resize_patch_pos(net.patch_pos.weight.detach(), patches)
        self.pos = torch.nn.Parameter(pos)
        if fresh:
            for m in (self.proj, self.vision):
                for p in m.parameters():
                    torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.zeros_(p)
            for blk in self.vision.blocks:  # RMSNorm gains back to 1
                blk.attn_norm.weight.data.fill_(1.0)
                blk.mlp_norm.weight.data.fill_(1.0)
            self.vision.norm.weight.data.fill_(1.0)
            torch.nn.init.normal_(self.pos, std=0.02)
        d = pos.shape[1]
        self.head = torch.nn.Linear(2 * d, n_words)

    def forward(self, x):  # x [B, P, patch_dim]
        b, p, _ = x.shape
        pe = self.proj(x) + self.pos[None]
        slot = torch.arange(p).repeat(b)
        _, hidden = self.vision(pe.reshape(b * p, -1), slot)
        h = hidden.view(b, p, -1)
        return self.head(torch.cat([h.mean(1), h.amax(1)], -1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--fresh", action="store_true", help="start the front end from random weights, not msa-tiny's")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = load_model("msa-tiny", "cpu")
    cfg = model.config
    t0 = time.perf_counter()
    xa, ya = pictures(2**20 + 101, a.n_train, a.size, cfg.patch_size)
    xb, yb = pictures(2**20 + 202, a.n_test, a.size, cfg.patch_size)
    words = sorted(set(ya) | set(yb))
    ta = torch.tensor([words.index(w) for w in ya])
    tb = torch.tensor([words.index(w) for w in yb])
    draw_s = time.perf_counter() - t0
    reader = WordReader(model.net.float(), len(words), xa.shape[1], a.fresh)
    opt = torch.optim.AdamW(reader.parameters(), lr=1e-3, weight_decay=0.01)
    curve, step, t1 = [], 0, time.perf_counter()
    while time.perf_counter() - t1 < a.seconds:
        idx = torch.randint(0, len(ta), (64,))
        loss = F.cross_entropy(reader(xa[idx]), ta[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            with torch.no_grad():
                acc = float((reader(xb).argmax(-1) == tb).float().mean())
            curve.append({"step": step, "seconds": round(time.perf_counter() - t1, 1), "loss": round(loss.item(), 3),
                          "test_accuracy": round(acc, 3)})
            print(curve[-1], flush=True)
    res = {"size": a.size, "fresh": a.fresh, "words": len(words), "chance": round(1 / len(words), 3),
           "n_train": a.n_train, "n_test": a.n_test, "draw_seconds": round(draw_s, 1), "steps": step,
           "batch": 64, "curve": curve, "final_test_accuracy": curve[-1]["test_accuracy"] if curve else None,
           "checkpoint_sha256": model.card["sha256"], "versions": _versions(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": "python scripts/word_encoder_probe.py "
           + " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(a).items()
                      if v is not False)}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
