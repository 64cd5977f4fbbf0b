"""MigrationView: dense-200k against msa-tiny, from a results dict of msa_lab.migration.

One FigureWidget of four panels, every line labelled "measured" (solid, markers) or "projected" (dashed):

    NIAH accuracy vs length (each overflow policy past the limit) | prefill seconds vs length (log-log)
    peak memory vs length (log-log)                                | price per request vs length

Below it: the prices per million tokens (editable; the defaults are assumptions, their sources shown), the
decision signals as toggles, and the recommendation with its reasons. The logic lives in msa_lab.migration;
this file only draws. ``save_html(path)`` / ``save_png(path)`` export the figure.
"""
from __future__ import annotations

import html
from typing import Dict, List, Optional

try:
    import ipywidgets as W
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as e:  # optional extra
    raise ImportError("MigrationView needs ipywidgets and plotly: pip install 'msa-lab[lab]'") from e

from .. import cost
from .. import migration as M
from ..bench import fmt_length
from ..model.config import DENSE_200K_LIMIT
from ._common import FigureExport

COLOURS = {"msa-tiny": "#d62728", "dense-200k": "#444444", "truncate_left": "#1f77b4",
           "truncate_middle": "#2ca02c", "chunk": "#9467bd", "error": "#7f7f7f"}
PANELS = ("NIAH accuracy (measured)", "prefill time", "peak memory", "price per request (from the prices below)")
PRICE_POLICIES = ("truncate_middle", "chunk")


def _colour(s: M.Series) -> str:
    return COLOURS.get(s.policy, COLOURS[s.model]) if s.policy not in ("", M.NONE, M.FITS) else COLOURS[s.model]


class MigrationView(FigureExport):
    """Figure + prices + decision toggles for one migration results dict (``msa_lab.migration``).

    results: a dict from ``measure_migration`` / ``load_results`` / ``load_or_measure``.
    Controls are attributes: ``price_in[model]``, ``price_out[model]`` (FloatText, per million tokens),
    ``output_tokens``, ``typical_tokens`` (IntText), and the toggles ``docs_over_200k``, ``multimodal``,
    ``iterative_code``, ``vendor_viable`` (Checkbox). Setting ``.value`` redraws what depends on it.
    ``recommendation`` is the current msa_lab.migration.Recommendation; ``message`` the status line.
    """

    def __init__(self, results: dict, max_length: int = 1 << 20, typical_tokens: int = 300_000,
                 output_tokens: int = 1024):
        for key in ("niah", "prefill", "device", "limit"):
            if key not in results:
                raise ValueError(f"results lack {key!r}: pass what msa_lab.migration.measure_migration or "
                                 f"load_results returns.")
        self.results = results
        self.lengths = sorted(set(cost.log_lengths(1024, max_length, 48)) | {DENSE_200K_LIMIT})
        self.message = ""
        self.recommendation: Optional[M.Recommendation] = None
        style = {"description_width": "initial"}
        self.price_in: Dict[str, W.FloatText] = {}
        self.price_out: Dict[str, W.FloatText] = {}
        rows = []
        for model in M.MODELS:
            p = M.DEFAULT_PRICES[model]
            self.price_in[model] = W.FloatText(value=p.input_per_mtok, step=0.05, description=f"{model} in $/M",
                                               style=style, layout=W.Layout(width="210px"))
            self.price_out[model] = W.FloatText(value=p.output_per_mtok, step=0.05, description="out $/M",
                                                style=style, layout=W.Layout(width="150px"))
            rows.append(W.HBox([self.price_in[model], self.price_out[model]]))
        self.output_tokens = W.IntText(value=output_tokens, description="output tokens / request", style=style,
                                       layout=W.Layout(width="230px"))
        self.typical_tokens = W.IntText(value=typical_tokens, description="your typical prompt (tokens)",
                                        style=style, layout=W.Layout(width="260px"))
        self.price_note = W.HTML(self._price_sources())
        self.docs_over_200k = W.Checkbox(value=False, description=M.SIGNALS["docs_over_200k"], indent=False)
        self.multimodal = W.Checkbox(value=False, description=M.SIGNALS["multimodal"], indent=False)
        self.iterative_code = W.Checkbox(value=False, description=M.SIGNALS["iterative_code"], indent=False)
        self.vendor_viable = W.Checkbox(value=True, description=M.SIGNALS["vendor_viable"], indent=False)
        for c in self.toggles:
            c.layout = W.Layout(width="480px")
        self.verdict = W.HTML()
        self.price_line = W.HTML()
        self.status = W.HTML()
        self.save_path = W.Text(value="migration_view.html", description="save to", style=style,
                                layout=W.Layout(width="260px"))
        self.save_button = W.Button(description="Save HTML", icon="download")
        self.save_button.on_click(lambda _: self._save_clicked())
        self.figure = go.FigureWidget()
        self.widget = W.VBox([
            self.status, self.figure,
            W.HTML("<b>Prices per million tokens</b> (edit them; the defaults are assumptions)"),
            *rows, W.HBox([self.output_tokens, self.typical_tokens]), self.price_line, self.price_note,
            W.HTML("<b>Decision signals</b>"), W.VBox(self.toggles), self.verdict,
            W.HBox([self.save_path, self.save_button]),
        ])
        self._draw()
        for c in self.price_controls:
            c.observe(self._prices_changed, names="value")
        for c in self.toggles:
            c.observe(lambda _: self._decide(), names="value")
        self._decide()

    # ------------------------------------------------------------------ public
    @classmethod
    def load_or_measure(cls, lengths=(1024, 2048), *, folder=None, limit: Optional[int] = 1536, display: bool = True,
                        view_kw: Optional[dict] = None, **measure_kw) -> "MigrationView":
        """The newest ``migration-*.json`` in ``folder`` (default data/eval), else a live measurement here.

        A live measurement shows a progress bar; interrupting the kernel keeps what was measured (the
        results say ``partial``). ``measure_kw`` go to msa_lab.migration.measure_migration.
        """
        bar = W.IntProgress(value=0, min=0, max=1, description="measuring", style={"description_width": "initial"},
                            layout=W.Layout(width="520px"))
        shown = []

        def progress(done, total, what):
            if not shown and display:
                from IPython.display import display as show

                show(bar)
                shown.append(True)
            bar.max, bar.value, bar.description = total, done, f"{done}/{total} {what}"

        res = M.load_or_measure(lengths, folder=folder, limit=limit, progress=progress, **measure_kw)
        if shown:
            bar.bar_style = "warning" if res.get("partial") else "success"
        return cls(res, **(view_kw or {}))

    @property
    def toggles(self):
        return [self.docs_over_200k, self.multimodal, self.iterative_code, self.vendor_viable]

    @property
    def price_controls(self):
        return [*self.price_in.values(), *self.price_out.values(), self.output_tokens, self.typical_tokens]

    def prices(self) -> Dict[str, M.Price]:
        """The prices the controls describe (the long-context tier of the defaults is kept)."""
        out = {}
        for model in M.MODELS:
            d = M.DEFAULT_PRICES[model]
            vin, vout = self.price_in[model].value, self.price_out[model].value
            edited = (vin, vout) != (d.input_per_mtok, d.output_per_mtok)
            out[model] = M.Price(vin, vout, d.long_context_threshold, d.long_context_multiplier,
                                 assumption=not edited, source="your price" if edited else d.source)
        return out

    # ------------------------------------------------------------------ drawing
    def _draw(self) -> None:
        r = self.results
        fig = make_subplots(rows=2, cols=2, subplot_titles=PANELS, horizontal_spacing=0.09, vertical_spacing=0.14)
        seen = set()

        def add(s: M.Series, row: int, col: int, unit: str, scale: float = 1.0, refused: bool = False):
            label = s.label
            xs = [x for x, y in zip(s.x, s.y) if y is not None]
            ys = [y / scale for y in s.y if y is not None]
            measured = s.kind == M.MEASURED
            fig.add_trace(go.Scatter(
                x=xs, y=ys, name=label, legendgroup=label, showlegend=label not in seen,
                mode="lines+markers" if measured else "lines",
                marker=dict(symbol="x" if refused else "circle", size=9 if refused else 6),
                line=dict(color=_colour(s), dash=s.dash, width=2 if measured else 1.5),
                customdata=[fmt_length(x) for x in xs],
                hovertemplate=f"{html.escape(label)}, %{{customdata}}: %{{y:.4g}} {unit}"
                              + (f"<br>{html.escape(s.note)}" if s.note else "") + "<extra></extra>"), row, col)
            seen.add(label)

        for s in M.accuracy_series(r):
            add(s, 1, 1, "", refused="refused" in s.name)
        for s in M.latency_series(r, self.lengths, output_tokens=r.get("settings", {}).get("max_new_tokens", 16)):
            add(s, 1, 2, "s")
        for s in M.memory_series(r, self.lengths):
            add(s, 2, 1, "GiB", scale=2**30)
        self._price_index = len(fig.data)
        for s in M.price_series(self.lengths, self.prices(), self.output_tokens.value, PRICE_POLICIES):
            add(s, 2, 2, "$")
        self._limit_lines(fig)
        for (row, col), title in zip(((1, 1), (1, 2), (2, 1), (2, 2)),
                                     ("NIAH accuracy", "prefill seconds (log)", "peak GiB (log)", "$ per request")):
            fig.update_xaxes(type="log", title="prompt length (tokens)", row=row, col=col)
            fig.update_yaxes(title=title, row=row, col=col, type="log" if (row, col) in ((1, 2), (2, 1)) else None)
        fig.update_yaxes(range=[-0.05, 1.05], row=1, col=1)
        fig.update_layout(height=820, width=1150, margin=dict(t=90, l=60, r=30, b=60),
                          title=dict(text=self._title(), font=dict(size=14)),
                          legend=dict(orientation="h", x=0, y=-0.12, font=dict(size=11)))
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.layout = fig.layout
            self.figure.add_traces(fig.data)
        self._show_status()

    def _limit_lines(self, fig) -> None:
        """The 204,800 wall on every panel (as traces: shapes on log axes take log10 coordinates)."""
        r = self.results
        for (row, col), ys in zip(((1, 1), (1, 2), (2, 1), (2, 2)), self._panel_ranges(fig)):
            if ys is None or ((row, col) == (1, 1) and r.get("limit_scaled")):  # keep the measured lengths readable
                continue
            fig.add_trace(go.Scatter(x=[DENSE_200K_LIMIT] * 2, y=list(ys), mode="lines", showlegend=False,
                                     line=dict(color="#999999", width=1, dash="dot"), hoverinfo="skip",
                                     name="dense-200k limit"), row, col)
        if r.get("limit_scaled"):
            fig.add_trace(go.Scatter(x=[r["limit"]] * 2, y=[0, 1], mode="lines+text", showlegend=False,
                                     text=["", f"scaled limit {r['limit']:,}"], textposition="top right",
                                     line=dict(color="#999999", width=1, dash="dot"), hoverinfo="skip",
                                     name="scaled limit"), 1, 1)

    def _panel_ranges(self, fig) -> List[Optional[tuple]]:
        refs = {("x", "y"): 0, ("x2", "y2"): 1, ("x3", "y3"): 2, ("x4", "y4"): 3}
        lo: List[Optional[float]] = [None] * 4
        hi: List[Optional[float]] = [None] * 4
        for t in fig.data:
            i = refs.get((t.xaxis or "x", t.yaxis or "y"))
            ys = [y for y in (t.y or ()) if y is not None and y > 0]
            if i is None or not ys:
                continue
            lo[i] = min(ys) if lo[i] is None else min(lo[i], min(ys))
            hi[i] = max(ys) if hi[i] is None else max(hi[i], max(ys))
        out: List[Optional[tuple]] = [(0, 1)]
        for i in (1, 2, 3):
            out.append(None if lo[i] is None else (lo[i], hi[i]))
        return out

    def _title(self) -> str:
        r = self.results
        src = r.get("source") or f"{r['device']['name']}, {r.get('date', '')}"
        lim = (f"dense-200k's limit scaled to {r['limit']:,} tokens for the accuracy panel (CPU demo of the "
               f"policies); the 204,800 line is the real one" if r.get("limit_scaled")
               else f"dense-200k limit {r['limit']:,} tokens")
        return (f"Migrating from dense-200k to msa-tiny: {html.escape(src)}<br><sup>solid = measured, dashed = "
                f"projected (fit to the measured points, shape from msa_lab.cost); {lim}</sup>")

    def _show_status(self) -> None:
        r = self.results
        n_ok = sum(p.get("status") == "ok" for p in r["prefill"])
        lengths = sorted({p["length"] for p in r["prefill"]})
        self.message = (f"Results: {r.get('source') or r.get('path') or 'in memory'}. Measured NIAH rows: "
                        f"{len(r['niah'])}; prefill timings: {n_ok} at {', '.join(map(fmt_length, lengths))}"
                        + ("; PARTIAL run" if r.get("partial") else "") + ".")
        self.status.value = html.escape(self.message)

    # ------------------------------------------------------------------ prices and decision
    def _prices_changed(self, change) -> None:
        bad = [c.description for c in self.price_controls if c.value is None or c.value < 0]
        if bad or self.output_tokens.value < 1 or self.typical_tokens.value < 1:
            self.price_line.value = (f"<span style='color:#b00'>prices must be >= 0 and token counts >= 1 "
                                     f"({html.escape(', '.join(bad) or 'token counts')})</span>")
            return
        new = M.price_series(self.lengths, self.prices(), self.output_tokens.value, PRICE_POLICIES)
        with self.figure.batch_update():
            for i, s in enumerate(new):
                t = self.figure.data[self._price_index + i]
                t.x = [x for x, y in zip(s.x, s.y) if y is not None]
                t.y = [y for y in s.y if y is not None]
        self._decide()

    def _typical_prices(self) -> str:
        n, out, p = self.typical_tokens.value, self.output_tokens.value, self.prices()
        parts = []
        m = M.request_price(n, "msa-tiny", "error", p["msa-tiny"], output_tokens=out)
        parts.append(f"msa-tiny ${m:.4f}")
        for pol in ("error",) + PRICE_POLICIES:
            d = M.request_price(n, "dense-200k", pol, p["dense-200k"], output_tokens=out)
            if d is None:
                parts.append(f"dense-200k ({pol}) refused: over its {DENSE_200K_LIMIT:,}-token limit")
            else:
                b = M.billed_tokens(n, "dense-200k", pol, output_tokens=out)
                parts.append(f"dense-200k{'' if b.calls == 1 and pol == 'error' else f' ({pol}, {b.calls} call(s))'}"
                             f" ${d:.4f}")
                if pol == "error":
                    break  # it fits: the policies do not apply
        return f"A {n:,}-token prompt with {out:,} output tokens: " + "; ".join(parts) + "."

    def _price_sources(self) -> str:
        items = "".join(f"<li><b>{m}</b>: {html.escape(M.DEFAULT_PRICES[m].source)}</li>" for m in M.MODELS)
        return f"<small>Default prices are <b>assumptions</b>, not quotes:<ul>{items}</ul></small>"

    def _decide(self) -> None:
        try:
            ev = M.evidence_from_results(self.results, self.typical_tokens.value, self.prices(),
                                         self.output_tokens.value)
            self.price_line.value = html.escape(self._typical_prices())
        except ValueError as e:
            ev = M.evidence_from_results(self.results)
            self.price_line.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
        rec = M.recommend(self.docs_over_200k.value, self.multimodal.value, self.iterative_code.value,
                          self.vendor_viable.value, evidence=ev)
        self.recommendation = rec
        colour = {"migrate": "#1b5e20", "pilot": "#8a6d00", "stay": "#37474f"}[rec.verdict]
        reasons = "".join(f"<li>{html.escape(x)}</li>" for x in rec.reasons)
        self.verdict.value = (f"<div style='border-left:4px solid {colour};padding-left:8px'>"
                              f"<b style='color:{colour}'>{html.escape(rec.headline)}</b><ul>{reasons}</ul></div>")

    def _save_clicked(self) -> None:
        try:
            path = self.save_html(self.save_path.value)
        except OSError as e:
            self.status.value = f"could not save {html.escape(repr(self.save_path.value))}: {html.escape(str(e))}"
            return
        self.status.value = html.escape(self.message) + f"<br>saved {html.escape(path)}"
