"""CPU probe (thirteenth session): does a conv stem that sees across patch borders learn to read faster than the
per-patch stem? Trains only the front end and encoder of a model (msa_lab.vision_pretrain's TRAINED parts) on the
per-patch labels of word pictures (--tasks: any of msa_lab.vision_pretrain.VISION_TASKS), and logs held-out read
accuracy.

    python scripts/stem_probe.py --stem patch --minutes 30 --out /tmp/probe-patch.jsonl
    python scripts/stem_probe.py --stem image --minutes 30 --out /tmp/probe-image.jsonl

--stem patch: msa_lab.model.net.PatchStem (each patch convolved alone, zero padding at its borders).
--stem image: msa_lab.model.net.ImageStem (ModelConfig.stem_scope = "image"), the same three convolutions run
over the whole picture, then cut into each patch's cells, so a glyph cut by a patch border is seen whole by both
patches. (The runs in data/train/probes/stem-2026-12-07 used this script's own copy of that class, which became
ImageStem: the same computation, with its initial weights drawn in another order.)
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from msa_lab.model.config import small_config  # noqa: E402
from msa_lab.model.net import MSATransformer  # noqa: E402
from msa_lab.train import PATCH_HEADS, PatchSupervision  # noqa: E402
from msa_lab.vision_pretrain import TRAINED, draw_pictures, encoder_states, evaluate, held_out, summary  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stem", choices=["patch", "image"], required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tasks", default="image_qa_word:1")
    ap.add_argument("--eval-n", type=int, default=64)
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=128, help="d_model of the probe's encoder")
    ap.add_argument("--vision-layers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--stem-channels", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--replay", type=int, default=1,
                    help="updates per drawn batch: the fresh one, then replay - 1 from the last 32 drawn, at random")
    ap.add_argument("--save", default=None, help="write the trained weights (safetensors) here at the end")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = small_config("msa", name="stem-probe", d_model=a.width, n_heads=4, head_dim=a.width // 4, n_layers=1,
                       d_ff=2 * a.width, vision_layers=a.vision_layers, image_size=a.image_size,
                       patch_size=a.patch_size, patch_stem=a.stem_channels, stem_scope=a.stem)
    net = MSATransformer(cfg)  # fresh: the probe compares how fast each front end learns from nothing
    heads = PatchSupervision(cfg.d_model)
    for n, p in net.named_parameters():
        p.requires_grad_(n.startswith(TRAINED))
    trained = [p for p in net.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(trained, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.05)
    tasks = {k: float(w) for k, w in (t.split(":") for t in a.tasks.split(","))}
    data = held_out(cfg, tasks, a.eval_n, 4242)
    budget, t0, last, step, pics, updates = a.minutes * 60, time.perf_counter(), -1e9, 0, 0, 0
    recent, rng = [], random.Random(f"probe-replay/{a.seed}")
    with open(a.out, "w") as f:
        while True:
            el = time.perf_counter() - t0
            if el - last >= a.eval_every * 60 or el > budget:
                net.eval()
                ev = evaluate(net, heads, data, "cpu", batch=32)
                net.train()
                rec = {"stem": a.stem, "batch": a.batch, "replay": a.replay, "seed": a.seed, "step": step,
                       "updates": updates, "pictures": pics, "seconds": round(el, 1), "held_out": ev}
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(f"{a.stem} batch {a.batch} replay {a.replay} {el:.0f}s step {step} updates {updates} "
                      f"pictures {pics}: {summary(ev)}", flush=True)
                last = el
                if el > budget:
                    break
            pixels, labels = draw_pictures(cfg, tasks, random.Random(f"probe/{a.seed}/{step}").randrange(2**31), a.batch)
            lr = a.lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, el / budget))))
            for g in opt.param_groups:
                g["lr"] = lr
            recent = (recent + [(pixels, labels)])[-32:]
            for k in range(a.replay):
                px, lab = (pixels, labels) if k == 0 else recent[rng.randrange(len(recent))]
                loss = heads.loss(encoder_states(net, px), lab.view(-1, len(PATCH_HEADS)), balanced=True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                opt.step()
            step, pics, updates = step + 1, pics + len(pixels), updates + a.replay
    if a.save:
        from safetensors.torch import save_file

        keep = {k: v.contiguous() for k, v in net.state_dict().items() if k.startswith(TRAINED)}
        keep.update({f"heads.{k}": v.contiguous() for k, v in heads.state_dict().items()})
        save_file(keep, a.save, metadata={"stem": a.stem, "pictures": str(pics), "steps": str(step)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
