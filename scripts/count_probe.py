"""Where a checkpoint miscounts: image-QA count questions only (msa_lab.tasks.image_qa, kinds=("count",)), on an
eval seed, by the true count and by what the question filters on (shape, colour or both). The official image-QA
eval asks ~30 count questions among 100, too few to tell which counts fail.

    python scripts/count_probe.py [--checkpoint-dir DIR] [--n 300] [--seed 0] [--device cpu] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from msa_lab.api import load_model
from msa_lab.eval import _norm
from msa_lab.tasks import iter_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint-dir", default=None, help="default: data/checkpoints")
    ap.add_argument("--model", default="msa-tiny")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="an eval seed (training draws from seeds >= 2**20)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    model = load_model(a.model, a.device, checkpoint_dir=a.checkpoint_dir)
    rows = []
    for ex in iter_task("image_qa", a.n, a.seed, kinds=("count",)):
        meta = json.loads(ex["meta"])
        pred = _norm(model.generate(ex["prompt"], ex["images"], max_new_tokens=8))
        t, (w, h), g = meta["target"], meta["size"], model.net.cfg.image_size // model.net.cfg.patch_size
        cells = {(int((o["box"][0] + o["box"][2]) / 2 * g / w), int((o["box"][1] + o["box"][3]) / 2 * g / h))
                 for o in meta["objects"] if t["shape"] in (None, o["shape"]) and t["colour"] in (None, o["colour"])}
        rows.append({"truth": int(ex["answer"]), "pred": pred, "mode": t["mode"], "objects": len(meta["objects"]),
                     "ok": pred == ex["answer"], "shared_patch": int(ex["answer"]) - len(cells)})
    by_truth, by_mode, by_objects = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in rows:
        by_truth[r["truth"]].append(r)
        by_mode[r["mode"]].append(r)
        by_objects[r["objects"]].append(r)

    def acc(rs):
        return round(sum(r["ok"] for r in rs) / len(rs), 3)

    def off(rs):  # signed error of numeric answers: does it undercount or overcount?
        d = [int(r["pred"]) - r["truth"] for r in rs if r["pred"].isdigit()]
        return Counter(d).most_common(4)

    out = {"checkpoint_dir": str(a.checkpoint_dir or "data/checkpoints"), "n": len(rows), "seed": a.seed,
           "accuracy": acc(rows),
           "by_truth": {k: {"n": len(v), "acc": acc(v), "errors": off([r for r in v if not r["ok"]])}
                        for k, v in sorted(by_truth.items())},
           "by_mode": {k: {"n": len(v), "acc": acc(v)} for k, v in sorted(by_mode.items())},
           "by_objects_drawn": {k: {"n": len(v), "acc": acc(v)} for k, v in sorted(by_objects.items())},
           # counted objects whose centres share a patch with another counted one: does a patch count once?
           "with_shared_patch": {"n": len(shared := [r for r in rows if r["shared_patch"]]),
                                 "acc": acc(shared) if shared else None},
           "rows": rows}
    print(f"count accuracy {out['accuracy']} (n {len(rows)}, seed {a.seed})")
    for k, v in out["by_truth"].items():
        print(f"  truth {k}: {v['acc']:.2f} of {v['n']}; errors (pred - truth, n): {v['errors']}")
    print("  by mode: " + ", ".join(f"{k} {v['acc']:.2f} ({v['n']})" for k, v in out["by_mode"].items()))
    print("  by objects drawn: " + ", ".join(f"{k}: {v['acc']:.2f} ({v['n']})" for k, v in out["by_objects_drawn"].items()))
    sp = out["with_shared_patch"]
    print(f"  questions where two counted objects' centres share a patch: {sp['n']}, accuracy {sp['acc']}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
