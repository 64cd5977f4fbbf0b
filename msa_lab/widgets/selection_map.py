"""SelectionMap: which key blocks a trained MSA model's indexer picks, layer by layer, on a real prompt.

Runs the model once per prompt (``Model.capture``: selected blocks ``[Hkv, N, top_k]`` per layer and,
when N <= dense_limit, the dense attention mass per key block ``[Hkv, N, n_blocks]``), then every
control only re-slices those arrays. One figure, five panels:

    selection map (query block x key block,   | the chosen query's row: dense mass per key block,
    share of queries that picked each block,   |   bars coloured by pick (forced / indexer / not picked)
    dense-mass contours over it, the chosen    | layer x key-block strip: the same query's picks in every layer
    query's row and picks marked)              | layer overlap (Jaccard) of those picks | indexer recall [L, Hkv]

The target span (the NIAH needle, or the image / screen patches) is marked in every panel, and the
recall panel says per layer and group whether the answer-position query (the last prompt token,
whose output is the answer's first token) picked the target's block. The browser gets block-level
data only, binned to at most ``max_cells`` x ``max_cells`` cells.
"""
from __future__ import annotations

import html
import json
import math
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

try:
    import ipywidgets as W
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as e:  # optional extra
    raise ImportError("SelectionMap needs ipywidgets and plotly: pip install 'msa-lab[lab]'") from e

from .. import viz
from ..config import MSAConfig
from ..model.tokens import IMAGE_PLACEHOLDER, IMG_END, IMG_START
from ._common import FigureExport, torch_threads as _torch_threads

PROMPT_KINDS = {  # kind -> label in the dropdown
    "niah": "NIAH document (needle in stdlib source)",
    "python": "a long stdlib Python file",
    "image": "image QA (image inside a document)",
    "gui": "GUI screen (inside a document)",
}
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
MAX_LENGTH = 1 << 20
MIN_LENGTH = 256  # NIAH needs ~215 tokens for needle + question + a minimal haystack
PYTHON_FILES = ("inspect.py", "typing.py", "argparse.py", "pydoc.py", "tarfile.py")  # the longest one is used
# strip / bar states: not visible, visible but not picked, forced (init/local), picked by the indexer
NOT_VISIBLE, SKIPPED, FORCED, DYNAMIC = -1, 0, 1, 2
STATE_COLOURS = {SKIPPED: "#dddddd", FORCED: "#4292c6", DYNAMIC: "#e6550d"}
TARGET_COLOUR = "#d62728"
_CAPTURE_CACHE = 6  # captures kept per widget (switching back to a prompt is then instant)


# ----------------------------------------------------------------------------- prompts
@dataclass
class Prompt:
    """A prompt to capture. target_label names what ``target`` (a token span, set after encoding) is."""

    kind: str
    text: str
    images: list
    question: Optional[str]  # the text the answer-position queries read (None: no question)
    target_label: Optional[str]  # "needle" | "image" | "screen" | None
    needle_span: Optional[Tuple[int, int]]  # NIAH: the needle's tokens [t0, t1); images: found after encoding
    description: str


def _stdlib_python_file() -> Tuple[str, bytes]:
    from ..tasks.haystack import stdlib_dir

    root = stdlib_dir()
    found = [(os.path.getsize(os.path.join(root, f)), f) for f in PYTHON_FILES if os.path.isfile(os.path.join(root, f))]
    if not found:
        raise FileNotFoundError(f"none of {PYTHON_FILES} found under the standard library at {root!r}")
    name = max(found)[1]
    with open(os.path.join(root, name), "rb") as f:
        return name, f.read()


def make_prompt(kind: str, length: int, image_tokens: int, seed: int = 0) -> Prompt:
    """The prompt of ``kind`` at about ``length`` model tokens (BOS + text + SEP; an image costs image_tokens).

    niah: RULER single needle at depth 0.5 in stdlib source (exactly ``length`` tokens).
    python: the start of the longest of PYTHON_FILES, cut at a line end (the whole file if shorter).
    image / gui: the task's image (or screen) at depth 0.5 of a stdlib document, then the task's
    question; when ``length`` leaves no room for a document, the task's own prompt (image first).
    """
    check_kind(kind)
    check_length(length)
    from ..tasks import iter_task
    from ..tasks.haystack import MIN_HAYSTACK_BYTES, build_context, make_source

    if kind == "niah":
        ex = next(iter_task("niah_single", 1, seed, length=length, depth=0.5))
        meta = json.loads(ex["meta"])
        s, e = meta["needles"][0]["byte_span"]  # prompt bytes of needle + "\n"; token = 1 + byte (after BOS)
        return Prompt(kind, ex["prompt"], [], meta["question"], "needle", (1 + s, e),
                      f"NIAH: needle \u201c{meta['needles'][0]['text']}\u201d at depth 0.5 of {length:,} tokens of "
                      f"stdlib source; question: \u201c{meta['question']}\u201d")
    if kind == "python":
        name, data = _stdlib_python_file()
        budget = length - 2
        cut = data.rfind(b"\n", 0, budget + 1) + 1 if len(data) > budget else len(data)
        cut = cut or budget  # a file without line breaks in the budget
        text = data[:cut].decode("utf-8", errors="replace")
        whole = "the whole file" if cut == len(data) else f"its first {cut:,} bytes"
        return Prompt(kind, text, [], None, None, None, f"Python: {whole} of the stdlib's {name} "
                                                       f"({len(data):,} bytes), no question")
    task = "image_qa" if kind == "image" else "gui"
    ex = next(iter_task(task, 1, seed))
    question = ex["prompt"].split(IMAGE_PLACEHOLDER + "\n", 1)[1]
    label = "image" if kind == "image" else "screen"
    text_budget = length - (image_tokens - len(IMAGE_PLACEHOLDER))  # the placeholder's bytes become the image
    native = 2 + image_tokens + 1 + len(question.encode())
    if text_budget - len(question.encode()) - len(IMAGE_PLACEHOLDER) - 4 < MIN_HAYSTACK_BYTES:
        return Prompt(kind, ex["prompt"], ex["images"], question, label, None,
                      f"{task}: the task's own prompt ({native} tokens: {label} first, then "
                      f"\u201c{question}\u201d); {length:,} tokens leave no room for a document around it")
    rng = random.Random(f"msa-lab/selection-map/{kind}/{seed}")
    text, _, _ = build_context(make_source(None, None, False, "eval"), rng, text_budget,
                               [(0.5, IMAGE_PLACEHOLDER)], question)
    return Prompt(kind, text, ex["images"], question, label, None,
                  f"{task}: the {label} ({image_tokens} tokens) at depth 0.5 of a {length:,}-token stdlib document, "
                  f"then \u201c{question}\u201d")


def check_kind(kind) -> None:
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; valid kinds: {', '.join(PROMPT_KINDS)}")


def check_length(length) -> None:
    if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"length must be an int of tokens in [{MIN_LENGTH}, {MAX_LENGTH}], got {length!r}; "
                         f"e.g. 4096 (a CPU captures about 1K tokens in a few seconds).")


def target_span(ids: np.ndarray, prompt: Prompt) -> Optional[Tuple[int, int]]:
    """Token span [t0, t1) of the prompt's target: the needle, or the first image's IMG_START..IMG_END."""
    if prompt.needle_span is not None:
        return prompt.needle_span
    if prompt.target_label in ("image", "screen"):
        start, end = np.nonzero(ids == IMG_START)[0], np.nonzero(ids == IMG_END)[0]
        if start.size and end.size:
            return int(start[0]), int(end[0]) + 1
    return None


# ----------------------------------------------------------------------------- pure analysis
def pick_states(picks: np.ndarray, pos: int, n_blocks: int, cfg: MSAConfig) -> np.ndarray:
    """int8 [n_blocks] state of every key block for a query at ``pos`` with selection ``picks`` [top_k].

    NOT_VISIBLE after its own block; FORCED / DYNAMIC where picked (forced: init or local window); else SKIPPED.
    """
    own = pos // cfg.block_size
    b = np.arange(n_blocks)
    out = np.where(b <= own, SKIPPED, NOT_VISIBLE).astype(np.int8)
    p = picks[picks >= 0]
    forced = (p < cfg.init_blocks) | ((p > own - cfg.local_blocks) & (p <= own))
    out[p] = np.where(forced, FORCED, DYNAMIC)
    return out


def bin_max(a: np.ndarray, f: int, fill=NOT_VISIBLE) -> np.ndarray:
    """[..., n] -> [..., ceil(n / f)]: max over groups of f consecutive entries."""
    n = a.shape[-1]
    pad = (-n) % f
    a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)], constant_values=fill)
    return a.reshape(*a.shape[:-1], -1, f).max(-1)


def bin_sum(a: np.ndarray, f: int) -> np.ndarray:
    n = a.shape[-1]
    a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, (-n) % f)])
    return a.reshape(*a.shape[:-1], -1, f).sum(-1)


def mass_cells(mass: np.ndarray, block_size: int, query_bin: int, key_bin: int) -> np.ndarray:
    """Dense mass [N, nb] -> [ny, nx]: mean over a cell's queries of the mass its key blocks hold."""
    n = mass.shape[0]
    cell = (np.arange(n) // block_size) // query_bin  # each query's row cell (positions are sorted)
    starts = np.r_[0, np.nonzero(np.diff(cell))[0] + 1]
    rows = np.add.reduceat(mass.astype(np.float64), starts, axis=0) / np.diff(np.r_[starts, n])[:, None]
    return bin_sum(rows, key_bin)


def jaccard(sets: Sequence[set]) -> np.ndarray:
    """[L, L] |A & B| / |A | B| of the given sets (NaN where both are empty)."""
    L = len(sets)
    out = np.full((L, L), np.nan)
    for a in range(L):
        for b in range(L):
            union = len(sets[a] | sets[b])
            if union:
                out[a, b] = len(sets[a] & sets[b]) / union
    return out


def target_picks(selected: List[np.ndarray], span: Tuple[int, int], query_rows: np.ndarray,
                 block_size: int) -> np.ndarray:
    """float [L, Hkv]: share of the ``query_rows`` whose selection holds a block of token span [t0, t1).

    selected[l]: int [Hkv, N, top_k]. The target counts as picked when any block it touches is picked.
    """
    t0, t1 = span
    lo, hi = t0 // block_size, (t1 - 1) // block_size
    out = np.zeros((len(selected), selected[0].shape[0]))
    for l, sel in enumerate(selected):
        rows = sel[:, query_rows]  # [Hkv, Q, K]
        out[l] = ((rows >= lo) & (rows <= hi)).any(-1).mean(-1)
    return out


# ----------------------------------------------------------------------------- widget
class SelectionMap(FigureExport):
    """Controls + one plotly FigureWidget + a status line, over one capture of ``model`` on a prompt.

    model: a sparse ``msa_lab.Model``; None loads ``msa_lab.load_model("msa-tiny")``.
    prompt: one of PROMPT_KINDS; length: prompt tokens (NIAH exact, others about that).
    dense_limit: dense mass (recall, contours, bars) is computed up to this many tokens.
    Controls: ``prompt``, ``length`` (rerun the model, with a progress bar), ``layer``, ``group``,
    ``query`` (a token position; default the last one, the answer position) and ``overlay``
    (dense-mass contours). ``last_update_s`` times the last redraw; ``message`` is the status text.
    Export: ``save_html(path)``, ``save_png(path)`` or the buttons.

    torch_threads: torch threads during the model run (restored after; None leaves torch's setting).
    One by default: on a busy 2-core CPU, OpenMP hand-offs cost several times what they save (msa-tiny,
    1,024 tokens, load ~6: 3.4 s with 1 thread, 20 s with 2).
    """

    def __init__(self, model=None, prompt: str = "niah", length: int = 4096, *, layer: int = 0, group: int = 0,
                 query: Optional[int] = None, seed: int = 0, dense_limit: int = 4096, max_cells: int = 256,
                 overlay: bool = True, torch_threads: Optional[int] = 1):
        check_kind(prompt)
        check_length(length)
        if not isinstance(max_cells, int) or max_cells < 8:
            raise ValueError(f"max_cells must be an int >= 8, got {max_cells!r}")
        if model is None:
            import msa_lab

            model = msa_lab.load_model("msa-tiny")
        if not (hasattr(model, "capture") and hasattr(model, "config")):
            raise TypeError(f"model must be an msa_lab Model (msa_lab.load_model('msa-tiny')), "
                            f"got {type(model).__name__}")
        if not model.config.sparse:
            raise ValueError(f"model {model.name!r} has dense attention and picks no blocks; use "
                             f"msa_lab.load_model('msa-tiny').")
        self.model, self.cfg = model, model.config.msa_config()
        self.seed, self.dense_limit, self.max_cells = seed, dense_limit, max_cells
        self.torch_threads = torch_threads
        self.capture = None
        self.prompt_info: Optional[Prompt] = None
        self.target: Optional[Tuple[int, int]] = None
        self.answer_rows = np.zeros(0, dtype=np.int64)
        self._captures: OrderedDict = OrderedDict()
        self._cells: dict = {}  # (layer, group) -> (SelectionGrid, mass cells or None)
        self._busy = False
        self.last_update_s = float("nan")
        self.last_capture_s = float("nan")
        self.message = ""

        L, Hkv = model.config.n_layers, model.config.n_kv_heads
        if not (0 <= layer < L and 0 <= group < Hkv):
            raise ValueError(f"layer={layer}, group={group} out of range: the model has {L} layers and {Hkv} KV groups")
        style = {"description_width": "initial"}
        lengths = sorted(set(LENGTHS) | {int(length)})
        self.prompt = W.Dropdown(options=[(v, k) for k, v in PROMPT_KINDS.items()], value=prompt,
                                 description="prompt", style=style, layout=W.Layout(width="360px"))
        self.length = W.Dropdown(options=[(f"{n:,}", n) for n in lengths], value=int(length), description="tokens",
                                 style=style, layout=W.Layout(width="170px"))
        self.layer = W.Dropdown(options=list(range(L)), value=layer, description="layer", style=style,
                                layout=W.Layout(width="120px"))
        self.group = W.Dropdown(options=list(range(Hkv)), value=group, description="KV group", style=style,
                                layout=W.Layout(width="140px"))
        self.query = W.IntSlider(value=0, min=0, max=1, description="query position", style=style,
                                 continuous_update=False, layout=W.Layout(width="520px"))
        self.overlay = W.Checkbox(value=overlay, description="dense-mass contours", indent=False,
                                  layout=W.Layout(width="180px"))
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", bar_style="info",
                                      layout=W.Layout(width="300px", visibility="hidden"))
        self.save_path = W.Text(value="selection_map.html", description="save to", style=style,
                                layout=W.Layout(width="280px"))
        self.save_button = W.Button(description="Save HTML", icon="download")
        self.save_png_button = W.Button(description="Save PNG", icon="image")
        self.save_button.on_click(lambda _: self._save_clicked("html"))
        self.save_png_button.on_click(lambda _: self._save_clicked("png"))
        self.status = W.HTML()
        self.figure = self._make_figure()
        self.widget = W.VBox([
            W.HBox([self.prompt, self.length, self.progress]),
            W.HBox([self.layer, self.group, self.query, self.overlay]),
            self.status, self.figure,
            W.HBox([self.save_path, self.save_button, self.save_png_button]),
        ])
        for c in (self.prompt, self.length):
            c.observe(self._prompt_changed, names="value")
        for c in (self.layer, self.group, self.query, self.overlay):
            c.observe(self._view_changed, names="value")
        self.load()
        if query is not None:
            self.query.value = query

    # ------------------------------------------------------------------ public
    @property
    def controls(self):
        """The controls that only redraw (timed by the benchmark); prompt and length rerun the model."""
        return [self.layer, self.group, self.query, self.overlay]

    def load(self) -> None:
        """Capture the model on the prompt the controls name (cached per prompt), then redraw."""
        kind, length = self.prompt.value, self.length.value
        key = (kind, length)
        if key not in self._captures:
            info = make_prompt(kind, length, self.model.config.patches_per_image + 2, self.seed)
            self._captures[key] = (info, self._run_model(info))
            while len(self._captures) > _CAPTURE_CACHE:
                self._captures.popitem(last=False)
        self._captures.move_to_end(key)
        info, cap = self._captures[key]
        self.show(cap, info)

    def show(self, capture, prompt: Optional[Prompt] = None, *, target: Optional[Tuple[int, int]] = None,
             answer_rows: Optional[Sequence[int]] = None) -> None:
        """Display a Capture (from ``model.capture``, or made by hand).

        prompt: what was captured (for the target span and the status line). target: a token span
        [t0, t1) to mark instead of the prompt's. answer_rows: the query positions whose picks of the
        target are reported (default: the last token, the answer position).
        """
        if capture.selected is None:
            raise ValueError("this capture has no selection (a dense model's); capture with an MSA model.")
        if capture.block_size != self.cfg.block_size or capture.top_k != self.cfg.top_k:
            raise ValueError(f"capture has block_size={capture.block_size}, top_k={capture.top_k} but the model uses "
                             f"{self.cfg.block_size}, {self.cfg.top_k}; capture with this widget's model.")
        n, L, Hkv = len(capture.ids), len(self.layer.options), len(self.group.options)
        shapes = {tuple(s.shape) for s in capture.selected}
        if len(capture.selected) != L or shapes != {(Hkv, n, self.cfg.top_k)}:
            raise ValueError(f"capture.selected must be {L} arrays [Hkv={Hkv}, N={n}, top_k={self.cfg.top_k}] (one per "
                             f"layer of the model); got {len(capture.selected)} of shapes {sorted(shapes)}")
        if target is None and prompt is not None:
            target = target_span(capture.ids, prompt)
        if target is not None and not (0 <= target[0] < target[1] <= n):
            raise ValueError(f"target span {target} is not inside the {n} captured tokens; give [t0, t1) with "
                             f"0 <= t0 < t1 <= {n}")
        self.capture, self.prompt_info, self.target, self._cells = capture, prompt, target, {}
        self.answer_rows = np.asarray([n - 1] if answer_rows is None else answer_rows, dtype=np.int64)
        self._busy = True
        try:
            self.query.max = n - 1
            self.query.value = n - 1
        finally:
            self._busy = False
        self.update()

    def update(self, what: str = "all") -> None:
        """Redraw from the controls: "all", "query" (what depends on the query position) or "overlay"."""
        t0 = time.perf_counter()
        cap, cfg = self.capture, self.cfg
        l, g, p = self.layer.value, self.group.value, self.query.value
        n, nb = len(cap.ids), cfg.num_blocks(len(cap.ids))
        grid, mass = self._layer_cells(l, g)
        fx = grid.key_bin
        states = np.stack([pick_states(sel[g, p], p, nb, cfg) for sel in cap.selected])  # [L, nb]
        row_mass = None if cap.block_mass is None else cap.block_mass[l][g, p].astype(np.float64)
        with self.figure.batch_update():
            if what in ("all", "overlay"):
                self._draw_contours(grid, mass)
            if what == "all":
                self._draw_map(grid)
                self._draw_recall(l, g)
            if what in ("all", "query"):
                self._draw_query(grid, states, row_mass, l, g, p, nb)
            self._draw_target(fx)
            self.figure.layout.title.text = self._title(l, g, p, n)
        self.last_update_s = time.perf_counter() - t0
        self._show_status(l, g, p, n, states[l])

    def clear_cache(self, keep_current: bool = True) -> None:
        """Forget binned maps (all, or all but the current layer and group's): for honest benchmarks."""
        key = (self.layer.value, self.group.value)
        self._cells = {key: self._cells[key]} if keep_current and key in self._cells else {}

    def target_table(self):
        """pandas DataFrame, one row per (layer, group): recall, and the target's picks at the answer position."""
        import pandas as pd

        cap, rows = self.capture, []
        picked = target_picks(cap.selected, self.target, self.answer_rows, self.cfg.block_size) \
            if self.target else None
        for l in range(len(cap.selected)):
            for g in range(cap.selected[l].shape[0]):
                r = {"layer": l, "group": g}
                if cap.recall is not None:
                    r["recall"] = float(cap.recall[l, g])
                if cap.forced_mass is not None:  # how much of that recall the always-kept blocks give for free
                    r["forced mass"] = float(cap.forced_mass[l, g])
                    r["picked recall"] = float(cap.picked_recall[l, g])
                if picked is not None:
                    r[f"{self.prompt_info.target_label if self.prompt_info else 'target'} picked"] = picked[l, g]
                rows.append(r)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ model run
    def _run_model(self, info: Prompt):
        """model.capture with a progress bar: one tick per (chunk, layer) through forward hooks."""
        enc = self.model.encode(info.text, info.images or None)
        n, chunk = len(enc), 2048
        steps = math.ceil(n / chunk) * len(self.model.net.layers)
        bar = self.progress
        bar.max, bar.value, bar.bar_style = steps + 1, 0, "info"
        bar.description = f"model {n:,} tok"
        bar.layout.visibility = "visible"
        self.status.value = (f"<i>running {html.escape(self.model.name)} on {n:,} tokens"
                             f"{' and the dense attention mass' if n <= self.dense_limit else ''}...</i>")

        def tick(*_):
            bar.value += 1
            if bar.value == steps:
                bar.description = "dense mass" if n <= self.dense_limit else "finishing"

        hooks = [layer.register_forward_hook(tick) for layer in self.model.net.layers]
        t0 = time.perf_counter()
        try:
            with _torch_threads(self.torch_threads):
                cap = self.model.capture(enc, dense_limit=self.dense_limit, chunk_size=chunk)
        finally:
            for h in hooks:
                h.remove()
            bar.layout.visibility = "hidden"
        self.last_capture_s = time.perf_counter() - t0
        bar.value = bar.max
        return cap

    # ------------------------------------------------------------------ events
    def _prompt_changed(self, change) -> None:
        if self._busy:
            return
        try:
            self.load()
        except (ValueError, FileNotFoundError) as e:
            self._show_error(str(e))

    def _view_changed(self, change) -> None:
        if self._busy or self.capture is None:
            return
        owner = change["owner"]
        self.update("query" if owner is self.query else "overlay" if owner is self.overlay else "all")

    # ------------------------------------------------------------------ drawing
    def _layer_cells(self, l: int, g: int):
        """Cached (SelectionGrid, dense-mass cells [ny, nx] or None) of one layer and group."""
        if (l, g) not in self._cells:
            cap = self.capture
            n = len(cap.ids)
            grid = viz.selection_grid(cap.selected[l][None], n, self.cfg, group=g, max_cells=self.max_cells)
            mass = None
            if cap.block_mass is not None:
                mass = mass_cells(cap.block_mass[l][g], self.cfg.block_size, grid.query_bin, grid.key_bin)
            self._cells[(l, g)] = (grid, mass)
        return self._cells[(l, g)]

    def _make_figure(self):
        fig = make_subplots(
            rows=3, cols=3, column_widths=[0.44, 0.28, 0.28], row_heights=[0.34, 0.3, 0.36],
            specs=[[{"rowspan": 3}, {"colspan": 2}, None], [None, {"colspan": 2}, None], [None, {}, {}]],
            horizontal_spacing=0.1, vertical_spacing=0.12,
            subplot_titles=("selection map", "the query's row", "the query's picks in every layer",
                            "layer overlap (Jaccard)", "indexer recall"))
        empty = viz.SelectionGrid(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1), np.zeros(1), 1, 1, 0.0, 0.0)
        dyn, frc = viz.selection_traces(empty)
        fig.add_trace(dyn, 1, 1)  # 0
        right = fig.layout.xaxis.domain[1]  # the colour bar sits in the gap right of the map
        fig.data[0].colorbar.update(x=right + 0.005, xanchor="left", len=0.35, y=0.8, thickness=8,
                                    title=dict(text="share<br>picked", side="top"), tickfont=dict(size=9))
        fig.add_trace(frc, 1, 1)  # 1
        fig.add_trace(go.Contour(  # 2: log10 dense mass
            z=[[0]], x=[0], y=[0], showscale=False, contours=dict(coloring="lines", showlabels=True, start=-2.5,
                                                                  end=0, size=0.5),
            line=dict(width=1), colorscale=[[0, "#31a354"], [1, "#006d2c"]], name="dense mass",
            hovertemplate="log10 dense mass %{z:.2f}<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="the query's picks",  # 3
                                 marker=dict(symbol="x-thin", size=9, line=dict(width=2, color="black")),
                                 hovertemplate="picked block %{x}<extra></extra>"), 1, 1)
        fig.add_trace(go.Bar(x=[], y=[], name="dense mass", marker=dict(line=dict(width=0)),  # 4
                             hovertemplate="key block %{customdata}<br>%{y:.3g}<extra></extra>"), 1, 2)
        # four flat bands over zmin..zmax = -1.5..2.5: not visible (white), skipped, forced, dynamic
        colours = ["#ffffff", STATE_COLOURS[SKIPPED], STATE_COLOURS[FORCED], STATE_COLOURS[DYNAMIC]]
        strip_scale = [[v, c] for i, c in enumerate(colours) for v in (i / 4, (i + 1) / 4 - 0.001 * (i < 3))]
        fig.add_trace(go.Heatmap(z=[[0]], zmin=-1.5, zmax=2.5, colorscale=strip_scale, showscale=False,  # 5
                                 name="picks", hovertemplate="layer %{y}, key block ~%{x}<extra></extra>"), 2, 2)
        fig.add_trace(go.Heatmap(z=[[0]], zmin=0, zmax=1, colorscale="Greys", showscale=False, texttemplate="%{text}",
                                 textfont=dict(size=9), name="Jaccard",  # 6
                                 hovertemplate="layers %{y} and %{x}: %{z:.2f}<extra></extra>"), 3, 2)
        fig.add_trace(go.Heatmap(z=[[0]], zmin=0, zmax=1, colorscale="Viridis", showscale=False,  # 7
                                 texttemplate="%{text}", textfont=dict(size=9), name="recall",
                                 hovertemplate="layer %{y}, group %{x}: recall %{z:.3f} (share of the dense "
                                               "mass in the picked blocks)<br>always-kept blocks: "
                                               "%{customdata[0]:.2f} of the mass; the indexer's picks: "
                                               "%{customdata[1]:.2f} of the rest<br>%{text}<extra></extra>"), 3, 3)
        fig.update_yaxes(autorange="reversed", title="query block", row=1, col=1)
        fig.update_xaxes(title="key block", row=1, col=1)
        fig.update_xaxes(matches="x", row=1, col=2)
        fig.update_xaxes(matches="x", row=2, col=2)
        fig.update_yaxes(title="dense mass", row=1, col=2)
        fig.update_yaxes(autorange="reversed", title="layer", dtick=1, row=2, col=2)
        fig.update_xaxes(title="layer", dtick=1, row=3, col=2)
        fig.update_yaxes(autorange="reversed", title="layer", dtick=1, row=3, col=2)
        fig.update_xaxes(title="KV group", dtick=1, row=3, col=3)
        fig.update_yaxes(autorange="reversed", dtick=1, row=3, col=3)
        # shapes 0-5: query row on the map, target on map / row / strip, current layer on strip, (l, g) on recall
        fig.add_shape(type="rect", xref="x domain", yref="y", x0=0, x1=1, y0=0, y1=1,
                      line=dict(color="black", width=1.5), fillcolor="rgba(0,0,0,0)")
        for xa, ya in (("x", "y"), ("x2", "y2"), ("x3", "y3")):
            fig.add_shape(type="rect", xref=xa, yref=f"{ya} domain", x0=0, x1=1, y0=0, y1=1, visible=False,
                          line=dict(color=TARGET_COLOUR, width=1.5, dash="dot"), fillcolor="rgba(214,39,40,0.08)")
        fig.add_shape(type="rect", xref="x3 domain", yref="y3", x0=0, x1=1, y0=-0.5, y1=0.5,
                      line=dict(color="black", width=1))
        fig.add_shape(type="rect", xref="x5", yref="y5", x0=-0.5, x1=0.5, y0=-0.5, y1=0.5,
                      line=dict(color="#ff2d55", width=2.5))
        fig.update_layout(height=760, width=1250, margin=dict(t=110, l=60, r=30, b=50), showlegend=False,
                          bargap=0, title=dict(font=dict(size=14)))
        return go.FigureWidget(fig)

    def _draw_contours(self, grid, mass) -> None:
        f = self.figure
        if mass is not None and self.overlay.value:
            z = np.where(np.isnan(grid.dynamic), np.nan, np.log10(np.maximum(mass, 1e-4)))
            f.data[2].update(z=z, x=grid.x, y=grid.y, visible=True)
        else:
            f.data[2].visible = False

    def _draw_map(self, grid) -> None:
        f = self.figure
        f.data[0].update(z=grid.dynamic, x=grid.x, y=grid.y)
        f.data[1].update(z=np.where(grid.forced > 0, grid.forced, np.nan), x=grid.x, y=grid.y)
        per = lambda k: "" if k == 1 else f", {k} blocks per cell"  # noqa: E731
        n = len(self.capture.ids)
        blocks = f"{self.cfg.num_blocks(n)} blocks of {self.cfg.block_size}"
        f.layout.xaxis.title.text = f"key block ({blocks}{per(grid.key_bin)})"
        f.layout.yaxis.title.text = f"query block{per(grid.query_bin)}"

    def _draw_query(self, grid, states, row_mass, l, g, p, nb) -> None:
        f, cfg, fx, fy = self.figure, self.cfg, grid.key_bin, grid.query_bin
        own = p // cfg.block_size
        cell = own // fy
        f.layout.shapes[0].update(y0=cell * fy - 0.5, y1=(cell + 1) * fy - 0.5)
        picks = self.capture.selected[l][g, p]
        picks = np.sort(picks[picks >= 0])
        f.data[3].update(x=(picks // fx) * fx + (fx - 1) / 2, y=np.full(picks.size, grid.y[min(cell, grid.y.size - 1)]))
        # the row panel: bars over key-block bins, coloured by the best state in the bin
        binned = bin_max(states[l][None], fx)[0]
        centres = np.arange(binned.size) * fx + (fx - 1) / 2
        if row_mass is not None:
            y = bin_sum(row_mass[None], fx)[0]
            f.layout.yaxis2.title.text = "dense mass"
        else:
            y = np.where(binned > SKIPPED, 1.0, np.where(binned == SKIPPED, 0.05, 0.0))
            f.layout.yaxis2.title.text = "picked (no dense mass)"
        colours = [STATE_COLOURS.get(int(s), "#ffffff") for s in binned]
        labels = [f"{i * fx}" if fx == 1 else f"{i * fx}-{min(nb, (i + 1) * fx) - 1}" for i in range(binned.size)]
        f.data[4].update(x=centres, y=y, width=fx, marker_color=colours, customdata=labels)
        strip = bin_max(states, fx).astype(float)
        strip[strip == NOT_VISIBLE] = np.nan
        f.data[5].update(z=strip, x=centres, y=np.arange(strip.shape[0]))
        f.layout.shapes[4].update(y0=l - 0.5, y1=l + 0.5)
        dyn = [set(np.nonzero(s == DYNAMIC)[0].tolist()) for s in states]
        jac = jaccard(dyn)
        L = len(dyn)
        f.data[6].update(z=jac, x=np.arange(L), y=np.arange(L),
                         text=[["" if np.isnan(v) else f"{v:.1f}" for v in r] for r in jac])

    def _draw_recall(self, l, g) -> None:
        cap, f = self.capture, self.figure
        L, Hkv = len(cap.selected), cap.selected[0].shape[0]
        rec = cap.recall if cap.recall is not None else np.full((L, Hkv), np.nan)
        picked = target_picks(cap.selected, self.target, self.answer_rows, self.cfg.block_size) \
            if self.target else None
        text = []
        for li in range(L):
            row = []
            for gi in range(Hkv):
                t = "" if np.isnan(rec[li, gi]) else f"{rec[li, gi]:.2f}"
                if picked is not None:
                    mark = "\u2713" if picked[li, gi] >= 0.5 else "\u2717"
                    share = "" if self.answer_rows.size == 1 else f" {picked[li, gi]:.0%}"
                    t = f"{t} {mark}{share}".strip()
                row.append(t)
            text.append(row)
        nan = np.full((L, Hkv), np.nan)
        extra = np.stack([cap.forced_mass if cap.forced_mass is not None else nan,
                          cap.picked_recall if cap.picked_recall is not None else nan], axis=-1)  # [L, Hkv, 2]
        f.data[7].update(z=rec, x=np.arange(Hkv), y=np.arange(L), text=text, customdata=extra)
        f.layout.shapes[5].update(x0=g - 0.5, x1=g + 0.5, y0=l - 0.5, y1=l + 0.5)
        label = self.prompt_info.target_label if self.prompt_info and self.prompt_info.target_label else "target"
        what = "indexer recall" if cap.recall is not None else f"recall: no dense mass (N > {self.dense_limit:,})"
        if picked is not None:
            what += f"<br><sup>\u2713: the answer position picked the {label}</sup>"
        f.layout.annotations[4].text = what

    def _draw_target(self, fx) -> None:
        shapes = self.figure.layout.shapes
        if self.target is None:
            for s in shapes[1:4]:
                s.visible = False
            return
        lo, hi = self.target[0] // self.cfg.block_size, (self.target[1] - 1) // self.cfg.block_size
        # whole bins on binned maps, so the mark sits on the columns that hold the target
        x0, x1 = (lo // fx) * fx - 0.5, (hi // fx + 1) * fx - 0.5
        for s in shapes[1:4]:
            s.update(x0=x0, x1=x1, visible=True)

    # ------------------------------------------------------------------ text
    def _title(self, l, g, p, n) -> str:
        info = self.prompt_info
        kind = info.kind if info else "capture"
        return (f"{html.escape(self.model.name)}: what the indexer picks, {kind} prompt of {n:,} tokens, "
                f"layer {l}, KV group {g}, query {p:,} (block {p // self.cfg.block_size})"
                f"<br><sup>{viz.LEGEND_NOTE} · green contours: log10 dense attention mass · "
                f"red dotted: the {info.target_label if info and info.target_label else 'target'}</sup>")

    def _show_status(self, l, g, p, n, state_row) -> None:
        cap, cfg, info = self.capture, self.cfg, self.prompt_info
        train = (self.model.card or {}).get("train", {})
        if isinstance(train, str):  # older cards store it as text
            train = {}
        trained = f"trained {train['steps']:,} steps" if "steps" in train else str(train.get("note", "untrained card"))
        parts = []
        if info is not None:
            parts.append(html.escape(info.description))
        parts.append(f"<b>{n:,}</b> tokens = {cfg.num_blocks(n)} blocks of {cfg.block_size}; top-{cfg.top_k} "
                     f"(init {cfg.init_blocks}, local {cfg.local_blocks}); model {html.escape(self.model.name)}, "
                     f"{trained}")
        picks = int((state_row > SKIPPED).sum())
        dyn = np.nonzero(state_row == DYNAMIC)[0].tolist()
        parts.append(f"query {p:,}: {picks} blocks read, indexer's picks {dyn}")
        if cap.recall is not None:
            parts.append(f"recall layer {l} group {g}: <b>{cap.recall[l, g]:.2f}</b> (mean over layers "
                         f"{float(cap.recall.mean()):.2f})")
            if cap.forced_mass is not None:
                parts.append(f"of which the always-kept blocks (init, local) hold {cap.forced_mass[l, g]:.2f} of "
                             f"the mass; the indexer's own picks hold {cap.picked_recall[l, g]:.2f} of the rest")
        if self.target is not None:
            label = info.target_label if info and info.target_label else "target"
            lo, hi = self.target[0] // cfg.block_size, (self.target[1] - 1) // cfg.block_size
            got = target_picks(cap.selected, self.target, self.answer_rows, cfg.block_size)
            hit = (got >= 0.5)
            parts.append(f"{label}: tokens {self.target[0]:,}-{self.target[1] - 1:,} = key blocks "
                         f"{lo}{'' if hi == lo else f'-{hi}'}; picked at the answer position by "
                         f"<b>{int(hit.sum())}/{hit.size}</b> (layer, group) pairs; here: "
                         f"<b>{'yes' if hit[l, g] else 'no'}</b>")
        parts.append(f"redraw {self.last_update_s * 1e3:.0f} ms"
                     + (f"; model run {self.last_capture_s:.1f} s" if self.last_capture_s == self.last_capture_s
                        else ""))
        self.message = html.unescape(" | ".join(x.replace("<b>", "").replace("</b>", "") for x in parts))
        self.status.value = "<br>".join(parts)

    def _show_error(self, text: str) -> None:
        self.message = text
        self.status.value = f"<div style='color:#b00020'><b>Not updated:</b> {html.escape(text)}</div>"

    def _save_clicked(self, fmt: str) -> None:
        path = self.save_path.value
        if fmt == "png" and path.endswith(".html"):
            path = path[:-5] + ".png"
        try:
            path = self.save_html(path) if fmt == "html" else self.save_png(path)
        except (OSError, RuntimeError) as e:
            self._show_error(f"could not save {path!r}: {e}")
            return
        self.status.value += f"<br>saved {html.escape(path)}"
