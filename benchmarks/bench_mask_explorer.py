"""Time MaskExplorer control changes at its defaults; writes data/bench/mask_explorer-<date>.json.

Each of the 20 timed changes moves one control away from its default (or back), cycling through
the controls. Before each change the explorer forgets every cached block-score array except the
current state's, so a change that needs new data pays for it, as on its first visit.
Target: median < 0.3 s on a 2-core CPU.

    .venv/bin/python benchmarks/bench_mask_explorer.py [--changes 20] [--out data/bench]
        [--screenshot docs/img/mask_explorer.png]   # README image of the default view (needs chromium)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine_info() -> dict:
    import numpy
    import plotly
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": numpy.__version__,
        "plotly": plotly.__version__, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def screenshot(explorer, png: Path, size=(1170, 560)) -> None:
    """Render the explorer's figure to HTML and photograph it with headless Chromium (offline)."""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("--screenshot needs chromium on PATH (e.g. apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page = explorer.save_html(str(Path(tmp) / "mask_explorer.html"), config={"displayModeBar": False})
        png.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--hide-scrollbars",
             f"--screenshot={png.resolve()}", f"--window-size={size[0]},{size[1]}", page],
            check=True, capture_output=True, timeout=120, cwd=tmp,
        )
    print(f"wrote {png} ({png.stat().st_size / 1024:.0f} KB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=20, help="timed control changes (default 20)")
    ap.add_argument("--out", default="data/bench", help="output folder for the JSON (default data/bench)")
    ap.add_argument("--screenshot", type=Path, help="also write a PNG of the default view here (needs chromium)")
    args = ap.parse_args(argv)

    from msa_lab.widgets import MaskExplorer

    info = machine_info()
    t0 = time.perf_counter()
    ex = MaskExplorer()
    first_s = time.perf_counter() - t0
    defaults = {c.description: c.value for c in ex.controls}
    if args.screenshot:
        screenshot(ex, args.screenshot)
    alternatives = [  # (control, value away from the default)
        (ex.seq_len, 1 << 17), (ex.block_size, 64), (ex.top_k, 8), (ex.init_blocks, 2),
        (ex.local_blocks, 2), (ex.group, 1), (ex.data, "random"),
    ]
    changes = []
    for i in range(args.changes):
        control, alt = alternatives[i % len(alternatives)]
        value = alt if control.value != alt else defaults[control.description]
        ex.clear_cache(keep_current=True)
        control.value = value
        if ex.message.startswith("Not updated") or not ex.last_update_s == ex.last_update_s:
            raise SystemExit(f"change {control.description}={value!r} failed: {ex.message}")
        changes.append({"control": control.description, "value": value, "seconds": ex.last_update_s})
    secs = [c["seconds"] for c in changes]
    result = {
        "benchmark": "mask_explorer", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": info | {"load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "defaults": defaults, "first_render_s": first_s, "changes": changes,
        "median_s": statistics.median(secs), "max_s": max(secs), "target_s": 0.3,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"mask_explorer-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    for c in changes:
        print(f"  {c['control']:>13} -> {str(c['value']):>10}: {c['seconds'] * 1e3:7.1f} ms")
    print(f"median {result['median_s'] * 1e3:.1f} ms over {len(secs)} changes (max {result['max_s'] * 1e3:.1f} ms, "
          f"target < 300 ms; first render {first_s:.2f} s); load average {info['load_average']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
