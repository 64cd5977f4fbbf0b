"""Variable tracking (RULER VT): follow chains of assignments hidden in a haystack.

A chain is "VAR ABCDE = 12345." then "VAR FGHIJ = ABCDE." ... (num_hops copies), each statement
on its own line, in chain order, at increasing depths inside depth_range. num_chains - 1 other
chains with other values distract. Question: which variables hold the first chain's value;
answer: the names of the first chain in assignment order, joined by ", ".
"""
from __future__ import annotations

import random
import string
from typing import Iterator, Sequence

from .haystack import MIN_HAYSTACK_BYTES, build_context, make_source
from .schema import PROMPT_SPECIALS, build_dataset, check_int, check_n_seed, check_unit, example, example_rng

TASK = "variable_tracking"
NAME_LEN = 5


def iter_variable_tracking(
    n: int,
    seed: int,
    *,
    length: int = 4096,
    num_chains: int = 1,
    num_hops: int = 4,
    depth_range: Sequence[float] = (0.0, 1.0),
    haystack_dir: str | None = None,
    haystack_suffixes: Sequence[str] | None = None,
    synthetic_filler: bool = False,
    split: str = "eval",
) -> Iterator[dict]:
    """Yield n variable-tracking examples (common schema), deterministic in (seed, options).

    length: prompt length in model tokens, exact. num_chains: chains (1 asked + distractors).
    num_hops: copies after the initial assignment (a chain binds num_hops + 1 names).
    depth_range: (lo, hi) in [0, 1]; statements are spread at sorted random depths inside it.
    Haystack options as in niah.iter_niah.
    """
    check_n_seed(n, seed)
    check_int("num_chains", num_chains, 1, 32)
    check_int("num_hops", num_hops, 0, 64)
    check_int("length", length, 1)
    if not isinstance(depth_range, (list, tuple)) or len(depth_range) != 2:
        raise ValueError(f"depth_range must be (lo, hi) with 0 <= lo <= hi <= 1, got {depth_range!r}")
    lo, hi = check_unit("depth_range[0]", depth_range[0]), check_unit("depth_range[1]", depth_range[1])
    if lo > hi:
        raise ValueError(f"depth_range=({lo}, {hi}) has lo > hi; swap them")
    source = make_source(haystack_dir, haystack_suffixes, synthetic_filler, split)
    statements = num_chains * (num_hops + 1)
    worst = statements * len(f"VAR {'X' * NAME_LEN} = {'X' * NAME_LEN}.\n") + len(_question("12345")) + 1
    need = worst + PROMPT_SPECIALS + MIN_HAYSTACK_BYTES
    if length < need:
        raise ValueError(f"length={length} tokens is too small for {statements} assignments and the question; use >= {need}")
    return _generate(n, seed, length, num_chains, num_hops, (lo, hi), source)


def make_variable_tracking(n: int, seed: int, cache_dir: str | None = None, **opts):
    """`datasets.Dataset` of iter_variable_tracking(n, seed, **opts)."""
    return build_dataset("msa_lab.tasks.variable_tracking:iter_variable_tracking", TASK, n, seed, opts, cache_dir)


def _generate(n, seed, length, num_chains, num_hops, depth_range, source) -> Iterator[dict]:
    lo, hi = depth_range
    for i in range(n):
        rng = example_rng(TASK, seed, i)
        names = _names(rng, num_chains * (num_hops + 1))
        values = [str(v) for v in rng.sample(range(10_000, 100_000), num_chains)]
        chains, inserts = [], []
        for c in range(num_chains):
            chain = names[c * (num_hops + 1):(c + 1) * (num_hops + 1)]
            texts = [f"VAR {chain[0]} = {values[c]}."] + [f"VAR {b} = {a}." for a, b in zip(chain, chain[1:])]
            # sorted depths: insert_at_depths keeps ties in order, so each chain reads top to bottom
            depths = sorted(lo + (hi - lo) * rng.random() for _ in texts)
            chains.append({"value": values[c], "names": chain, "queried": c == 0, "first_insert": len(inserts)})
            inserts += list(zip(depths, texts))
        question = _question(values[0])
        prompt, spans, hay = build_context(source, rng, length, inserts, question)
        for ch in chains:
            first = ch.pop("first_insert")
            ch["statements"] = [
                {"text": inserts[j][1], "depth": inserts[j][0], **spans[j]} for j in range(first, first + num_hops + 1)
            ]
        meta = {"length": length, "num_chains": num_chains, "num_hops": num_hops, "depth_range": [lo, hi],
                "question": question, "answers": chains[0]["names"], "chains": chains, "haystack": hay}
        yield example(TASK, seed, i, prompt, [], ", ".join(chains[0]["names"]), meta)


def _names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(NAME_LEN))
        if name not in names:
            names.append(name)
    return names


def _question(value: str) -> str:
    return f"Find all variables that are assigned the value {value} in the text above."
