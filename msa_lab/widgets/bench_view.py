"""BenchView: `msa-lab bench` results against dense SDPA, one card at a time.

Reads the results JSONs in ``data/bench/`` (schema ``msa-lab-bench/1``, see ``msa_lab.bench``; other
JSONs there, such as the MaskExplorer's timings, are left out) and draws one figure of six panels:

    prefill ms vs length (log-log)   | achieved TFLOP/s vs the matmul ceiling | dense / MSA speed-up + targets
    decode ms by batch and new tokens | decode GB/s vs the copy bandwidth     | the issue's targets (table)

A results file holds one card and one software stack (``merge_results`` refuses to mix them), and the
figure shows one file, so H100 and H200 numbers never share a plot; the card and versions are in its title.
The pure part (:func:`scan_results`, :func:`bench_figure`) needs plotly only; the widget adds ipywidgets.
"""
from __future__ import annotations

import html
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

try:
    import ipywidgets as W
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as e:  # optional extra
    raise ImportError("BenchView needs ipywidgets and plotly: pip install 'msa-lab[lab]'") from e

from .. import bench as _bench
from ._common import FigureExport

PREFILL_TARGET = 20.0  # dense SDPA ms / MSA total ms at 1M (bench.TARGETS "prefill_speedup")
DECODE_TARGET = 7.6  # dense ms / MSA ms, decode of 1 new token at 1M ("decode_speedup_b1/b8")
# (row name, legend label, colour, dash): the prefill lines of panels 1 and 2
PREFILL_LINES = (
    ("dense_sdpa", "dense SDPA", "#444444", "solid"),
    ("msa_indexer", "MSA indexer", "#1f77b4", "solid"),
    ("msa_indexer_fp8", "MSA indexer, fp8", "#1f77b4", "dot"),
    ("msa_sparse_attn", "sparse attention", "#ff7f0e", "solid"),
    ("msa_total", "MSA total", "#d62728", "solid"),
    ("flex_attention", "FlexAttention (same selection)", "#2ca02c", "dash"),
)
TARGET_LABELS = {  # short names for the table; bench.TARGETS has the long ones
    "prefill_speedup": "prefill: dense ms / MSA ms",
    "sparse_vs_dense_tflops": "sparse attn / dense TFLOP/s",
    "indexer_vs_dense_tflops": "indexer / dense TFLOP/s",
    "msa_vs_flex": "Flex ms / sparse attn ms",
    "decode_speedup_b1": "decode b1, 1 tok: speed-up",
    "decode_speedup_b8": "decode b8, 1 tok: speed-up",
    "index_key_bw_vs_copy": "decode index-key GB/s / copy",
    "memory_peak_gb": "peak GB, m3 layer, MSA prefill",
}
PANELS = ("prefill time", "prefill TFLOP/s (ceiling: measured bf16 matmul)", "dense / MSA speed-up",
          "decode time", "decode GB/s (ceiling: measured copy)", "targets (at 1M tokens)")
RERUN_TIMEOUT_S = 1800  # a --quick run is a few minutes on an H100; this only bounds a hung one


# ----------------------------------------------------------------------------- files
@dataclass(frozen=True)
class ResultFile:
    """One bench results JSON: ``label`` (card, date, tag) for the dropdown, ``card`` its device name."""

    path: Path
    label: str
    card: str
    date: str
    n_ok: int


def default_results_dir() -> Path:
    """``data/bench`` of the checkout: next to the working directory (repo root or notebooks/), else the package's."""
    here = Path.cwd()
    for base in (here, here.parent, Path(__file__).resolve().parents[2]):
        if (base / "data" / "bench").is_dir():
            return base / "data" / "bench"
    return here / "data" / "bench"


def scan_results(folder) -> List[ResultFile]:
    """The bench results in ``folder``, newest date first, then most ok rows. Other JSONs are skipped."""
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            d = _bench.load_json(p)
        except (OSError, ValueError):  # not a bench file (json.JSONDecodeError is a ValueError too)
            continue
        card, date = d["device"]["name"], d["date"]
        tag = p.stem.replace(f"{date}-{d['device'].get('slug', '')}", "").strip("-")
        merged = len(d["run"].get("merged") or ()) > 1
        extra = " · ".join(t for t in (tag, f"{len(d['run']['merged'])} runs merged" if merged else "") if t)
        n_ok = sum(r["status"] == "ok" for r in d["rows"])
        out.append(ResultFile(p, f"{card} · {date}" + (f" · {extra}" if extra else ""), card, date, n_ok))
    return sorted(out, key=lambda f: (f.date, f.n_ok), reverse=True)


def _pick(rows, name, **kw) -> Optional[dict]:
    """The last ok row with this name and fields (merged files can hold a row twice; the later run wins)."""
    hits = [r for r in rows if r["name"] == name and r["status"] == "ok" and all(r.get(k) == v for k, v in kw.items())]
    return hits[-1] if hits else None


def shapes_of(d: dict) -> List[str]:
    """Shapes (presets) with prefill or decode rows, m3 first."""
    return sorted({r["shape"] for r in d["rows"] if r.get("shape")}, key=lambda s: (s != "m3", s))


# ----------------------------------------------------------------------------- figure
def bench_figure(d: dict, shape: str = "m3", fp8: bool = True, decode_batches: Optional[Sequence[int]] = None):
    """Six panels for one results dict (see the module doc); returns a ``go.Figure``.

    d: a validated results dict (``msa_lab.bench.load_json``). fp8: draw the fp8 indexer line.
    decode_batches: batches shown in the decode panels (None: all).
    """
    rows = d["rows"]
    fig = make_subplots(rows=2, cols=3, specs=[[{}, {}, {}], [{}, {}, {"type": "table"}]], subplot_titles=PANELS,
                        horizontal_spacing=0.07, vertical_spacing=0.16)
    lengths = sorted({r["n"] for r in rows if r["mode"] == "prefill" and r.get("shape") == shape and r.get("n")})
    x_len = [_bench.fmt_length(n) for n in lengths]
    for name, label, colour, dash in PREFILL_LINES:
        if name == "msa_indexer_fp8" and not fp8:
            continue
        got = [_pick(rows, name, shape=shape, n=n) for n in lengths]
        if not any(got):
            continue
        line = dict(color=colour, dash=dash)
        common = dict(mode="lines+markers", name=label, legendgroup=name, line=line, customdata=x_len)
        fig.add_trace(go.Scatter(x=lengths, y=[r["ms"] if r else None for r in got], **common,
                                 hovertemplate=f"{label}, %{{customdata}}: %{{y:.4g}} ms<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=lengths, y=[r["tflops"] if r else None for r in got], **common, showlegend=False,
                                 hovertemplate=f"{label}, %{{customdata}}: %{{y:.4g}} TFLOP/s<extra></extra>"), 1, 2)
    matmul, copy = _pick(rows, "matmul"), _pick(rows, "copy")
    if matmul and matmul.get("tflops"):
        fig.add_hline(y=matmul["tflops"], line=dict(color="black", width=1, dash="dash"), row=1, col=2,
                      annotation_text=f"bf16 matmul {matmul['tflops']:.0f} TFLOP/s", annotation_position="top left")

    # speed-ups: prefill, and decode per (batch, new tokens), with the targets as lines
    speed = [_ratio(_pick(rows, "dense_sdpa", shape=shape, n=n), _pick(rows, "msa_total", shape=shape, n=n))
             for n in lengths]
    if any(s is not None for s in speed):
        fig.add_trace(go.Scatter(x=lengths, y=speed, mode="lines+markers", name="prefill dense / MSA",
                                 line=dict(color="#d62728"), customdata=x_len,
                                 hovertemplate="prefill %{customdata}: %{y:.3g}x<extra></extra>"), 1, 3)
    decode = sorted({(r["n"], r["batch"], r["nq"]) for r in rows if r["mode"] == "decode" and r.get("shape") == shape
                     and r["status"] == "ok" and (decode_batches is None or r["batch"] in decode_batches)})
    for b, t in sorted({(b, t) for _, b, t in decode}):
        ns = sorted({n for n, bb, tt in decode if (bb, tt) == (b, t)})
        ys = [_ratio(_pick(rows, "dense_decode", shape=shape, n=n, batch=b, nq=t),
                     _pick(rows, "msa_decode", shape=shape, n=n, batch=b, nq=t)) for n in ns]
        if any(y is not None for y in ys):
            fig.add_trace(go.Scatter(x=ns, y=ys, mode="lines+markers", name=f"decode b{b}, {t} tok",
                                     line=dict(dash="dot"), customdata=[_bench.fmt_length(n) for n in ns],
                                     hovertemplate=f"decode batch {b}, {t} new, %{{customdata}}: %{{y:.3g}}x"
                                                   "<extra></extra>"), 1, 3)
    # targets as traces, not add_hline: a shape's y on a log axis is log10(y), an easy way to draw 1e20
    span = sorted(set(lengths) | {n for n, _, _ in decode})
    if span:
        for y, what, colour in ((PREFILL_TARGET, "prefill target", "#d62728"), (DECODE_TARGET, "decode target",
                                                                                   "#7f7f7f")):
            fig.add_trace(go.Scatter(x=[span[0], span[-1]], y=[y, y], mode="lines+text", name=f"{what} {y:g}x",
                                     text=[f"{what} {y:g}x", ""], textposition="top right",
                                     line=dict(color=colour, width=1, dash="dash"), hoverinfo="skip"), 1, 3)

    # decode: ms and bandwidth per (length, batch, new tokens)
    cats = [f"{_bench.fmt_length(n)} b{b} t{t}" for n, b, t in decode]
    get = lambda name, key: [(_pick(rows, name, shape=shape, n=n, batch=b, nq=t) or {}).get(key)  # noqa: E731
                             for n, b, t in decode]
    bars = ((1, "dense_decode", "ms", "dense decode ms", "#444444", "ms"),
            (1, "msa_decode", "ms", "MSA decode ms", "#d62728", "ms"),
            (2, "dense_decode", "gbps", "dense: KV GB/s", "#999999", "GB/s"),
            (2, "msa_decode_indexer", "gbps", "MSA indexer: index-key GB/s", "#1f77b4", "GB/s"))
    drawn = set()
    for col, name, key, label, colour, unit in bars:
        ys = get(name, key)
        if any(y is not None for y in ys):  # a bar series with no measurement would only clutter the legend
            drawn.add(col)
            fig.add_trace(go.Bar(x=cats, y=ys, name=label, marker_color=colour,
                                 hovertemplate=f"{label.split(':')[0]} %{{x}}: %{{y:.4g}} {unit}<extra></extra>"),
                          2, col)
    for col in {1, 2} - drawn:  # say why a panel is empty (in its title: a note on an empty axis upsets plotly.js)
        fig.layout.annotations[2 + col].text += f"<br><sup>no decode timings for {shape} in this file</sup>"
    if copy and copy.get("gbps"):
        fig.add_hline(y=copy["gbps"], line=dict(color="black", width=1, dash="dash"), row=2, col=2,
                      annotation_text=f"copy {copy['gbps']:,.0f} GB/s", annotation_position="top left")
    fig.add_trace(_targets_table(d), 2, 3)

    for col, title in ((1, "ms (log)"), (2, "TFLOP/s"), (3, "dense / MSA (log)")):
        fig.update_xaxes(type="log", title="context length (tokens)", tickvals=lengths, ticktext=x_len, row=1, col=col)
    fig.update_yaxes(type="log", title="ms (log)", row=1, col=1)
    fig.update_yaxes(title="TFLOP/s", rangemode="tozero", row=1, col=2)
    fig.update_yaxes(type="log", title="dense / MSA (log)", row=1, col=3)
    fig.update_yaxes(type="log", title="ms (log)", row=2, col=1)
    fig.update_yaxes(title="GB/s", rangemode="tozero", row=2, col=2)
    fig.update_xaxes(title="KV length, batch, new tokens", tickangle=-40, row=2, col=1)
    fig.update_xaxes(title="KV length, batch, new tokens", tickangle=-40, row=2, col=2)
    fig.update_layout(
        title=dict(text=f"MSA kernels vs dense SDPA, {shape} shapes: {_bench.caption(d)}<br><sup>"
                        f"bf16, one layer, random inputs; ms = median of repeats; TFLOP/s count visible work only"
                        f"</sup>", font=dict(size=14)),
        height=880, width=1150, barmode="group", margin=dict(t=110, l=60, r=30, b=60),
        legend=dict(orientation="h", x=0, y=-0.16, font=dict(size=11)),
    )
    return fig


def _ratio(a: Optional[dict], b: Optional[dict]) -> Optional[float]:
    return a["ms"] / b["ms"] if a and b and a.get("ms") and b.get("ms") else None


def _targets_table(d: dict):
    targets = d.get("targets") or {}
    cols = [[], [], [], []]
    for key, t in targets.items():
        v = t.get("value")
        at = "" if t.get("at_target_length", True) or not t.get("n") else f" at {_bench.fmt_length(t['n'])}"
        cols[0].append(TARGET_LABELS.get(key, t.get("what", key)))
        goal = t.get("goal")
        cols[1].append(f"{t.get('op', '')} {goal:g}" if isinstance(goal, (int, float)) else str(goal))
        cols[2].append("-" if v is None else f"{v:.3g}{at}")
        cols[3].append({True: "yes", False: "no"}.get(t.get("met"), "-"))
    fill = [["#e8f5e9" if m == "yes" else "#ffebee" if m == "no" else "white" for m in cols[3]]]
    return go.Table(columnwidth=[3.0, 1.1, 1.2, 0.6],
                    header=dict(values=["target", "goal", "measured", "met"], align="left", font=dict(size=11)),
                    cells=dict(values=cols, align="left", font=dict(size=10), fill_color=fill * 4, height=20))


# ----------------------------------------------------------------------------- widget
class BenchView(FigureExport):
    """A results dropdown (card · date), shape and decode-batch controls, one FigureWidget, export and rerun.

    Controls are attributes (``file``, ``shape``, ``fp8``, ``batches``); setting ``.value`` redraws.
    ``save_html(path)`` exports the figure; ``rerun()`` runs ``python -m msa_lab.bench --quick`` in a
    subprocess on a CUDA machine (results land in ``folder``, and the dropdown picks them up), and on a
    CPU shows a note instead. ``message`` is the status line as plain text.
    """

    def __init__(self, folder=None, file=None, shape: str = "m3"):
        self.folder = Path(folder) if folder is not None else default_results_dir()
        self.files = scan_results(self.folder)
        if not self.files:
            raise FileNotFoundError(
                f"no msa-lab bench results (schema {_bench.SCHEMA!r}) in {self.folder}; pass folder= the "
                f"data/bench folder of a checkout, or run `python -m msa_lab.bench` on a GPU to make one.")
        self.message = ""
        self._thread: Optional[threading.Thread] = None
        self._busy = False
        self.command = [sys.executable, "-m", "msa_lab.bench", "--quick", "--tag", "quick",
                        "--out", str(self.folder) + "/"]

        style = {"description_width": "initial"}
        self.file = W.Dropdown(options=self._options(), description="results", style=style,
                               layout=W.Layout(width="520px"))
        if file is not None:
            self.file.value = self._find(file)
        self.shape = W.Dropdown(description="shapes", style=style, layout=W.Layout(width="170px"))
        self.fp8 = W.Checkbox(value=True, description="fp8 indexer", indent=False, layout=W.Layout(width="120px"))
        self.batches = W.SelectMultiple(description="decode batch", style=style, rows=2,
                                        layout=W.Layout(width="200px"))
        self.save_path = W.Text(value="bench_view.html", description="save to", style=style,
                                layout=W.Layout(width="260px"))
        self.save_button = W.Button(description="Save HTML", icon="download")
        self.save_button.on_click(lambda _: self._save_clicked())
        self.rerun_button = W.Button(description="Rerun --quick on this GPU", icon="play",
                                     layout=W.Layout(width="230px"))
        self.rerun_button.on_click(lambda _: self.rerun())
        self.status = W.HTML()
        self.log = W.Textarea(layout=W.Layout(width="100%", height="120px", display="none"), disabled=True)
        self.figure = go.FigureWidget()
        self.widget = W.VBox([
            W.HBox([self.file, self.shape, self.fp8, self.batches]),
            self.status, self.figure,
            W.HBox([self.save_path, self.save_button, self.rerun_button]), self.log,
        ])
        self._load_file(shape)
        for c in (self.file, self.shape, self.fp8, self.batches):
            c.observe(self._changed, names="value")

    # ------------------------------------------------------------------ public
    @property
    def results(self) -> dict:
        """The selected results dict."""
        return self._d

    def update(self) -> None:
        """Redraw from the controls."""
        new = bench_figure(self._d, self.shape.value, self.fp8.value, self.batches.value or None)
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.layout = new.layout
            self.figure.add_traces(new.data)
        d = self._d
        key = lambda r: (r["name"], r.get("shape"), r.get("n"), r.get("batch"), r.get("nq"))  # noqa: E731
        ok = {key(r) for r in d["rows"] if r["status"] == "ok"}
        bad = {key(r) for r in d["rows"] if r["status"] != "ok"} - ok  # merged files: a later run may have done it
        self.message = (f"{self.file.value.name}: {d['device']['name']}, {d['date']}; {len(ok)} measurements, "
                        f"{len(bad)} skipped or failed (reasons: python scripts/bench_table.py FILE --rows)")
        self.status.value = html.escape(self.message)

    def refresh(self) -> None:
        """Rescan the folder (after a new run); keeps the selection if it still exists."""
        keep = self.file.value
        self.files = scan_results(self.folder)
        self._busy = True
        try:
            self.file.options = self._options()
            if keep in dict(self.file.options).values():
                self.file.value = keep
        finally:
            self._busy = False
        self._load_file(self.shape.value)

    def rerun(self, wait: bool = False) -> Optional[threading.Thread]:
        """Run ``self.command`` (the bench, --quick) in a subprocess when CUDA is available, else show a note.

        Non-blocking by default (the output streams into the log box); ``wait=True`` joins the run.
        Returns the thread, or None when nothing was started.
        """
        import torch

        if not torch.cuda.is_available():
            self._note("No CUDA GPU here, so nothing was run. The benchmark times the Triton kernels on an "
                       "H100/H200: run <code>python -m msa_lab.bench --quick</code> there (or "
                       "<code>scripts/device_run.sh</code>), copy the JSON into " + html.escape(str(self.folder)) +
                       "/ and it appears in the results dropdown.")
            return None
        if self._thread is not None and self._thread.is_alive():
            self._note("a benchmark run is already going; wait for it to finish.")
            return self._thread
        self.log.layout.display = "block"
        self.log.value = "$ " + " ".join(self.command) + "\n"
        self.rerun_button.disabled = True
        self._note("benchmark running (a --quick run takes a few minutes) ...")
        self._thread = threading.Thread(target=self._run_bench, daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()
        return self._thread

    # ------------------------------------------------------------------ internals
    def _options(self):
        return [(f.label, f.path) for f in self.files]

    def _find(self, file) -> Path:
        paths = [f.path for f in self.files]
        for p in paths:
            if p == Path(file) or p.name == Path(file).name:
                return p
        raise ValueError(f"{file!r} is not a bench results file in {self.folder}; choose one of "
                         f"{', '.join(p.name for p in paths)}")

    def _load_file(self, shape: Optional[str] = None) -> None:
        self._d = _bench.load_json(self.file.value)
        shapes = shapes_of(self._d) or ["m3"]
        batches = sorted({r["batch"] for r in self._d["rows"] if r["mode"] == "decode"})
        self._busy = True
        try:
            self.shape.options = shapes
            self.shape.value = shape if shape in shapes else shapes[0]
            self.batches.options = batches
            self.batches.value = tuple(batches)
        finally:
            self._busy = False
        self.update()

    def _changed(self, change) -> None:
        if self._busy:
            return
        if change["owner"] is self.file:
            self._load_file(self.shape.value)
        else:
            self.update()

    def _note(self, text_html: str) -> None:
        self.status.value = text_html
        self.message = html.unescape(text_html.replace("<code>", "").replace("</code>", ""))

    def _run_bench(self) -> None:
        started = time.time() - 1  # mtime resolution
        try:
            proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    cwd=str(self.folder.parent.parent) if self.folder.parent.parent.is_dir() else None)
            for line in proc.stdout:  # stream, keeping the last 200 lines in the box
                self.log.value = "\n".join((self.log.value + line).splitlines()[-200:]) + "\n"
            rc = proc.wait(timeout=RERUN_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            self._note(f"benchmark could not run: {html.escape(str(e))}")
            return
        finally:
            self.rerun_button.disabled = False
        self.refresh()
        # the run's file: new, or rewritten (a second --quick run on one day reuses the name)
        new = [f.path for f in self.files if f.path.stat().st_mtime >= started]
        if new:
            self.file.value = new[0]  # show the fresh results
        self._note(f"benchmark finished with exit code {rc}" + (f"; new results: {html.escape(new[0].name)}" if new
                                                                   else "; see the log below"))

    def _save_clicked(self) -> None:
        try:
            path = self.save_html(self.save_path.value)
        except OSError as e:
            self._note(f"could not save {html.escape(repr(self.save_path.value))}: {html.escape(str(e))}")
            return
        self.status.value += f"<br>saved {html.escape(path)}"
