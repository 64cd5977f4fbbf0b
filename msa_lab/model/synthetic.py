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


def iter_copy(n: int, seed: int, *, length: int = 1024, num_strings: int = 4, cue: int = 4,
              haystack: str = "stdlib") -> Iterator[dict]:
    """n training examples that teach copying from far back: ``num_strings`` random strings (12-40 of
    a-z0-9) on their own lines in a haystack, then a question naming each string's first ``cue``
    characters; the answer repeats the strings in order, comma separated. The prompt is ``length``
    model tokens.

    haystack: "stdlib" (Python source, as NIAH uses) or "random" (random printable ASCII). In random
    text a 1-byte match already narrows the copy source to a few places, which gives the gradient
    toward an induction mechanism a foothold; in source code a-z0-9 bytes are everywhere.
    "none": no haystack at all; the prompt is as many strings as fit (``num_strings`` is ignored) and
    the answer repeats every one of them, so about half of all tokens are copy targets, at distances
    that vary, so a fixed positional offset cannot solve it.

    Why: NIAH answers need an induction mechanism (match the bytes before, copy the byte after), and
    the trained models never formed one from NIAH alone (their digit loss stayed at ln 10 over 1,500
    steps). The cue is the key and the rest of the string the value, so this is NIAH with nothing to
    memorise and many answer bytes per token. Whether it is enough: data/train/probes/.
    """
    from ..tasks.haystack import HaystackSource, build_context

    if haystack not in ("stdlib", "random", "none"):
        raise ValueError(f"haystack must be 'stdlib', 'random' or 'none', got {haystack!r}")
    source = HaystackSource()
    for i in range(n):
        rng = random.Random(f"msa-lab/copy/{seed}/{i}")
        if haystack == "none":
            yield _copy_lines_example(rng, length, cue, f"copy-s{seed}-{i:06d}")
            continue
        strings = ["".join(rng.choice(_COPY_CHARS) for _ in range(rng.randint(12, 40))) for _ in range(num_strings)]
        inserts = sorted((rng.random(), s) for s in strings)
        rng.shuffle(inserts)  # the question's order differs from the haystack's
        order = [s for _, s in inserts]
        question = ("Repeat each line that starts with " + ", ".join(s[:cue] for s in order[:-1])
                    + (" and " if len(order) > 1 else "") + order[-1][:cue] + ", in that order.")
        if haystack == "stdlib":
            prompt, _, _ = build_context(source, rng, length, inserts, question)
        else:
            prompt = _random_context(rng, length, sorted(inserts), question)
        meta = {"length": length, "num_strings": num_strings, "cue": cue, "haystack": haystack}
        yield {"id": f"copy-s{seed}-{i:06d}", "task": "copy", "prompt": prompt, "images": [],
               "answer": ", ".join(order), "meta": json.dumps(meta)}


def _copy_lines_example(rng: random.Random, length: int, cue: int, ex_id: str) -> dict:
    """Strings on their own lines filling a ``length``-token prompt, then "Repeat: <cues>."; the answer
    repeats them all in a shuffled order. A first line of random characters takes up the slack.

    Short prompts (64 tokens and up) get short strings, so that a run can start where the copy source
    is a few dozen tokens back: an induction mechanism forms there within a few hundred steps, and not
    at all within a thousand when the source is hundreds of tokens back (data/train/probes/).
    """
    if length < 64:
        raise ValueError(f"length={length} tokens is too small for copy lines; use length >= 64.")
    head, tail = "Repeat: ", "."
    lo, hi = (12, 40) if length >= 320 else (8, 24) if length >= 128 else (6, 12)
    budget = length - PROMPT_SPECIALS - len(head) - len(tail) - 1  # -1: the newline before the question
    strings, used = [], 0
    while True:
        s = "".join(rng.choice(_COPY_CHARS) for _ in range(rng.randint(lo, hi)))
        cost = len(s) + 1 + cue + 2  # its line, and its cue plus separator in the question
        if used + cost > budget:
            break
        strings.append(s)
        used += cost
    assert len(strings) >= 2, length  # 64 tokens leave room for two 12-byte strings
    body = "\n".join(strings)
    order = strings[:]
    rng.shuffle(order)
    cues = [s[:cue] for s in order]
    question = head + ", ".join(cues[:-1]) + " and " + cues[-1] + tail
    rest = length - PROMPT_SPECIALS - len(body) - 1 - len(question)  # >= 0 by the budget above
    filler = "".join(chr(rng.randrange(33, 127)) for _ in range(rest - 1)) + "\n" if rest else ""
    prompt = filler + body + "\n" + question
    meta = {"length": length, "num_strings": len(strings), "cue": cue, "haystack": "none"}
    return {"id": ex_id, "task": "copy", "prompt": prompt, "images": [], "answer": ", ".join(order),
            "meta": json.dumps(meta)}


def _random_context(rng: random.Random, length: int, inserts, question: str) -> str:
    """Random printable ASCII with each insert on its own line at its depth, then the question: exactly
    ``length`` model tokens (bytes + BOS + SEP)."""
    lines = sum(len(t) + 2 for _, t in inserts)  # each insert as "\n<text>\n"
    budget = length - PROMPT_SPECIALS - len(question) - 1 - lines
    if budget < 0:
        raise ValueError(f"length={length} tokens is too small for {len(inserts)} strings and the question; "
                         f"use length >= {length - budget}.")
    hay = "".join(chr(rng.randrange(32, 127)) for _ in range(budget))
    out, at = [], 0
    for depth, text in inserts:  # ascending depth
        cut = max(at, int(depth * budget))
        out += [hay[at:cut], "\n", text, "\n"]
        at = cut
    return "".join(out) + hay[at:] + "\n" + question


def iter_image_colour(n: int, seed: int) -> Iterator[dict]:
    """n training examples with one large shape on a light background: "What colour is the shape?".

    Why: the shipped models answer image questions from the question alone (the same answer whatever
    the image; data/train/probes/vision-2026-11-27/). This is the easiest question whose answer only the
    pixels hold: like `copy_lines` for retrieval, a first step that gives the image pathway a gradient.
    """
    from PIL import Image, ImageDraw

    from ..tasks.draw import BACKGROUNDS, COLOURS, SHAPES, draw_shape

    for i in range(n):
        rng = random.Random(f"msa-lab/image_colour/{seed}/{i}")
        w, h = rng.randint(64, 256), rng.randint(64, 256)
        img = Image.new("RGB", (w, h), rng.choice(BACKGROUNDS))
        colour = rng.choice(list(COLOURS))
        side = int(min(w, h) * rng.uniform(0.5, 0.9))
        x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
        draw_shape(ImageDraw.Draw(img), rng.choice(SHAPES), (x0, y0, x0 + side, y0 + side), COLOURS[colour])
        yield {"id": f"image_colour-s{seed}-{i:06d}", "task": "image_colour",
               "prompt": "<image>\nWhat colour is the shape?", "images": [img], "answer": colour, "meta": "{}"}
