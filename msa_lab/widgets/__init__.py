"""Jupyter widgets (need ``pip install 'msa-lab[lab]'``). Imported lazily: ``import msa_lab`` stays light."""
from __future__ import annotations

__all__ = ["MaskExplorer", "BenchView"]


def __getattr__(name: str):
    if name == "MaskExplorer":
        from .mask_explorer import MaskExplorer

        return MaskExplorer
    if name == "BenchView":
        from .bench_view import BenchView

        return BenchView
    raise AttributeError(f"module 'msa_lab.widgets' has no attribute {name!r}")
