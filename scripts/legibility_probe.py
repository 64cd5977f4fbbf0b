"""How legible GUI text is at a model's image size: a small CNN trained from scratch to name the label in a strip cut
from a screen, as msa_lab.tasks.gui draws it (its fonts, sizes, themes, screen sizes), after the resize to S x S
pixels that msa_lab.model.vision.prepare_image does. One run per image side S; the same network and steps for each.
What the CNN reaches on held-out strips bounds what any encoder can read from that many pixels, whatever its
training: if 256 px caps well below 512 px, resolution limits GUI grounding; if both reach ~1.0, it does not.

    python scripts/legibility_probe.py [--sizes 256,512] [--steps 1500] [--out FILE.json]

Strips: one label each (67 classes: msa_lab.tasks.vocab.gui_labels), at the GUI's font size for the screen (captions
3 px smaller, as toolbar icons draw them), on a theme's window colour, shifted by 0-3 px; the screen's two axes scale
apart (prepare_image squashes to a square), so each strip is resized by S/W and S/H. Every strip is then placed on
a canvas of the 512-px case's size (nearest-upsampled for smaller S), so the networks see the same shapes.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

from msa_lab.tasks.draw import draw_text, text_size
from msa_lab.tasks.gui import THEMES
from msa_lab.tasks.vocab import TOOLBAR_ICONS, gui_labels

LABELS = gui_labels()
CANVAS = (160, 24)  # (w, h) at 512 px: the widest label at the smallest scale fits


def strip(rng: random.Random, side: int) -> tuple:
    """-> (uint8 [3, CANVAS_h, CANVAS_w], label index): one label as a GUI screen of random size shows it at side px."""
    w, h = rng.randint(400, 800), rng.randint(300, 600)
    fs = max(10, min(16, round(min(w, h) / 32) + rng.randint(-1, 1)))
    c = rng.randrange(len(LABELS))
    text = LABELS[c]
    if text in TOOLBAR_ICONS and rng.random() < 0.5:
        fs = max(9, fs - 3)  # a toolbar caption
    theme = THEMES[rng.choice(tuple(THEMES))]
    tw, th = text_size(text, fs)
    img = Image.new("RGB", (tw + 12, th + 12), theme.window)
    draw_text(ImageDraw.Draw(img), (3 + rng.randint(0, 3), 3 + rng.randint(0, 3)), text, fs, theme.text)
    sx, sy = side / w, side / h
    small = img.resize((max(1, round(img.width * sx)), max(1, round(img.height * sy))), Image.BICUBIC)
    up = 512 // side
    small = small.resize((small.width * up, small.height * up), Image.NEAREST)
    canvas = Image.new("RGB", CANVAS, theme.window)
    canvas.paste(small, (0, 0))
    return torch.from_numpy(np.array(canvas, dtype=np.uint8)).permute(2, 0, 1), c


def batch(rng: random.Random, side: int, n: int):
    xs, ys = zip(*(strip(rng, side) for _ in range(n)))
    return torch.stack(xs).float().div(127.5).sub(1.0), torch.tensor(ys)


class Reader(nn.Module):
    def __init__(self, classes: int, c: int = 32):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
                                   nn.GELU(), nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.GELU())
        self.head = nn.Linear(4 * c * (CANVAS[1] // 4) * 4, classes)

    def forward(self, x):
        x = self.convs(x)  # [B, 4c, 6, 40]
        x = F.adaptive_avg_pool2d(x, (x.shape[2], 4))  # keep rows, pool columns to 4: position-tolerant
        return self.head(x.flatten(1))


def run(side: int, steps: int, bs: int, seed: int) -> dict:
    torch.manual_seed(seed)
    rng, test_rng = random.Random(f"train/{seed}"), random.Random("held-out")
    xt, yt = batch(test_rng, side, 2000)
    net = Reader(len(LABELS))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    curve, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        x, y = batch(rng, side, bs)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 6) == 0 or step == steps:
            with torch.no_grad():
                acc = float((net(xt).argmax(-1) == yt).float().mean())
            curve.append({"step": step, "loss": round(loss.item(), 4), "held_out_acc": round(acc, 4)})
            print(f"  {side} px: step {step} loss {loss.item():.3f} held-out {acc:.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return {"side": side, "steps": steps, "batch": bs, "held_out_n": len(yt), "curve": curve,
            "final_acc": curve[-1]["held_out_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = {"classes": len(LABELS), "canvas": CANVAS, "runs": [run(int(s), a.steps, a.batch, a.seed)
                                                              for s in a.sizes.split(",")]}
    for r in out["runs"]:
        print(f"{r['side']} px: held-out label accuracy {r['final_acc']:.3f} after {r['steps']} steps")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
