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
