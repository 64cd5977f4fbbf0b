"""MaskExplorer: see which key blocks MSA selects, and what that saves, as the pattern changes.

Interactive at 1M tokens because it never selects for every query: it scores S sampled query
rows (evenly spaced positions) against the keys they can see (``msa_lab.demo_data``), caches those
block scores per (data, length, block size, group), and re-runs only the cheap top-k when top_k,
init_blocks or local_blocks change. The browser gets at most 256 x 256 heatmap cells.
"""
from __future__ import annotations

import html
import time
from collections import OrderedDict
from typing import Optional

import numpy as np

try:
    import ipywidgets as W
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as e:  # optional extra
    raise ImportError("MaskExplorer needs ipywidgets and plotly: pip install 'msa-lab[lab]'") from e

from .. import cost, viz
from ..config import PRESETS, MSAConfig
from ..demo_data import IndexDemo, block_scores_sampled, needle_recall, sample_positions, select_from_scores
from ._common import FigureExport, torch_threads as _torch_threads

SEQ_LENS = [(f"{n >> 10}K" if n < (1 << 20) else f"{n >> 20}M", n) for n in (1 << e for e in range(10, 21))]
BLOCK_SIZES = [16, 32, 64, 128, 256, 512]
DATA_KINDS = [("structured (needles)", "structured"), ("random", "random")]
_SCORE_CACHE = 6  # block-score arrays kept (each S x n_blocks float32: 8 MB at 1M tokens, block 128)


class MaskExplorer(FigureExport):
    """Controls + one plotly FigureWidget (selection map | cost curve) + a status line.

    Display it as the last expression of a cell (or ``display(explorer.widget)``). Controls are
    attributes (``seq_len``, ``block_size``, ``top_k``, ``init_blocks``, ``local_blocks``,
    ``group``, ``data``, ``rows``, ``preset``); setting ``.value`` on one updates the figure.
    ``last_update_s`` is the wall time of the last update; ``message`` the status text.

    ``torch_threads``: torch threads used during an update (restored after; None leaves torch's
    setting). One is the default because an update is tens of milliseconds of small matmuls, and
    on a busy 2-core machine OpenMP's thread hand-offs cost up to 10x more than they save.
    """

    def __init__(self, seq_len: int = 1 << 16, preset: str = "m3", block_size: Optional[int] = None,
                 top_k: Optional[int] = None, init_blocks: Optional[int] = None, local_blocks: Optional[int] = None,
                 group: int = 0, data: str = "structured", rows: int = 256, index_dim: int = 16, seed: int = 0,
                 max_cells: int = 256, torch_threads: Optional[int] = 1):
        if preset not in PRESETS:
            raise KeyError(f"unknown preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}")
        base = PRESETS[preset]
        allowed = [v for _, v in SEQ_LENS]
        if seq_len not in allowed:
            raise ValueError(f"seq_len={seq_len!r} is not on the explorer's scale; choose a power of two from "
                             f"1024 to {allowed[-1]} (e.g. 65536).")
        self.max_cells = max_cells
        self.torch_threads = torch_threads
        self._index_dim, self._seed = index_dim, seed
        self._scores: OrderedDict = OrderedDict()
        self._demo: Optional[IndexDemo] = None
        self._cost_key = None
        self._busy = False
        self.last_update_s = float("nan")
        self.message = ""

        style = {"description_width": "initial"}
        self.preset = W.Dropdown(options=sorted(PRESETS), value=preset, description="shapes", style=style,
                                 layout=W.Layout(width="150px"))
        self.seq_len = W.SelectionSlider(options=SEQ_LENS, value=seq_len, description="tokens", style=style,
                                         continuous_update=False, layout=W.Layout(width="330px"))
        self.block_size = W.Dropdown(options=BLOCK_SIZES, value=block_size or base.block_size, description="block size",
                                     style=style, layout=W.Layout(width="150px"))
        self.top_k = W.IntText(value=top_k if top_k is not None else base.top_k, description="top_k", style=style,
                               layout=W.Layout(width="120px"))
        self.init_blocks = W.IntText(value=base.init_blocks if init_blocks is None else init_blocks,
                                     description="init blocks", style=style, layout=W.Layout(width="140px"))
        self.local_blocks = W.IntText(value=base.local_blocks if local_blocks is None else local_blocks,
                                      description="local blocks", style=style, layout=W.Layout(width="140px"))
        self.group = W.Dropdown(options=list(range(base.n_kv_heads)), value=group, description="KV group", style=style,
                                layout=W.Layout(width="140px"))
        self.data = W.Dropdown(options=DATA_KINDS, value=data, description="data", style=style,
                               layout=W.Layout(width="240px"))
        self.rows = W.IntText(value=rows, description="sampled rows", style=style, layout=W.Layout(width="160px"))
        self.save_path = W.Text(value="mask_explorer.html", description="save to", style=style,
                                layout=W.Layout(width="260px"))
        self.save_button = W.Button(description="Save HTML", icon="download")
        self.save_button.on_click(lambda _: self._save_clicked())
        self.status = W.HTML()
        self.figure = self._make_figure()
        self.widget = W.VBox([
            W.HBox([self.preset, self.seq_len, self.block_size, self.data]),
            W.HBox([self.top_k, self.init_blocks, self.local_blocks, self.group, self.rows]),
            self.status,
            self.figure,
            W.HBox([self.save_path, self.save_button]),
        ])
        for c in self.controls:
            c.observe(self._changed, names="value")
        self.update()

    # ------------------------------------------------------------------ public
    @property
    def controls(self):
        return [self.preset, self.seq_len, self.block_size, self.top_k, self.init_blocks, self.local_blocks,
                self.group, self.data, self.rows]

    def config(self) -> MSAConfig:
        """The MSAConfig the controls describe (preset shapes + pattern); raises ValueError if invalid."""
        return PRESETS[self.preset.value].replace(
            block_size=self.block_size.value, top_k=self.top_k.value, init_blocks=self.init_blocks.value,
            local_blocks=self.local_blocks.value)

    def update(self) -> None:
        """Recompute from the controls and redraw; invalid controls show a message instead."""
        t0 = time.perf_counter()
        try:
            cfg = self.config()
            if not isinstance(self.rows.value, int) or self.rows.value < 1:
                raise ValueError(f"sampled rows must be >= 1, got {self.rows.value}; try 256.")
        except ValueError as e:
            self._show_error(str(e))
            return
        n, g, kind = self.seq_len.value, self.group.value, self.data.value
        positions = sample_positions(n, self.rows.value)
        with _torch_threads(self.torch_threads):
            scores = self._block_scores(n, cfg, g, kind, positions)
            idx = select_from_scores(scores, positions, cfg)  # [1, 1, S, top_k]
        grid = viz.selection_grid(idx, n, cfg, positions=positions, max_cells=self.max_cells)
        recall = None
        if kind == "structured":
            recall = needle_recall(idx[0, 0], positions, self._demo.needles(n, cfg.block_size).blocks[g], cfg)
        point = cost.token_cost(cfg, n, "prefill")  # the paper's count, as in the curve and the README
        density = cost.token_cost(cfg, n, "prefill", keys="exact").density  # comparable with sampled rows
        with self.figure.batch_update():
            self._draw_selection(grid, cfg, n)
            self._draw_cost(cfg, n)
            self.figure.layout.title.text = self._title(cfg, n, grid, point, recall)
        self.last_update_s = time.perf_counter() - t0
        self._show_status(cfg, n, positions.size, grid, point, density, recall)

    def clear_cache(self, keep_current: bool = True) -> None:
        """Forget cached block scores (all, or all but the current state's): for honest benchmarks."""
        current = next(reversed(self._scores), None) if keep_current else None
        self._scores = OrderedDict((k, v) for k, v in self._scores.items() if k == current)

    # ------------------------------------------------------------------ internals
    def _changed(self, change) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            if change["owner"] is self.preset:  # new shapes: new groups, new synthetic data
                self._demo, self._scores = None, OrderedDict()
                self.group.options = list(range(PRESETS[self.preset.value].n_kv_heads))
                self.group.value = 0
            self.update()
        finally:
            self._busy = False

    def _block_scores(self, n: int, cfg: MSAConfig, group: int, kind: str, positions: np.ndarray):
        """Cached [1, 1, S, n_blocks] index scores; top_k / init / local changes reuse them."""
        if self._demo is None:
            self._demo = IndexDemo(PRESETS[self.preset.value].n_kv_heads, self._index_dim, self._seed)
        key = (kind, n, cfg.block_size, group, positions.size)
        if key not in self._scores:
            ik = self._demo.index_keys(n, kind, cfg.block_size)
            iq = self._demo.index_queries(positions, group, kind, n, cfg.block_size)
            # the demo's Di is small; score with its own default scale, not the preset's index_dim
            scoring = MSAConfig(block_size=cfg.block_size, top_k=cfg.top_k, init_blocks=0, local_blocks=0)
            self._scores[key] = block_scores_sampled(iq, ik, positions, scoring)
            while len(self._scores) > _SCORE_CACHE:
                self._scores.popitem(last=False)
        self._scores.move_to_end(key)
        return self._scores[key]

    def _make_figure(self):
        fig = make_subplots(rows=1, cols=2, specs=[[{}, {"secondary_y": True}]], column_widths=[0.5, 0.5],
                            horizontal_spacing=0.17, subplot_titles=("selection map", "attention FLOPs"))
        empty = viz.SelectionGrid(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1), np.zeros(1), 1, 1, 0.0, 0.0)
        for tr in viz.selection_traces(empty):
            fig.add_trace(tr, row=1, col=1)
        fig.data[0].colorbar.update(x=0.435, len=0.85, thickness=12, title=dict(text="share<br>picked"))
        for tr, secondary in viz.cost_traces(PRESETS["tiny"], [1024, 2048]):
            fig.add_trace(tr, row=1, col=2, secondary_y=secondary)
        fig.update_yaxes(autorange="reversed", title="query block", row=1, col=1)
        fig.update_xaxes(title="key block", row=1, col=1)
        fig.update_xaxes(type="log", title="context length (tokens)", row=1, col=2)
        fig.update_yaxes(type="log", title="FLOPs / token / layer (prefill)", row=1, col=2, secondary_y=False)
        # plotly syncs a secondary axis' ticks to the (log) primary by default: odd ratio ticks
        fig.update_yaxes(tickmode="auto", showgrid=False, row=1, col=2, secondary_y=True)
        fig.add_vline(x=1024, line=dict(color="grey", width=1), row=1, col=2)
        fig.update_layout(height=540, width=1150, margin=dict(t=100, l=60, r=40, b=50),
                          legend=dict(orientation="h", x=0.57, y=-0.15), title=dict(font=dict(size=14)))
        return go.FigureWidget(fig)

    def _draw_selection(self, grid: viz.SelectionGrid, cfg: MSAConfig, n: int) -> None:
        dyn, frc = self.figure.data[0], self.figure.data[1]
        dyn.update(z=grid.dynamic, x=grid.x, y=grid.y)
        frc.update(z=np.where(grid.forced > 0, grid.forced, np.nan), x=grid.x, y=grid.y)
        per = lambda f: "" if f == 1 else f", {f} blocks per cell"  # noqa: E731
        blocks = f"{cfg.num_blocks(n)} blocks of {cfg.block_size}"
        self.figure.layout.xaxis.title.text = f"key block ({blocks}{per(grid.key_bin)})"
        self.figure.layout.yaxis.title.text = f"query block{per(grid.query_bin)}"

    def _draw_cost(self, cfg: MSAConfig, n: int) -> None:
        key = (self.preset.value, cfg.block_size, cfg.top_k)  # init/local do not change the cost
        if key != self._cost_key:
            new = viz.cost_traces(cfg, cost.log_lengths(1024, 1 << 20, 100))
            for old, (tr, _) in zip(self.figure.data[2:], new):
                old.update(x=tr.x, y=tr.y)
            self.figure.layout.yaxis3.range = [0, cost.flop_ceiling(cfg) * 1.05]
            self.figure.layout.yaxis3.title.text = f"dense / MSA (ceiling {cost.flop_ceiling(cfg):.0f}x)"
            self._cost_key = key
        self.figure.layout.shapes[0].update(x0=n, x1=n)

    def _title(self, cfg: MSAConfig, n: int, grid, point, recall) -> str:
        label = dict((v, k) for k, v in SEQ_LENS).get(n, f"{n:,}")
        needles = f", needles found {recall[0]}/{recall[1]}" if recall and recall[1] else ""
        return (f"MSA mask, {label} tokens, block {cfg.block_size}, top-{cfg.top_k} (init {cfg.init_blocks}, local "
                f"{cfg.local_blocks}), group {self.group.value}: {grid.selected_share:.1%} of visible blocks{needles}; "
                f"{point.ratio:.1f}x fewer FLOPs than dense ({self.preset.value} shapes)"
                f"<br><sup>{viz.LEGEND_NOTE}</sup>")

    def _show_error(self, text: str) -> None:
        self.message = text
        self.status.value = f"<div style='color:#b00020'><b>Not updated:</b> {html.escape(text)}</div>"

    def _show_status(self, cfg: MSAConfig, n: int, rows: int, grid, point, density, recall) -> None:
        parts = [
            f"<b>{n:,}</b> tokens = {cfg.num_blocks(n):,} blocks of {cfg.block_size}; KV group {self.group.value}; "
            f"{rows} sampled query rows",
            f"selected <b>{grid.selected_share:.1%}</b> of visible key blocks, attended keys / dense keys "
            f"<b>{grid.key_share:.1%}</b> (sampled rows; all {n:,} queries: {density:.1%})",
            f"prefill FLOPs per token and layer ({self.preset.value} shapes): dense {point.dense_flops:.3g}, "
            f"MSA {point.msa_flops:.3g} = <b>{point.ratio:.1f}x</b> fewer",
        ]
        if recall is not None:
            found, wanted = recall
            share = f"{found / wanted:.0%}" if wanted else "n/a"
            parts.append(f"planted needles found: <b>{found}/{wanted}</b> ({share}) of (row, needle) pairs "
                         f"where the needle is visible and not forced")
        parts.append(f"update {self.last_update_s * 1e3:.0f} ms")
        self.message = " | ".join(p.replace("<b>", "").replace("</b>", "") for p in parts)
        self.status.value = "<br>".join(parts)

    def _save_clicked(self) -> None:
        try:
            path = self.save_html(self.save_path.value)
        except OSError as e:
            self._show_error(f"could not save {self.save_path.value!r}: {e}")
            return
        self.status.value += f"<br>saved {html.escape(path)}"
