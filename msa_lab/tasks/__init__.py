"""Synthetic tasks for the small multimodal MSA model, as `datasets.Dataset`s with one schema.

    from msa_lab.tasks import make_task, iter_task, TASKS
    ds = make_task("niah_single", n=100, seed=0, length=8192, depth=0.5)
    for ex in iter_task("gui", n=10, seed=1): ...   # plain dicts, no datasets needed

Every row: id, task, prompt ("<image>" marks each image, in order), images, answer, meta (JSON).
Families: niah.py (4 variants), variable_tracking.py, image_qa.py, gui.py, video.py; haystack.py
is the long-context text source (the stdlib's own source by default).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

from .gui import iter_gui, make_gui
from .image_qa import iter_image_qa, make_image_qa
from .niah import iter_niah, make_niah
from .schema import IMAGE_TOKEN, PROMPT_SPECIALS, TASKS_VERSION, features, text_tokens
from .variable_tracking import iter_variable_tracking, make_variable_tracking
from .video import iter_video, make_video

# name -> (maker, plain generator); the NIAH variants are one family with a fixed `variant`.
_REGISTRY: dict[str, tuple[Callable, Callable]] = {
    "niah_single": (partial(make_niah, variant="single"), partial(iter_niah, variant="single")),
    "niah_multi_key": (partial(make_niah, variant="multi_key"), partial(iter_niah, variant="multi_key")),
    "niah_multi_value": (partial(make_niah, variant="multi_value"), partial(iter_niah, variant="multi_value")),
    "niah_multi_query": (partial(make_niah, variant="multi_query"), partial(iter_niah, variant="multi_query")),
    "variable_tracking": (make_variable_tracking, iter_variable_tracking),
    "image_qa": (make_image_qa, iter_image_qa),
    "gui": (make_gui, iter_gui),
    "video": (make_video, iter_video),
}

TASKS: dict[str, Callable] = {name: makers[0] for name, makers in _REGISTRY.items()}


def _lookup(name: str) -> tuple[Callable, Callable]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_task(name: str, n: int, seed: int, **opts):
    """`datasets.Dataset` of n examples of task `name` (options: see that family's iter_* docstring)."""
    return _lookup(name)[0](n, seed, **opts)


def iter_task(name: str, n: int, seed: int, **opts) -> Iterator[dict]:
    """The same examples as make_task, as plain dicts (PIL images), without datasets."""
    return _lookup(name)[1](n, seed, **opts)


__all__ = [
    "TASKS", "make_task", "iter_task", "features", "text_tokens", "IMAGE_TOKEN", "PROMPT_SPECIALS", "TASKS_VERSION",
    "make_niah", "iter_niah", "make_variable_tracking", "iter_variable_tracking", "make_image_qa", "iter_image_qa",
    "make_gui", "iter_gui", "make_video", "iter_video",
]
