"""Where a checkpoint's GUI clicks land when they miss: the official GUI eval's screens (msa_lab.eval's seed), each
miss sorted by what lies under the point. Another element of the target's kind means the pointer found the right
kind of thing and the wrong one (its label or window was misread); the target's own label text or nothing at all
means it found the wrong place.

    python scripts/gui_miss_probe.py [--checkpoint-dir DIR] [--n 100] [--seed 0] [--device cpu] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from msa_lab.api import ActionParseError, load_model
from msa_lab.tasks import iter_task


def inside(box, x, y) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def where(meta: dict, x: int, y: int) -> str:
    """What the point (original pixels) lands on, as one of a few classes."""
    elements, t = meta["elements"], meta["elements"][meta["target_index"]]
    if inside(t["box"], x, y):
        return "target"
    if meta.get("dialog") and t["window"] == "main" and inside(meta["dialog"], x, y):
        return "on the dialog above the target's window"
    under = [e for e in elements if not e["occluded"] and inside(e["box"], x, y)]
    if not under:
        return "no element"
    e = under[-1]  # drawn last = on top
    if e["kind"] == t["kind"]:
        return "same kind, same label, other window" if e["label"] == t["label"] else "same kind, other label"
    return f"other kind ({e['kind']})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint-dir", default=None, help="default: data/checkpoints")
    ap.add_argument("--model", default="msa-tiny")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="0 = the official eval's screens")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    model = load_model(a.model, a.device, checkpoint_dir=a.checkpoint_dir)
    rows = []
    for ex in iter_task("gui", a.n, a.seed):
        meta, want = json.loads(ex["meta"]), json.loads(ex["answer"])
        t = meta["elements"][meta["target_index"]]
        try:
            act = model.act(ex["images"][0], meta["instruction"])
        except ActionParseError:
            rows.append({"target": t["kind"], "landed": "unparsed answer"})
            continue
        landed = "wrong action kind" if act.kind != want["kind"] else \
            "no point" if act.x is None else where(meta, act.x, act.y)
        w, h = meta["size"]
        rows.append({"target": t["kind"], "landed": landed, "screen_w": w, "font": meta["font_size"],
                     "point_prob": round(getattr(act, "point_prob", 0.0) or 0.0, 3),
                     "instruction": meta["instruction"]})
    by_target = defaultdict(Counter)
    for r in rows:
        by_target[r["target"]][r["landed"]] += 1
    hits = sum(r["landed"] == "target" for r in rows)
    print(f"GUI clicks on target {hits}/{len(rows)} (seed {a.seed})")
    for k, c in sorted(by_target.items()):
        n = sum(c.values())
        print(f"  {k} ({n}): " + ", ".join(f"{v} {name}" for name, v in c.most_common()))
    misses = Counter(r["landed"] for r in rows if r["landed"] != "target")
    print("  all misses: " + ", ".join(f"{v} {name}" for name, v in misses.most_common()))
    wide = [r for r in rows if r.get("screen_w", 0) >= 600]
    narrow = [r for r in rows if 0 < r.get("screen_w", 0) < 600]
    for name, rs in (("screens < 600 px wide", narrow), ("screens >= 600 px wide", wide)):
        if rs:
            print(f"  {name}: {sum(r['landed'] == 'target' for r in rs) / len(rs):.2f} of {len(rs)}")
    if a.out:
        Path(a.out).write_text(json.dumps({"n": len(rows), "seed": a.seed, "hits": hits, "rows": rows,
                                           "by_target": {k: dict(v) for k, v in by_target.items()}}, indent=1))


if __name__ == "__main__":
    main()
