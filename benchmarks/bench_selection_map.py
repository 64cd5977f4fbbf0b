"""Time SelectionMap control changes; writes data/bench/selection_map-<date>.json.

Two scenarios, each timed over --changes control changes that cycle through layer, KV group, query
position and the dense-mass overlay (the controls that only redraw; prompt and length rerun the
model and show a progress bar instead):

    model     msa-tiny (msa_lab.load_model, so $MSA_LAB_CHECKPOINTS is honoured) on the NIAH prompt at
              --length tokens (default 4096, the widget's default): a real capture with dense mass.
    long      a synthetic causal selection of msa-tiny's shapes at --long-length tokens (default 65536,
              1024 key blocks binned 4 to a cell), no dense mass: the worst case of the 256 x 256 binning.
              Random picks, labelled as such: it times the widget, not the model.

Each change is timed as wall time of the traitlet assignment (observer + recompute + figure update).
Target: median < 0.3 s on a 2-core CPU.

    .venv/bin/python benchmarks/bench_selection_map.py [--changes 24] [--length 4096] [--out data/bench]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mask_explorer import machine_info  # noqa: E402


def synthetic_capture(cfg, n: int, layers: int, groups: int, seed: int = 0):
    """A causal selection for every row: init + local blocks, the rest random visible blocks (-1 padded)."""
    import numpy as np

    from msa_lab.api import Capture

    rng = np.random.default_rng(seed)
    bs, K = cfg.block_size, cfg.top_k
    own = np.arange(n) // bs
    selected = []
    for _ in range(layers):
        sel = np.full((groups, n, K), -1, dtype=np.int32)
        sel[:, :, 0] = 0
        for j in range(cfg.local_blocks):
            sel[:, :, 1 + j] = np.maximum(own - j, 0)
        free = K - 1 - cfg.local_blocks
        dyn = (rng.random((groups, n, free)) * np.maximum(own - cfg.local_blocks, 0)[None, :, None]).astype(np.int32)
        sel[:, :, 1 + cfg.local_blocks:] = np.where(own[None, :, None] > cfg.local_blocks, dyn + 1, -1)
        # duplicates would break nothing in the widget, but keep rows valid selections: -1 any repeat
        srt = np.sort(sel, -1)
        dup = np.zeros_like(srt, dtype=bool)
        dup[..., 1:] = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
        selected.append(np.where(dup, -1, srt).astype(np.int32))
    return Capture(["x"] * n, np.full(n, 120, dtype=np.int64), bs, K, selected, None, None)


def time_changes(sm, count: int, positions) -> list:
    """Wall time of ``count`` changes cycling layer, group, query position and overlay.

    Before each change the widget forgets its binned maps except the current ones, so a layer or
    group change pays for binning its selection, as on its first visit.
    """
    L, G = len(sm.layer.options), len(sm.group.options)
    steps = [
        lambda i: (sm.layer, (sm.layer.value + 3) % L),
        lambda i: (sm.group, (sm.group.value + 1) % G),
        lambda i: (sm.query, int(positions[(i // 4) % len(positions)])),
        lambda i: (sm.overlay, not sm.overlay.value),
    ]
    out = []
    for i in range(count):
        control, value = steps[i % 4](i)
        if control.value == value:
            value = max(0, value - 1)
        sm.clear_cache(keep_current=True)
        t0 = time.perf_counter()
        control.value = value
        wall = time.perf_counter() - t0
        if sm.message.startswith("Not updated"):
            raise SystemExit(f"change {control.description}={value!r} failed: {sm.message}")
        out.append({"control": control.description, "value": value, "seconds": wall,
                    "redraw_seconds": sm.last_update_s})
    return out


def summary(changes) -> dict:
    secs = [c["seconds"] for c in changes]
    return {"changes": changes, "median_s": statistics.median(secs), "max_s": max(secs), "n": len(secs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=24, help="timed control changes per scenario (>= 20)")
    ap.add_argument("--length", type=int, default=4096, help="NIAH prompt tokens for the model scenario")
    ap.add_argument("--long-length", type=int, default=1 << 16, help="tokens of the synthetic long scenario")
    ap.add_argument("--out", default="data/bench", help="output folder for the JSON (default data/bench)")
    args = ap.parse_args(argv)
    if args.changes < 20:
        raise SystemExit("--changes must be >= 20 (the target is a median over at least 20 changes)")

    import msa_lab
    from msa_lab.widgets import SelectionMap

    info = machine_info()
    t0 = time.perf_counter()
    model = msa_lab.load_model("msa-tiny")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sm = SelectionMap(model, prompt="niah", length=args.length)
    first_s = time.perf_counter() - t0
    n = len(sm.capture.ids)
    model_run = summary(time_changes(sm, args.changes, [n // 4, n // 2, 3 * n // 4, n - 1, 7, n // 3]))

    cfg = model.config
    cap = synthetic_capture(cfg.msa_config(), args.long_length, cfg.n_layers, cfg.n_kv_heads)
    t0 = time.perf_counter()
    sm.show(cap)
    long_first_s = time.perf_counter() - t0
    m = args.long_length
    long_run = summary(time_changes(sm, args.changes, [m // 4, m // 2, 3 * m // 4, m - 1, 100, m // 3]))

    card = model.card or {}
    result = {
        "benchmark": "selection_map", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": info | {"load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "model": {"name": model.name, "checkpoint_dir": os.environ.get("MSA_LAB_CHECKPOINTS", "data/checkpoints"),
                  "created": card.get("created"), "train": card.get("train")},
        "target_s": 0.3,
        "model_scenario": {"prompt": "niah", "tokens": n, "load_model_s": load_s, "capture_s": sm.last_capture_s,
                           "first_render_s": first_s, **model_run},
        "long_scenario": {"note": "synthetic random causal selection (times the widget, not the model)",
                          "tokens": m, "first_render_s": long_first_s, **long_run},
        "median_s": max(model_run["median_s"], long_run["median_s"]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"selection_map-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    for name, run in (("model", model_run), ("long", long_run)):
        for c in run["changes"]:
            print(f"  {name:>5} {c['control']:>20} -> {str(c['value']):>7}: {c['seconds'] * 1e3:7.1f} ms")
    print(f"model scenario ({n:,} tokens, capture {sm.last_capture_s:.1f} s): median "
          f"{model_run['median_s'] * 1e3:.1f} ms, max {model_run['max_s'] * 1e3:.1f} ms over {model_run['n']} changes")
    print(f"long scenario ({m:,} tokens, synthetic): median {long_run['median_s'] * 1e3:.1f} ms, max "
          f"{long_run['max_s'] * 1e3:.1f} ms; target < 300 ms; load average {info['load_average']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
