"""Regenerate the small task samples in data/samples/<task>.parquet (a few examples per task).

One command, from the repo root:

    .venv/bin/python scripts/make_samples.py

Options: --n (examples per task, default 4), --seed (default 0), --out (default data/samples).
The samples are deterministic: rerunning with the same arguments and TASKS_VERSION rewrites the
same rows (NIAH/VT haystacks come from this machine's stdlib, so they differ across Python
versions). tests/test_tasks_api.py checks their schema and that the machine-independent answers
(image_qa, video) match the current generators: rerun this script after changing a generator
(and bump msa_lab.tasks.schema.TASKS_VERSION).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from msa_lab.tasks import TASKS, make_task

N, SEED = 4, 0
MAX_TOTAL_BYTES = 2 * 1024 * 1024
# Small options so all samples together stay well under 2 MB.
SAMPLE_OPTS = {
    "niah_single": {"length": 2048, "depth": 0.5},
    "niah_multi_key": {"length": 2048},
    "niah_multi_value": {"length": 2048},
    "niah_multi_query": {"length": 2048},
    "variable_tracking": {"length": 2048},
    "image_qa": {"max_size": 192},
    "gui": {"max_width": 640, "max_height": 480},
    "video": {"num_frames": 6, "max_size": 96},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=N, help="examples per task")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", default=os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "data", "samples")))
    args = ap.parse_args(argv)
    missing = set(TASKS) - set(SAMPLE_OPTS)
    if missing:
        raise SystemExit(f"no sample options for tasks {sorted(missing)}; add them to SAMPLE_OPTS")
    os.makedirs(args.out, exist_ok=True)
    total = 0
    with tempfile.TemporaryDirectory() as cache:  # keep the datasets cache out of ~/.cache
        for name in TASKS:
            ds = make_task(name, args.n, args.seed, cache_dir=cache, **SAMPLE_OPTS[name])
            path = os.path.join(args.out, f"{name}.parquet")
            ds.to_parquet(path)
            size = os.path.getsize(path)
            total += size
            print(f"{path}: {len(ds)} rows, {size / 1024:.1f} KiB")
    print(f"total {total / 1024:.1f} KiB")
    if total > MAX_TOTAL_BYTES:
        print(f"samples exceed {MAX_TOTAL_BYTES} bytes: lower --n or the sizes in SAMPLE_OPTS", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
