"""What PrefillStepper's redraws add to a prefill; writes data/bench/stepper-<date>.json.

Target (issue 5): the redraws add under 5% to the prefill time. Three ways to run the same prefill
(same document, chunk size, torch threads), interleaved ``--repeats`` times so that a busy machine
slows each about equally:

    raw       model.engine.prefill_steps in a loop (no widget);
    widget    PrefillStepper.run_to_end() with its default batching (redraw at most every 0.5 s);
    every     the same with a redraw after every chunk (the worst case, a Step press per chunk).

Two overhead figures: ``direct`` = time spent in the widget's redraws / the prefill's own chunk time
(immune to machine noise), and ``end_to_end`` = median widget wall / median raw wall - 1 (includes the
bookkeeping per chunk, but on a shared CPU its noise can exceed the effect). No kernel or browser is
attached, so a redraw's cost is building and serialising the plotly update, not the browser's render.

    .venv/bin/python benchmarks/bench_stepper.py [--length 4096] [--chunk 512] [--repeats 3] [--out data/bench]
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_mask_explorer import machine_info  # noqa: E402

TARGET = 0.05


def load(name: str):
    """The shipped checkpoint; else (no checkpoint yet) the same shapes randomly initialised: timing only."""
    from msa_lab import load_model
    from msa_lab.api import Model
    from msa_lab.model.config import model_config

    try:
        return load_model(name, device="cpu"), "checkpoint"
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"no {name} checkpoint ({type(e).__name__}); timing a randomly initialised model of its shapes")
        return Model.from_config(model_config(name)), "random init (same shapes; timing only)"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared 2-core box)")
    ap.add_argument("--out", default=str(ROOT / "data" / "bench"))
    args = ap.parse_args(argv)

    import torch

    from msa_lab.widgets.prefill_stepper import PrefillStepper

    torch.set_num_threads(args.threads)
    model, source = load("msa-tiny")

    def stepper(**kw):
        return PrefillStepper(model, args.length, args.chunk, auto_answer=False, torch_threads=args.threads, **kw)

    enc = stepper()._document()[1]  # the raw runs prefill the stepper's own document
    runs = {"raw": [], "widget": [], "every": []}
    for rep in range(args.repeats + 1):  # the first round warms up (allocator, file cache) and is dropped
        t0 = time.perf_counter()
        chunk_s = sum(s.seconds for s in model.engine.prefill_steps(enc, args.chunk, extra_tokens=16))
        raw = {"wall_s": time.perf_counter() - t0, "chunk_s": chunk_s}
        model.engine.last_cache = None
        out = {"raw": raw}
        for kind, kw in (("widget", {}), ("every", {"redraw_every_chunks": 1})):
            s = stepper(**kw)
            r0, n0 = s.redraw_seconds, s.redraws  # construction draws the empty figure: not part of the run
            t0 = time.perf_counter()
            s.run_to_end()
            out[kind] = {"wall_s": time.perf_counter() - t0, "chunk_s": sum(r.ms for r in s.records) / 1e3,
                         "redraw_s": s.redraw_seconds - r0, "redraws": s.redraws - n0, "chunks": len(s.records)}
            s.reset()
        if rep:
            for k, v in out.items():
                runs[k].append(v)
        print(f"round {rep}{' (warm-up)' if not rep else ''}: " + ", ".join(
            f"{k} {v['wall_s']:.2f} s" + (f" ({v['redraws']} redraws, {v['redraw_s'] * 1e3:.0f} ms)" if "redraws" in v
                                          else "") for k, v in out.items()))

    med = lambda kind, key: statistics.median(r[key] for r in runs[kind])  # noqa: E731
    result = {"widget": "PrefillStepper", "date": datetime.date.today().isoformat(), "model": "msa-tiny",
              "model_source": source, "length": args.length, "chunk": args.chunk, "repeats": args.repeats,
              "machine": machine_info(), "runs": runs, "target": {"what": "redraw time / prefill time", "goal": TARGET}}
    for kind in ("widget", "every"):
        result[kind] = {
            "direct_overhead": med(kind, "redraw_s") / med(kind, "chunk_s"),
            "end_to_end_overhead": med(kind, "wall_s") / med("raw", "wall_s") - 1,
            "redraws": med(kind, "redraws"), "ms_per_redraw": 1e3 * med(kind, "redraw_s") / max(1, med(kind, "redraws")),
        }
    result["target"]["value"] = result["widget"]["direct_overhead"]
    result["target"]["met"] = result["widget"]["direct_overhead"] < TARGET
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"stepper-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    for kind in ("widget", "every"):
        r = result[kind]
        print(f"{kind:>6}: redraws {r['direct_overhead']:.2%} of the prefill time ({r['redraws']:.0f} redraws, "
              f"{r['ms_per_redraw']:.1f} ms each); end to end {r['end_to_end_overhead']:+.1%} vs raw")
    print(f"target < {TARGET:.0%}: {'met' if result['target']['met'] else 'NOT met'}; wrote {path}")
    return result


if __name__ == "__main__":
    main()
