"""The schema every task shares, seeding, option checks and the `datasets.Dataset` builder.

Every example is a dict with the same six string-ish columns, so model and eval code can treat
all tasks alike:

    id      "niah_single-s0-000003"
    task    "niah_single"
    prompt  text; each image is referenced by the placeholder "<image>", in order
    images  list of PIL images (empty for text tasks)
    answer  short string (GUI: a JSON action)
    meta    JSON string with everything needed to check the answer (depths, spans, boxes, ...)

Text length is counted in model tokens: the model is byte-level (256 byte ids + specials), so a
text prompt costs its UTF-8 bytes plus PROMPT_SPECIALS special tokens.
"""
from __future__ import annotations

import importlib
import json
import math
import random
from typing import Any, Callable, Iterator

# Bump whenever a generator's output changes: it is part of every generator's kwargs (and of the
# per-example RNG seed), so the datasets cache never serves data made by older code.
TASKS_VERSION = "1"
# A generator module's REVISION (default 1) is in its kwargs too, but not in the RNG seed: bump it when an
# example gains a field while what is drawn and asked stays the same, so the cache is renewed and every seed
# still gives the examples (and the eval figures) it gave before.

IMAGE_TOKEN = "<image>"

# <bos> before the prompt and <sep> between prompt and answer; the answer is not part of the length.
PROMPT_SPECIALS = 2

COLUMNS = ("id", "task", "prompt", "images", "answer", "meta")


def features():
    """The `datasets.Features` shared by every task (datasets is imported lazily: iter_* don't need it)."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "task": Value("string"),
            "prompt": Value("string"),
            "images": List(Image()),  # what datasets' Sequence(Image()) builds
            "answer": Value("string"),
            "meta": Value("string"),
        }
    )


def text_tokens(text: str) -> int:
    """Model tokens of a text-only prompt: UTF-8 bytes + PROMPT_SPECIALS."""
    return len(text.encode("utf-8")) + PROMPT_SPECIALS


def example_rng(task: str, seed: int, index: int) -> random.Random:
    """RNG of one example. Seeded per example (not per stream) so example i is the same whatever n
    is, and from a string so it does not depend on PYTHONHASHSEED."""
    return random.Random(f"msa-lab/{task}/v{TASKS_VERSION}/{seed}/{index}")


def example(task: str, seed: int, index: int, prompt: str, images: list, answer: str, meta: dict) -> dict:
    """One row of the common schema."""
    n_placeholders = prompt.count(IMAGE_TOKEN)
    if n_placeholders != len(images):  # a generator bug, never a user error
        raise AssertionError(f"{task}: prompt has {n_placeholders} {IMAGE_TOKEN} placeholders but {len(images)} images")
    return {
        "id": f"{task}-s{seed}-{index:06d}",
        "task": task,
        "prompt": prompt,
        "images": list(images),
        "answer": answer,
        "meta": json.dumps(meta, sort_keys=True),
    }


def build_dataset(iter_path: str, task: str, n: int, seed: int, opts: dict, cache_dir: str | None = None):
    """`datasets.Dataset` of n examples made by the generator at `iter_path` ("module:function").

    Seed, version and every option go into gen_kwargs, which datasets hashes into the cache
    fingerprint. Options travel as one canonical JSON string: lists in gen_kwargs would be taken
    for shards by datasets.
    """
    from datasets import Dataset

    iter_fn = _resolve(iter_path)
    iter_fn(n, seed, **opts)  # validate now, so bad options fail here and not inside datasets' builder
    revision = generator_revision(iter_path)
    try:
        opts_json = json.dumps(opts, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"{task} options must be JSON values (pass paths as str): {e}") from None
    return Dataset.from_generator(
        _generate,
        features=features(),
        cache_dir=cache_dir,
        gen_kwargs={
            "iter_path": iter_path,
            "task": task,
            "n": n,
            "seed": seed,
            "version": TASKS_VERSION,
            "revision": revision,
            "opts_json": opts_json,
        },
    )


def generator_revision(iter_path: str) -> int:
    """The REVISION of the module that holds the generator at iter_path ("module:function"); 1 where it has none."""
    return int(getattr(importlib.import_module(iter_path.split(":")[0]), "REVISION", 1))


def _generate(iter_path: str, task: str, n: int, seed: int, version: str, revision: int,
              opts_json: str) -> Iterator[dict]:
    if version != TASKS_VERSION or revision != generator_revision(iter_path):
        raise RuntimeError(f"gen_kwargs version {version!r} / revision {revision} != TASKS_VERSION "
                           f"{TASKS_VERSION!r} / {iter_path}'s REVISION {generator_revision(iter_path)}")
    yield from _resolve(iter_path)(n, seed, **json.loads(opts_json))


def _resolve(iter_path: str) -> Callable[..., Iterator[dict]]:
    module, name = iter_path.split(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------- option checks
def check_n_seed(n: Any, seed: Any) -> None:
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be an int >= 0 (number of examples), got {n!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return value


def check_unit(name: str, value: Any) -> float:
    """A depth-like number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] (0 = start of the context, 1 = end), got {value!r}")
    return float(value)


def check_choices(name: str, values: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A non-empty subset of `allowed` (a single string is accepted as a one-element subset)."""
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values!r}")
    return values


def check_size_range(lo_name: str, lo: Any, hi_name: str, hi: Any, minimum: int, maximum: int = 4096) -> None:
    check_int(lo_name, lo, minimum, maximum)
    check_int(hi_name, hi, minimum, maximum)
    if lo > hi:
        raise ValueError(f"{lo_name}={lo} is larger than {hi_name}={hi}; swap them")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
