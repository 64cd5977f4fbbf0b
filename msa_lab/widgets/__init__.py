"""Jupyter widgets (need ``pip install 'msa-lab[lab]'``). Imported lazily: ``import msa_lab`` stays light."""
from __future__ import annotations

import importlib

_WIDGETS = {
    "MaskExplorer": "mask_explorer",
    "BenchView": "bench_view",
    "SelectionMap": "selection_map",
    "PrefillStepper": "prefill_stepper",
    "ActView": "act_view",
    "QAView": "act_view",
    "MigrationView": "migration",
    "EvalBuilder": "eval_builder",
}
__all__ = list(_WIDGETS)


def __getattr__(name: str):
    if name in _WIDGETS:
        return getattr(importlib.import_module(f".{_WIDGETS[name]}", __name__), name)
    raise AttributeError(f"module 'msa_lab.widgets' has no attribute {name!r}")
