"""Execute a notebook headless with parameters; save the executed notebook and its figures.

    python scripts/run_notebook.py notebooks/03_prefill_1m.ipynb --out runs/03-h100 \\
        -p RUN_TO_END=True [-p TARGET_LENGTH=1048576] [--timeout 3600] [--png]
    python scripts/run_notebook.py runs/03-h100/03_prefill.html --png-only   # PNG of a saved HTML figure
                                                                            # (headless Chromium, here)

Parameters are injected after the cell tagged ``parameters`` (as papermill does); values are Python
literals (``-p CHUNK_SIZE=16384``, ``-p DENSE_LENGTHS='[32768, 65536]'``), anything else is a string.
If the notebook's parameters cell defines ``EXPORT_DIR`` and no -p sets it, it is set to ``--out``, so
the notebook's own exports (03: HTML, PNG where kaleido works, a summary JSON) land there too.

Writes into --out:
    <stem>.executed.ipynb     the notebook with outputs and widget state (written even when a cell fails)
    <stem>-fig<i>.json/.html  every plotly figure output (go.Figure shown in a cell). FigureWidgets are not
                              taken from the saved widget state: it holds their first state, not the later
                              batched updates; widgets export themselves (03 writes 03_prefill.html/.png)
    <stem>-fig<i>.png         with --png: through kaleido, else the system Chromium (headless screenshot)
    <stem>.run.json           parameters, timings, versions, device, the figures written, the error if any

Needs nbclient, nbformat, ipykernel (and the notebook's own imports); see scripts/gpu_wheels.txt for a
GPU box with a plain torch image. Exit code 1 when a cell failed.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def parse_params(items) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"-p expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def inject(nb, params: dict, out_dir: Path):
    """Insert a cell assigning params after the 'parameters' cell (EXPORT_DIR defaults to out_dir)."""
    import nbformat

    where = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not where:
        if params:
            raise SystemExit("the notebook has no cell tagged 'parameters'; cannot inject " + ", ".join(params))
        return nb, params
    if "EXPORT_DIR" in nb.cells[where[0]].source and "EXPORT_DIR" not in params:
        params = {**params, "EXPORT_DIR": str(out_dir.resolve())}
    src = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(where[0] + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
    return nb, params


def figures(nb) -> list:
    """Plotly figure dicts {data, layout} from the cells' plotly outputs (see the module doc for widgets)."""
    figs = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            d = o.get("data", {}).get(PLOTLY_MIME)
            if d:
                figs.append({"data": d.get("data", []), "layout": d.get("layout", {})})
    return figs


def save_png(html: Path, png: Path, fig: dict) -> str:
    """PNG of a figure: kaleido if it works here, else a headless Chromium screenshot of the HTML."""
    try:
        import plotly.graph_objects as go

        go.Figure(fig).write_image(str(png), scale=2)
        return "kaleido"
    except Exception as e:  # noqa: BLE001 - kaleido needs a Chrome; fall back to the system one
        err = f"{type(e).__name__}: {e}"
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        raise RuntimeError(f"no PNG: kaleido failed ({err}) and no chromium on PATH; the HTML is saved.")
    w = int(fig.get("layout", {}).get("width") or 1200) + 40
    h = int(fig.get("layout", {}).get("height") or 800) + 40
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--no-first-run", f"--screenshot={png.resolve()}",
                    f"--window-size={w},{h}", html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=180)
    return "chromium"


def _chromium() -> str:
    found = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if found is None:
        raise SystemExit("--png-only needs chromium on PATH (e.g. apt-get install -y chromium)")
    return found


def device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def ensure_kernelspec(name: str, env: dict) -> str:
    """The kernel to run: ``name`` if Jupyter knows it, else a spec for this interpreter written to a temp
    dir (a GPU box with the wheels installed by --target has ipykernel but no registered kernel)."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name in KernelSpecManager().find_kernel_specs():
        return name
    root = Path(tempfile.mkdtemp(prefix="msa-lab-kernels-"))
    spec = root / "kernels" / "msa-lab-run"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "msa-lab (this interpreter)", "language": "python",
        "env": {"PYTHONPATH": env.get("PYTHONPATH", "")}}))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("JUPYTER_PATH")]))
    env["JUPYTER_PATH"] = os.environ["JUPYTER_PATH"]
    print(f"no Jupyter kernel {name!r} here: using {spec} ({sys.executable})")
    return "msa-lab-run"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook")
    ap.add_argument("--out", help="folder for the executed notebook and the figures (required unless --png-only)")
    ap.add_argument("-p", "--param", action="append", help="NAME=VALUE (a Python literal), repeatable")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--png", action="store_true", help="also write PNGs (kaleido, else the system Chromium)")
    ap.add_argument("--png-only", action="store_true", help="NOTEBOOK is a saved figure .html: write its PNG")
    args = ap.parse_args(argv)
    if args.png_only:
        html = Path(args.notebook)
        png = html.with_suffix(".png")
        subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--no-first-run", f"--screenshot={png.resolve()}", "--window-size=1240,800",
                        html.resolve().as_uri()], check=True, capture_output=True, timeout=180)
        print("wrote", png)
        return 0

    if not args.out:
        ap.error("--out is required to execute a notebook")
    import nbclient
    import nbformat

    path = Path(args.notebook).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    nb, params = inject(nb, parse_params(args.param), out)
    client = nbclient.NotebookClient(nb, kernel_name=args.kernel, timeout=args.timeout, store_widget_state=True,
                                     resources={"metadata": {"path": str(path.parent)}})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real kernels on a GPU
    error = None
    t0 = time.perf_counter()
    args.kernel = ensure_kernelspec(args.kernel, env)
    client.kernel_name = args.kernel
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as e:
        error = str(e)[-4000:]
    except Exception:  # noqa: BLE001 - the kernel did not start: keep the whole chained traceback
        # nbclient's cleanup can raise its own AssertionError over the real cause; format_exc keeps both
        error = traceback.format_exc()[-8000:]
    wall = time.perf_counter() - t0
    stem = path.stem
    nbformat.write(nb, out / f"{stem}.executed.ipynb")
    written = []
    for i, fig in enumerate(figures(nb)):
        base = out / f"{stem}-fig{i}"
        base.with_suffix(".json").write_text(json.dumps(fig, default=str))
        try:
            import plotly.graph_objects as go

            go.Figure(fig).write_html(str(base.with_suffix(".html")), include_plotlyjs=True)
            entry = {"json": base.with_suffix(".json").name, "html": base.with_suffix(".html").name}
            if args.png:
                try:
                    entry["png_by"] = save_png(base.with_suffix(".html"), base.with_suffix(".png"), fig)
                    entry["png"] = base.with_suffix(".png").name
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    entry["png_error"] = str(e)
        except Exception as e:  # noqa: BLE001 - keep going: the JSON is saved, report the rest
            entry = {"json": base.with_suffix(".json").name, "html_error": f"{type(e).__name__}: {e}"}
        written.append(entry)
    info = {"notebook": str(path), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "parameters": params, "wall_s": wall, "device": device(), "python": sys.version.split()[0],
            "figures": written, "error": error}
    (out / f"{stem}.run.json").write_text(json.dumps(info, indent=1, default=str))
    print(f"{stem}: {'FAILED' if error else 'ok'} in {wall:.1f} s on {info['device']}; {len(written)} figure(s) "
          f"in {out}")
    if error:
        print(error, file=sys.stderr)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
