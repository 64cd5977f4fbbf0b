"""A self-contained synthetic NIAH generator: the trainer's fallback when msa_lab.tasks is missing,
and the toy task of the CPU smoke run. Same schema as msa_lab.tasks (id, task, prompt, images,
answer, meta), synthetic filler only (training use).
"""
from __future__ import annotations

import json
import random
from typing import Iterator

_FILLER = (
    "The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ", "There and back again. ",
    "A river runs through it. ", "Rain fell all night. ", "The road goes on. ", "Birds sing at dawn. ",
)
PROMPT_SPECIALS = 2  # BOS + SEP, as in msa_lab.tasks


def iter_synthetic_niah(n: int, seed: int, *, length: int = 512, depth: float | None = None,
                        digits: int = 4) -> Iterator[dict]:
    """n examples whose prompt is ``length`` model tokens (bytes + BOS + SEP): filler with one needle
    "The magic number for <key> is <value>." at ``depth`` (random if None), then the question."""
    for i in range(n):
        rng = random.Random(f"msa-lab/synthetic-niah/{seed}/{i}")
        key = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
        value = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
        needle = f"The magic number for {key} is {value}. "
        question = f"\nWhat is the magic number for {key}? The magic number is"
        budget = length - PROMPT_SPECIALS - len(needle) - len(question)
        if budget < 0:
            raise ValueError(f"length={length} is too small for the needle and question; use >= "
                             f"{length - budget}.")
        hay = ""
        while len(hay) < budget:
            hay += rng.choice(_FILLER)
        hay = hay[:budget]
        d = rng.random() if depth is None else depth
        cut = int(d * budget)
        prompt = hay[:cut] + needle + hay[cut:] + question
        meta = {"depth": d, "length": length, "key": key, "synthetic_filler": True}
        yield {"id": f"synthetic_niah-s{seed}-{i:06d}", "task": "synthetic_niah", "prompt": prompt, "images": [],
               "answer": value, "meta": json.dumps(meta)}


_COPY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def iter_copy(n: int, seed: int, *, length: int = 1024, num_strings: int = 4, cue: int = 4) -> Iterator[dict]:
    """n training examples that teach copying from far back: ``num_strings`` random strings (12-40 of
    a-z0-9) on their own lines in a stdlib-source haystack, then a question naming each string's first
    ``cue`` characters; the answer repeats the strings in order, comma separated.

    Why: NIAH answers need an induction mechanism (match the bytes before, copy the byte after). The
    trained models never formed one from NIAH alone (their digit loss stayed at ln 10 over 1,500 steps),
    while the same backbone learns copying in ~150 steps from copy data (scripts/copy_task_probe.py).
    The random cue is the key; the rest of the string is the value, so this is NIAH with nothing to
    memorise and many answer bytes per token.
    """
    from ..tasks.haystack import HaystackSource, build_context

    source = HaystackSource()
    for i in range(n):
        rng = random.Random(f"msa-lab/copy/{seed}/{i}")
        strings = ["".join(rng.choice(_COPY_CHARS) for _ in range(rng.randint(12, 40))) for _ in range(num_strings)]
        inserts = sorted((rng.random(), s) for s in strings)
        rng.shuffle(inserts)  # the question's order differs from the haystack's
        order = [s for _, s in inserts]
        question = ("Repeat each line that starts with " + ", ".join(s[:cue] for s in order[:-1])
                    + (" and " if len(order) > 1 else "") + order[-1][:cue] + ", in that order.")
        prompt, _, _ = build_context(source, rng, length, inserts, question)
        meta = {"length": length, "num_strings": num_strings, "cue": cue}
        yield {"id": f"copy-s{seed}-{i:06d}", "task": "copy", "prompt": prompt, "images": [],
               "answer": ", ".join(order), "meta": json.dumps(meta)}
