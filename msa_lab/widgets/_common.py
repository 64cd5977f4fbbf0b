"""What every msa-lab widget shares: figure export, notebook display, and a torch thread cap."""
from __future__ import annotations

import contextlib
from typing import Optional

import plotly.graph_objects as go


class FigureExport:
    """Mixin for a widget with ``self.figure`` (a plotly FigureWidget) and ``self.widget`` (what displays)."""

    def save_html(self, path: str, **write_html_kwargs) -> str:
        """Write the figure as a self-contained HTML file (plotly.js embedded, works offline).

        Extra keywords go to plotly's ``write_html`` (e.g. ``config={"displayModeBar": False}``).
        """
        go.Figure(self.figure).write_html(path, **{"include_plotlyjs": True, **write_html_kwargs})
        return path

    def save_png(self, path: str, scale: float = 1.0) -> str:
        """Write the figure as PNG through kaleido (needs kaleido and a local Chrome/Chromium)."""
        try:
            go.Figure(self.figure).write_image(path, scale=scale)
        except Exception as e:  # noqa: BLE001 - kaleido fails in many ways without a browser
            raise RuntimeError(
                f"PNG export failed ({type(e).__name__}: {e}). It needs `pip install kaleido` and a local "
                f"Chrome or Chromium; save_html(path) always works."
            ) from e
        return path

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Run the block with torch limited to n threads (None: leave torch alone).

    Why: on a 2-core machine a notebook's model calls with torch's default threads were measured 4-12x
    slower than with one thread whenever anything else was running (thread oversubscription).
    """
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
