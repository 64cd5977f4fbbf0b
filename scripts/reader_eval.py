"""Held-out reading figures of a checkpoint's vision encoder, with the per-patch heads saved beside it (by
msa_lab.vision_pretrain or msa_lab.train --patch-aux-weight): msa_lab.vision_pretrain.evaluate on pictures of the
eval seed (never a training seed), GUI labels read by element kind included.

    python scripts/reader_eval.py DIR [DIR ...] [--n 256] [--seed 4242] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from msa_lab.model.checkpoint import load_checkpoint
from msa_lab.train import PatchSupervision, load_patch_heads, parse_tasks
from msa_lab.vision_pretrain import DEFAULT_TASKS, evaluate, held_out, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+", help="checkpoint directories holding msa-tiny and its patch heads")
    ap.add_argument("--model", default="msa-tiny")
    ap.add_argument("--n", type=int, default=256, help="held-out pictures per task")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    res = {}
    for d in a.dirs:
        net, _ = load_checkpoint(a.model, Path(d), device="cpu")
        net.float().eval()
        heads = PatchSupervision(net.cfg.d_model)
        if not load_patch_heads(heads, d, a.model):
            raise SystemExit(f"{d}: no {a.model}.patch_heads.safetensors beside the checkpoint; the heads are what "
                             f"read the encoder's states (train with --patch-aux-weight or msa_lab.vision_pretrain).")
        with torch.no_grad():
            ev = evaluate(net, heads, held_out(net.cfg, parse_tasks(a.tasks), a.n, a.seed), "cpu")
        res[d] = {"sha256": net_sha(d, a.model), "held_out": ev}
        print(f"{d}: {summary(ev)}")
        by = ev.get("gui", {}).get("gui_label", {}).get("read_by_kind")
        if by:
            print("  GUI labels read, by element kind: " + ", ".join(f"{k} {v:.2f}" for k, v in by.items()))
    if a.out:
        Path(a.out).write_text(json.dumps({"seed": a.seed, "n": a.n, "tasks": a.tasks, "results": res}, indent=1) + "\n")


def net_sha(d: str, model: str) -> str:
    return json.loads((Path(d) / f"{model}.json").read_text())["sha256"]


if __name__ == "__main__":
    main()
