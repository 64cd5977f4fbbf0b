"""Time msa_lab.load_model on the CPU for each shipped model; writes data/bench/load_model-<date>.json.

Each load runs in a fresh Python process (what a user's first notebook cell pays), timed around
the load_model call alone (imports excluded, reported separately). Target: < 2 s per model.

    .venv/bin/python benchmarks/bench_load_model.py [--repeats 5] [--out data/bench]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, time
t0 = time.perf_counter()
import msa_lab
t1 = time.perf_counter()
m = msa_lab.load_model({name!r}, "cpu")
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "sha256": m.card["sha256"]}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "data" / "bench"))
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "MSA_LAB_CHECKPOINTS"}
    res = {"date": datetime.date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "python": platform.python_version(), "target_s": 2.0, "models": {}}
    for name in ("msa-tiny", "dense-200k"):
        runs = []
        for _ in range(a.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD.format(name=name)], capture_output=True, text=True,
                                 cwd=ROOT, env=env, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        load = [r["load_s"] for r in runs]
        res["models"][name] = {"load_s_median": statistics.median(load), "load_s_max": max(load),
                               "import_s_median": statistics.median(r["import_s"] for r in runs),
                               "sha256": runs[0]["sha256"], "repeats": a.repeats}
        print(f"{name}: load {statistics.median(load):.3f} s median, {max(load):.3f} s max "
              f"(import msa_lab {res['models'][name]['import_s_median']:.2f} s)")
    import torch

    res["torch"] = torch.__version__
    path = Path(a.out) / f"load_model-{res['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
