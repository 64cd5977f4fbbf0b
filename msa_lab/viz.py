"""Plotly figures of MSA selections and costs, at block level only.

Nothing here sends an N x N (or even Nq x n_blocks) array to the browser: selections are binned
into at most ``max_cells`` x ``max_cells`` cells, curves into at most ``max_points`` points.
Needs plotly (``pip install 'msa-lab[lab]'``); ``import msa_lab`` does not import this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import cost as _cost
from .config import MSAConfig

FORCED_COLOURS = [[0.0, "#9ecae1"], [1.0, "#08519c"]]  # blue: init + local window
DYNAMIC_COLOURS = [[0.0, "#eeeeee"], [1e-6, "#fdd0a2"], [1.0, "#a63603"]]  # grey = visible, not picked; orange
LEGEND_NOTE = "blue: forced (init/local) · orange: dynamic (indexer's picks) · grey: visible, not picked"


def _go():
    try:
        import plotly.graph_objects as go
    except ImportError as e:  # plotly is an optional extra
        raise ImportError("msa_lab.viz needs plotly: pip install 'msa-lab[lab]'") from e
    return go


# --------------------------------------------------------------------------- binning
@dataclass(frozen=True)
class SelectionGrid:
    """A selection binned to query-block x key-block cells (shares of visible pairs, NaN if none)."""

    forced: np.ndarray  # [ny, nx] share of visible (query, key block) pairs picked by forcing
    dynamic: np.ndarray  # [ny, nx] share picked by the indexer
    x: np.ndarray  # [nx] centre of each column, in key blocks (first block + (key_bin - 1) / 2)
    y: np.ndarray  # [ny] centre of each row, in query blocks
    key_bin: int  # key blocks per column
    query_bin: int  # query blocks per row
    selected_share: float  # selected visible blocks / visible blocks, over all rows
    key_share: float  # attended keys / visible keys, over all rows


def _rows(idx, n_keys: int, cfg: MSAConfig, group: int, batch: int, positions) -> Tuple[np.ndarray, np.ndarray]:
    """idx [B, Hkv, Nq, top_k] (torch or numpy) -> (rows [Nq, top_k] int64, positions [Nq] int64)."""
    a = idx.detach().cpu().numpy() if hasattr(idx, "detach") else np.asarray(idx)
    if a.ndim != 4:
        raise ValueError(f"idx must be [B, Hkv, Nq, top_k], got shape {a.shape}")
    if not (0 <= batch < a.shape[0]) or not (0 <= group < a.shape[1]):
        raise ValueError(f"batch={batch}, group={group} out of range for idx of shape {a.shape} [B, Hkv, Nq, top_k]")
    rows = a[batch, group].astype(np.int64)
    nq = rows.shape[0]
    pos = np.arange(n_keys - nq, n_keys) if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)
    if pos.shape[0] != nq:
        raise ValueError(f"{pos.shape[0]} positions for {nq} idx rows; pass one position per row (or None).")
    if nq and (pos.min() < 0 or pos.max() >= n_keys):
        raise ValueError(f"positions must lie in [0, n_keys={n_keys}); got [{pos.min()}, {pos.max()}]")
    nb = cfg.num_blocks(n_keys)
    if rows.size and (rows.min() < -1 or rows.max() >= nb):
        raise ValueError(f"idx entries must be block numbers in [0, {nb}) or -1; got [{rows.min()}, {rows.max()}]")
    future = rows > (pos // cfg.block_size)[:, None]
    if future.any():
        i = int(np.nonzero(future.any(-1))[0][0])
        raise ValueError(
            f"idx row {i} (query position {pos[i]}) selects blocks after its own block {pos[i] // cfg.block_size}: "
            f"{rows[i].tolist()}; pass the positions the rows belong to (positions=...) or a causal selection."
        )
    return rows, pos


def selection_grid(idx, n_keys: int, cfg: MSAConfig, group: int = 0, batch: int = 0, positions=None,
                   max_cells: int = 256) -> SelectionGrid:
    """Bin one (batch, group) of a selection into at most max_cells x max_cells cells.

    idx ``[B, Hkv, Nq, top_k]``; ``positions`` [Nq] are the rows' query positions (default: the
    last Nq of n_keys, i.e. a full prefill), so sampled rows work too. Rows are binned by the query's
    own block over the range of query blocks present, columns by key block.
    """
    if not isinstance(max_cells, int) or max_cells < 1:
        raise ValueError(f"max_cells must be an int >= 1, got {max_cells!r}")
    rows, pos = _rows(idx, n_keys, cfg, group, batch, positions)
    nb, bs = cfg.num_blocks(n_keys), cfg.block_size
    fx = -(-nb // max_cells)
    nx = -(-nb // fx)
    own = pos // bs
    q0 = int(own.min()) if own.size else 0
    nqb = (int(own.max()) - q0 + 1) if own.size else 1
    # few sampled rows: no more row bins than distinct query blocks, or most rows would be empty
    fy = -(-nqb // min(max_cells, max(1, np.unique(own).size)))
    ny = -(-nqb // fy)

    # visible (query, key block) pairs per cell, via one row per distinct own block
    per_own = np.bincount(own - q0, minlength=nqb).astype(np.float64)  # [nqb] rows per own block
    starts = np.arange(nx) * fx
    vis_own = np.clip((q0 + np.arange(nqb))[:, None] + 1 - starts[None, :], 0, fx) * per_own[:, None]  # [nqb, nx]
    vis = np.pad(vis_own, ((0, ny * fy - nqb), (0, 0))).reshape(ny, fy, nx).sum(1)

    r, c = np.nonzero(rows >= 0)
    b = rows[r, c]
    o = own[r]
    is_forced = (b < cfg.init_blocks) | ((b > o - cfg.local_blocks) & (b <= o))
    cell = ((o - q0) // fy) * nx + b // fx
    forced = np.bincount(cell[is_forced], minlength=ny * nx).reshape(ny, nx).astype(np.float64)
    dynamic = np.bincount(cell[~is_forced], minlength=ny * nx).reshape(ny, nx).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f_share = np.where(vis > 0, forced / vis, np.nan)
        d_share = np.where(vis > 0, dynamic / vis, np.nan)

    visible_keys = float((pos + 1).sum())
    # attended keys: whole blocks, except the own block which counts keys 0..p
    full = np.where(b == o, pos[r] % bs + 1, bs)
    return SelectionGrid(
        forced=f_share, dynamic=d_share, x=starts + (fx - 1) / 2, y=q0 + np.arange(ny) * fy + (fy - 1) / 2,
        key_bin=fx, query_bin=fy,
        selected_share=float(b.size / max(vis.sum(), 1)), key_share=float(full.sum() / max(visible_keys, 1)),
    )


# --------------------------------------------------------------------------- traces
def selection_traces(grid: SelectionGrid) -> list:
    """Two heatmaps: dynamic share (grey where visible but not picked) under forced share (blue)."""
    go = _go()
    dyn = go.Heatmap(
        z=grid.dynamic, x=grid.x, y=grid.y, zmin=0, zmax=1, colorscale=DYNAMIC_COLOURS, name="dynamic",
        colorbar=dict(title="picked", len=0.8),
        hovertemplate="key block ~%{x}<br>query block ~%{y}<br>dynamic %{z:.2f}<extra></extra>",
    )
    forced_z = np.where(grid.forced > 0, grid.forced, np.nan)
    frc = go.Heatmap(
        z=forced_z, x=grid.x, y=grid.y, zmin=0, zmax=1, colorscale=FORCED_COLOURS, showscale=False, name="forced",
        hovertemplate="key block ~%{x}<br>query block ~%{y}<br>forced %{z:.2f}<extra></extra>",
    )
    return [dyn, frc]


def _selection_layout(grid: SelectionGrid, title: str) -> dict:
    per = lambda f: f" ({f} blocks per cell)" if f > 1 else ""  # noqa: E731
    few = lambda a, f: dict(dtick=f) if a.size <= 32 else {}  # noqa: E731 - integer ticks on small maps
    return dict(
        title=dict(text=f"{title}<br><sup>{LEGEND_NOTE}</sup>"),
        xaxis=dict(title=f"key block{per(grid.key_bin)}", **few(grid.x, grid.key_bin)),
        yaxis=dict(title=f"query block{per(grid.query_bin)}", autorange="reversed", **few(grid.y, grid.query_bin)),
    )


def selection_map(idx, n_keys: int, cfg: MSAConfig, group: int = 0, batch: int = 0, positions=None,
                  max_cells: int = 256):
    """Query blocks x key blocks heatmap of how often each key block is picked, forced vs dynamic.

    idx ``int32 [B, Hkv, Nq, top_k]`` (from ``select_blocks``, or sampled rows with ``positions``).
    Cell value: share of the cell's visible (query, key block) pairs that were selected. The
    browser gets at most max_cells x max_cells cells per trace, however long the sequence.
    """
    go = _go()
    grid = selection_grid(idx, n_keys, cfg, group, batch, positions, max_cells)
    fig = go.Figure(selection_traces(grid))
    fig.update_layout(**_selection_layout(
        grid, f"Selected blocks, group {group}: {grid.selected_share:.1%} of visible blocks, "
              f"{grid.key_share:.1%} of visible keys"))
    return fig


def selection_frequency(idx, n_keys: int, cfg: MSAConfig, batch: int = 0, positions=None, max_points: int = 512,
                        dynamic_only: bool = False):
    """Per KV group: share of the queries that can see a key block which select it.

    idx ``[B, Hkv, Nq, top_k]``; one line per group over key blocks, binned to <= max_points.
    ``dynamic_only`` drops forced picks (so the init block and local windows do not dominate).
    """
    go = _go()
    if not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be an int >= 1, got {max_points!r}")
    n_groups = idx.shape[1]
    nb = cfg.num_blocks(n_keys)
    f = -(-nb // max_points)
    nx = -(-nb // f)
    fig = go.Figure()
    for g in range(n_groups):
        rows, pos = _rows(idx, n_keys, cfg, g, batch, positions)
        own = pos // cfg.block_size
        r, c = np.nonzero(rows >= 0)
        b, o = rows[r, c], own[r]
        if dynamic_only:
            keep = ~((b < cfg.init_blocks) | ((b > o - cfg.local_blocks) & (b <= o)))
            b = b[keep]
        picked = np.bincount(b, minlength=nb).astype(np.float64)
        seen = np.cumsum(np.bincount(own, minlength=nb)[::-1])[::-1].astype(np.float64)  # rows with own >= block
        picked = np.pad(picked, (0, nx * f - nb)).reshape(nx, f).sum(1)
        seen = np.pad(seen, (0, nx * f - nb)).reshape(nx, f).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            freq = np.where(seen > 0, picked / seen, np.nan)
        fig.add_trace(go.Scatter(x=np.arange(nx) * f + (f - 1) / 2, y=freq, mode="lines", name=f"group {g}"))
    what = "dynamic picks" if dynamic_only else "picks (forced included)"
    fig.update_layout(title=f"Selection frequency per key block, {what}", xaxis_title="key block",
                      yaxis_title="share of queries that see it", yaxis_range=[0, 1.02])
    return fig


def cost_traces(cfg: MSAConfig, lengths: Sequence[int], mode: str = "prefill") -> List[Tuple[object, bool]]:
    """(trace, on_secondary_axis) pairs: dense, MSA and index-branch FLOPs per token, and the ratio."""
    go = _go()
    pts = _cost.cost_curve(cfg, lengths, mode)
    n = np.array([p.n for p in pts])
    ys = {
        "dense": [p.dense_flops for p in pts],
        "MSA (index + sparse)": [p.msa_flops for p in pts],
        "MSA index branch": [p.index_flops for p in pts],
    }
    dash = {"dense": "solid", "MSA (index + sparse)": "solid", "MSA index branch": "dot"}
    out = [(go.Scatter(x=n, y=np.array(y), mode="lines", name=k, line=dict(dash=dash[k])), False)
           for k, y in ys.items()]
    ratio = go.Scatter(x=n, y=np.array([p.ratio for p in pts]), mode="lines", name="dense / MSA",
                       line=dict(color="black", width=1, dash="dash"))
    return out + [(ratio, True)]


def cost_figure(cfg: MSAConfig, lengths: Optional[Sequence[int]] = None, mode: str = "prefill",
                marker: Optional[int] = None):
    """Dense vs MSA attention FLOPs per token and layer (log-log), ratio on a secondary axis.

    lengths: context lengths (default: 200 points from 1K to 1M). marker: a length to mark.
    """
    _go()  # fails early, with the install hint, when plotly is missing
    from plotly.subplots import make_subplots

    lengths = _cost.log_lengths() if lengths is None else list(lengths)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for trace, secondary in cost_traces(cfg, lengths, mode):
        fig.add_trace(trace, secondary_y=secondary)
    ceiling = _cost.flop_ceiling(cfg)
    fig.update_xaxes(type="log", title="context length (tokens)")
    fig.update_yaxes(type="log", title="attention FLOPs / token / layer", secondary_y=False)
    fig.update_yaxes(title=f"dense / MSA (ceiling {ceiling:.0f}x)", range=[0, ceiling * 1.05], secondary_y=True)
    fig.update_layout(title=f"{mode.capitalize()} attention cost, {cfg.name} shapes, block {cfg.block_size}, "
                            f"top-{cfg.top_k}")
    if marker is not None:
        fig.add_vline(x=marker, line=dict(color="grey", width=1))
    return fig


# --------------------------------------------------------------------------- training curves
def read_training_log(source) -> List[dict]:
    """Rows of a training log: a model name ("msa-tiny" -> data/train/msa-tiny/log.jsonl) or a path."""
    import json
    from pathlib import Path

    from .model.checkpoint import REPO_ROOT

    path = Path(source)
    if not path.suffix:
        path = REPO_ROOT / "data" / "train" / str(source) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}: pass a model name with a log in data/train/ "
                                f"(msa-tiny, dense-200k) or the path of a log.jsonl written by msa_lab.train.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smooth(x: np.ndarray, y: np.ndarray, max_points: int, window: int) -> Tuple[np.ndarray, np.ndarray]:
    """Running mean over ``window`` steps, then at most ``max_points`` points."""
    if len(y) == 0:
        return x, y
    w = max(1, min(window, len(y)))
    c = np.cumsum(np.insert(y.astype(float), 0, 0.0))
    ys = (c[w:] - c[:-w]) / w
    xs = x[w - 1:]
    step = max(1, -(-len(ys) // max_points))
    return xs[::step], ys[::step]


def training_curves(source="msa-tiny", max_points: int = 300, window: int = 25, title: Optional[str] = None):
    """Loss curves of a training log: answer loss per task (top) and the indexer's KL (bottom), per step.

    Runs of a warm-start chain (field "run") are separated by dotted lines and labelled; steps trained
    sparse are shaded. Each trace is a running mean over ``window`` steps of that task, with at most
    ``max_points`` points.
    """
    go = _go()
    from plotly.subplots import make_subplots

    rows = read_training_log(source)
    if not rows:
        raise ValueError(f"the training log of {source!r} is empty")
    step = np.array([r["step"] for r in rows])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.65, 0.35],
                        subplot_titles=("answer loss per task (nats per answer byte, running mean)",
                                        "indexer KL to the dense block mass"))
    for task in sorted({r["task"] for r in rows}):
        sel = [i for i, r in enumerate(rows) if r["task"] == task and r.get("lm_loss") is not None]
        x, y = _smooth(step[sel], np.array([rows[i]["lm_loss"] for i in sel]), max_points, window)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=task, line=dict(width=1.5)), row=1, col=1)
    kl = [i for i, r in enumerate(rows) if r.get("kl") is not None]
    x, y = _smooth(step[kl], np.array([rows[i]["kl"] for i in kl]), max_points, window)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="KL", line=dict(color="black", width=1.5)), row=2, col=1)
    sparse = np.array([r.get("phase") == "sparse" for r in rows])
    edges = np.flatnonzero(np.diff(np.r_[0, sparse.astype(int), 0]))
    for a, b in zip(edges[::2], edges[1::2]):  # shade every sparse stretch
        fig.add_vrect(x0=step[a], x1=step[b - 1], fillcolor="#fdd0a2", opacity=0.25, line_width=0)
    runs = [r.get("run") for r in rows]
    for i in range(len(rows)):
        if i == 0 or runs[i] != runs[i - 1]:
            if i:
                fig.add_vline(x=step[i], line=dict(color="grey", dash="dot", width=1))
            if runs[i] is not None:
                fig.add_annotation(x=step[i], y=1.0, yref="paper", text=f"run {runs[i]}", showarrow=False,
                                   xanchor="left", font=dict(size=10, color="grey"))
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="step (shaded: trained sparse)", row=2, col=1)
    fig.update_layout(title=title or f"{source}: training curves", height=560,
                      legend=dict(font=dict(size=10)), margin=dict(t=80))
    return fig


def payload_size(fig) -> int:
    """Numbers the figure's traces send to the browser (array elements over all traces)."""
    total = 0
    for tr in fig.data:
        for key in ("x", "y", "z", "customdata", "text"):
            v = getattr(tr, key, None) if key in tr else None
            if v is not None and not isinstance(v, str):
                total += int(np.asarray(v, dtype=object).size)
    return total
