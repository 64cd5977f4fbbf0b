"""Needle in a haystack, RULER-style: single, multi-key, multi-value and multi-query needles.

A needle is one line "One of the special magic numbers for <key> is: <value>." hidden in real
text (the stdlib's source by default) at a chosen depth; the question comes at the end.

    single       one needle; ask its key.
    multi_key    num_needles needles with distinct keys; ask the first one's key (the rest distract).
    multi_value  num_needles needles with the same key; answer every value, in order of appearance.
    multi_query  num_needles needles with distinct keys; ask all keys, answer values in question order.

Answers with several values are joined by ", ". Lengths are model tokens (schema.text_tokens) and
are exact: the prompt of an example with length=L has exactly L - PROMPT_SPECIALS UTF-8 bytes.
"""
from __future__ import annotations

import json
import random
import uuid
from typing import Iterator, Sequence

from . import vocab
from .haystack import MIN_HAYSTACK_BYTES, build_context, make_source, parse_depth
from .schema import PROMPT_SPECIALS, build_dataset, check_int, check_n_seed, example, example_rng

VARIANTS = ("single", "multi_key", "multi_value", "multi_query")
DEFAULT_NEEDLES = {"single": 1, "multi_key": 4, "multi_value": 4, "multi_query": 4}
VALUE_KINDS = ("number", "uuid")
MAX_NEEDLES = 64


def iter_niah(
    n: int,
    seed: int,
    *,
    variant: str = "single",
    length: int = 4096,
    depth: float | Sequence[float] | None = None,
    num_needles: int | None = None,
    value_kind: str = "number",
    haystack_dir: str | None = None,
    haystack_suffixes: Sequence[str] | None = None,
    synthetic_filler: bool = False,
    split: str = "eval",
) -> Iterator[dict]:
    """Yield n NIAH examples (dicts of the common schema), deterministic in (seed, options).

    length: prompt length in model tokens (UTF-8 bytes + specials), exact.
    depth: None = seeded random per needle; a number in [0, 1] = the first (asked) needle's depth,
        others random; a list = one depth per needle. Depth d = fraction d of the haystack before it.
    num_needles: needles per example (single: 1; others: >= 2, default 4).
    value_kind: "number" (7 digits) or "uuid".
    haystack_dir / haystack_suffixes: a directory of text files instead of the stdlib source.
    synthetic_filler: filler sentences instead of real text; only with split="train".
    Options are checked now (not at the first next()), so bad ones raise at the call.
    """
    check_n_seed(n, seed)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    k = DEFAULT_NEEDLES[variant] if num_needles is None else num_needles
    if variant == "single":
        check_int("num_needles (variant='single')", k, 1, 1)
    else:
        check_int(f"num_needles (variant={variant!r})", k, 2, MAX_NEEDLES)
    if value_kind not in VALUE_KINDS:
        raise ValueError(f"value_kind must be one of {VALUE_KINDS}, got {value_kind!r}")
    check_int("length", length, 1)
    depths = parse_depth(depth, k)
    source = make_source(haystack_dir, haystack_suffixes, synthetic_filler, split)
    need = _worst_case_tokens(variant, k, value_kind) + MIN_HAYSTACK_BYTES
    if length < need:
        raise ValueError(
            f"length={length} tokens is too small for {k} needle(s) and the question of variant {variant!r}; "
            f"use length >= {need}"
        )
    return _generate(n, seed, variant, k, length, depths, value_kind, source)


def max_needles(variant: str, length: int, value_kind: str = "number") -> int:
    """The most needles of ``variant`` that fit a ``length``-token prompt (0 if not even one fits)."""
    k = 0
    while k < MAX_NEEDLES and _worst_case_tokens(variant, k + 1, value_kind) + MIN_HAYSTACK_BYTES <= length:
        k += 1
    return k


def make_niah(n: int, seed: int, cache_dir: str | None = None, **opts):
    """`datasets.Dataset` of iter_niah(n, seed, **opts) (same options)."""
    task = f"niah_{opts.get('variant', 'single')}"
    return build_dataset("msa_lab.tasks.niah:iter_niah", task, n, seed, opts, cache_dir)


def _generate(n, seed, variant, k, length, depths, value_kind, source) -> Iterator[dict]:
    task = f"niah_{variant}"
    for i in range(n):
        rng = example_rng(task, seed, i)
        keys = _keys(rng, 1 if variant == "multi_value" else k)
        if variant == "multi_value":
            keys = keys * k
        values = _values(rng, k, value_kind)
        needle_depths = [rng.random() if d is None else d for d in depths]
        texts = [_needle(key, v, value_kind) for key, v in zip(keys, values)]
        question = _question(variant, keys, value_kind)
        prompt, spans, hay = build_context(source, rng, length, list(zip(needle_depths, texts)), question)

        queried = {"single": [0], "multi_key": [0], "multi_value": list(range(k)), "multi_query": list(range(k))}
        asked = queried[variant]
        if variant == "multi_value":  # every value, in order of appearance
            asked = sorted(asked, key=lambda j: spans[j]["byte_span"][0])
        answers = [values[j] for j in asked]
        needles = [
            {"key": keys[j], "value": values[j], "text": texts[j], "depth": needle_depths[j],
             "queried": j in asked, **spans[j]}
            for j in range(k)
        ]
        meta = {"variant": variant, "length": length, "value_kind": value_kind, "question": question,
                "answers": answers, "needles": needles, "haystack": hay}
        yield example(task, seed, i, prompt, [], ", ".join(answers), meta)


def keyed_answer(ex: dict) -> str:
    """A NIAH answer phrased "<key> is: <value>" (", "-joined in question order), as a chat model answers.

    Why: after "<key> is: " the value is exactly what followed the same bytes in the needle, so the
    model can copy it with an induction head (match the recent bytes, copy what came next), the circuit
    small models learn fastest. A bare value must be produced right after SEP with nothing to match.
    Scoring is unchanged: msa_lab.eval.answer_ok checks that every value appears in the answer.
    """
    meta = json.loads(ex["meta"])
    asked = [n for n in meta["needles"] if n.get("queried")]  # needle order = the question's key order
    return ", ".join(f"{n['key']} is: {n['value']}" for n in asked)


def _keys(rng: random.Random, count: int) -> list[str]:
    pool = [f"{a}-{b}" for a in vocab.ADJECTIVES for b in vocab.NOUNS]
    return rng.sample(pool, count)


def _values(rng: random.Random, count: int, kind: str) -> list[str]:
    seen: list[str] = []
    while len(seen) < count:
        v = str(rng.randrange(1_000_000, 10_000_000)) if kind == "number" else str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if v not in seen:
            seen.append(v)
    return seen


def _needle(key: str, value: str, kind: str) -> str:
    return f"One of the special magic {kind}s for {key} is: {value}."


def _question(variant: str, keys: list[str], kind: str) -> str:
    if variant in ("single", "multi_key"):
        return f"What is the special magic {kind} for {keys[0]} mentioned in the provided text?"
    if variant == "multi_value":
        return f"What are all the special magic {kind}s for {keys[0]} mentioned in the provided text?"
    listed = ", ".join(keys[:-1]) + " and " + keys[-1]
    return f"What are all the special magic {kind}s for {listed} mentioned in the provided text?"


def _worst_case_tokens(variant: str, k: int, kind: str) -> int:
    """Tokens taken by needles, question and specials with the longest possible keys and values."""
    key = max(vocab.ADJECTIVES, key=len) + "-" + max(vocab.NOUNS, key=len)
    value = "9" * 7 if kind == "number" else "0" * 36
    needles = k * (len(_needle(key, value, kind)) + 1)
    question = len(_question(variant, [key] * k, kind)) + 1
    return needles + question + PROMPT_SPECIALS
