"""Time a chunked prefill of the shipped msa-tiny on the CPU; writes data/bench/cpu_prefill-<date>.json.

The document is a NIAH haystack (stdlib source) of --length tokens, prefilled in --chunk-size chunks
through Model.prefill_steps (torch path, float32). Target (issue 4): 64K tokens in <= 120 s on a 2-core CPU.

    .venv/bin/python benchmarks/bench_cpu_prefill.py [--length 65536] [--chunk-size 4096] [--out data/bench]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=65_536)
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--out", default=str(ROOT / "data" / "bench"))
    a = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)  # the CPU user path is torch, not the kernel interpreter
    import torch

    import msa_lab
    from msa_lab.tasks import iter_task

    model = msa_lab.load_model("msa-tiny", "cpu")
    ex = next(iter(iter_task("niah_single", 1, 0, length=a.length, depth=0.5)))
    t0 = time.perf_counter()
    steps = list(model.prefill_steps(ex["prompt"], chunk_size=a.chunk_size))
    wall = time.perf_counter() - t0
    last = steps[-1]
    res = {"date": datetime.date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "model": "msa-tiny", "sha256": model.card["sha256"], "tokens": last.total_tokens,
           "chunk_size": a.chunk_size, "seconds": wall, "tokens_per_s": last.total_tokens / wall,
           "peak_mib": max(s.mem_peak_bytes for s in steps) / 2**20, "target_s": 120.0}
    print(f"msa-tiny CPU prefill: {last.total_tokens:,} tokens in {wall:.1f} s ({res['tokens_per_s']:.0f} tokens/s), "
          f"{len(steps)} chunks, peak {res['peak_mib']:.0f} MiB ({res['cpus']} CPUs, {res['torch_threads']} threads)")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / f"cpu_prefill-{res['date']}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
