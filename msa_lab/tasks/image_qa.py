"""Image QA: shapes, colours, counts and short words drawn with Pillow; short string answers.

Question kinds:
    count   "How many red circles are there?" / "How many stars are there?" / "How many blue shapes ..."
    colour  "What colour is the square?"      (exactly one square is drawn)
    shape   "What shape is drawn in green?"   (exactly one green object is drawn)
    word    "What word is written in the image?"

Answers are computed from the generator's record of what it actually drew (meta["objects"]), never
from what it meant to draw, so a shape that found no room cannot make an answer wrong.
"""
from __future__ import annotations

import random
from typing import Iterator, Sequence

from PIL import Image, ImageDraw

from . import vocab
from .draw import BACKGROUNDS, COLOURS, PLURALS, SHAPES, draw_shape, draw_text, place, text_size
from .schema import IMAGE_TOKEN, build_dataset, check_choices, check_int, check_n_seed, check_size_range, example, example_rng

TASK = "image_qa"
KINDS = ("count", "colour", "shape", "word")
MIN_SIDE = 48
WORD_COLOURS = tuple(c for c in COLOURS if c != "yellow")  # yellow text is hard to read on light backgrounds


def iter_image_qa(
    n: int,
    seed: int,
    *,
    kinds: Sequence[str] = KINDS,
    min_size: int = 96,
    max_size: int = 256,
    max_objects: int = 6,
) -> Iterator[dict]:
    """Yield n image-QA examples (common schema; one image each), deterministic in (seed, options).

    kinds: question kinds to draw from (subset of KINDS). Image width and height are drawn
    independently from [min_size, max_size] pixels. max_objects: most shapes in one image.
    """
    check_n_seed(n, seed)
    kinds = check_choices("kinds", kinds, KINDS)
    check_size_range("min_size", min_size, "max_size", max_size, MIN_SIDE)
    check_int("max_objects", max_objects, 1, 32)
    return _generate(n, seed, kinds, min_size, max_size, max_objects)


def make_image_qa(n: int, seed: int, cache_dir: str | None = None, **opts):
    """`datasets.Dataset` of iter_image_qa(n, seed, **opts)."""
    return build_dataset("msa_lab.tasks.image_qa:iter_image_qa", TASK, n, seed, opts, cache_dir)


def _generate(n, seed, kinds, min_size, max_size, max_objects) -> Iterator[dict]:
    for i in range(n):
        rng = example_rng(TASK, seed, i)
        kind = rng.choice(kinds)
        w, h = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
        bg = rng.choice(BACKGROUNDS)
        img = Image.new("RGB", (w, h), bg)
        scene = _Scene(rng, img, max_objects)
        question, answer, target = _KINDS[kind](scene)
        meta = {"kind": kind, "size": [w, h], "background": list(bg), "objects": scene.objects,
                "word": scene.word, "target": target}
        yield example(TASK, seed, i, f"{IMAGE_TOKEN}\n{question}", [img], answer, meta)


class _Scene:
    """An image being filled with non-overlapping shapes; records what was really drawn."""

    def __init__(self, rng: random.Random, img: Image.Image, max_objects: int):
        self.rng, self.img, self.max_objects = rng, img, max_objects
        self.draw = ImageDraw.Draw(img)
        self.objects: list[dict] = []
        self.word: dict | None = None
        self.taken: list = []
        side = min(img.size)
        self.sizes = (max(10, side // 10), max(12, side // 4))

    def add(self, shape: str, colour: str) -> bool:
        s = self.rng.randint(*self.sizes)
        box = place(self.rng, *self.img.size, s, s, self.taken, pad=3)
        if box is None:
            return False
        draw_shape(self.draw, shape, box, COLOURS[colour])
        self.taken.append(box)
        self.objects.append({"shape": shape, "colour": colour, "box": list(box)})
        return True

    def add_others(self, count: int, ok) -> None:
        """Add up to count shapes whose (shape, colour) satisfies ok (rejection-sampled)."""
        for _ in range(count):
            while True:
                shape, colour = self.rng.choice(SHAPES), self.rng.choice(list(COLOURS))
                if ok(shape, colour):
                    break
            self.add(shape, colour)


def _count(sc: _Scene):
    mode = sc.rng.choice(("both", "shape", "colour"))
    shape, colour = sc.rng.choice(SHAPES), sc.rng.choice(list(COLOURS))
    match = {
        "both": lambda s, c: s == shape and c == colour,
        "shape": lambda s, c: s == shape,
        "colour": lambda s, c: c == colour,
    }[mode]
    k = sc.rng.randint(0, sc.max_objects)
    sc.add_others(k, match)
    sc.add_others(sc.rng.randint(0 if k else 1, sc.max_objects - k), lambda s, c: not match(s, c))
    question = {
        "both": f"How many {colour} {PLURALS[shape]} are there?",
        "shape": f"How many {PLURALS[shape]} are there?",
        "colour": f"How many {colour} shapes are there?",
    }[mode]
    count = sum(match(o["shape"], o["colour"]) for o in sc.objects)
    return question, str(count), {"mode": mode, "shape": None if mode == "colour" else shape,
                                  "colour": None if mode == "shape" else colour}


def _colour(sc: _Scene):
    shape = sc.rng.choice(SHAPES)
    sc.add(shape, sc.rng.choice(list(COLOURS)))  # first on an empty canvas: always fits
    sc.add_others(sc.rng.randint(0, sc.max_objects - 1), lambda s, c: s != shape)
    (obj,) = [o for o in sc.objects if o["shape"] == shape]
    return f"What colour is the {shape}?", obj["colour"], {"shape": shape}


def _shape(sc: _Scene):
    colour = sc.rng.choice(list(COLOURS))
    sc.add(sc.rng.choice(SHAPES), colour)
    sc.add_others(sc.rng.randint(0, sc.max_objects - 1), lambda s, c: c != colour)
    (obj,) = [o for o in sc.objects if o["colour"] == colour]
    return f"What shape is drawn in {colour}?", obj["shape"], {"colour": colour}


def _word(sc: _Scene):
    word, colour = sc.rng.choice(vocab.WORDS), sc.rng.choice(WORD_COLOURS)
    w, h = sc.img.size
    size = sc.rng.randint(max(10, min(w, h) // 10), max(12, min(w, h) // 5))
    while text_size(word, size)[0] > w - 4 and size > 8:  # shrink to fit the width, never clip
        size -= 1
    tw, th = text_size(word, size)
    x, y = sc.rng.randrange(2, max(3, w - tw - 1)), sc.rng.randrange(2, max(3, h - th - 1))
    box = draw_text(sc.draw, (x, y), word, size, COLOURS[colour])
    sc.taken.append(box)
    sc.word = {"text": word, "colour": colour, "box": list(box), "font_size": size}
    sc.add_others(sc.rng.randint(0, min(3, sc.max_objects)), lambda s, c: True)
    return "What word is written in the image?", word, {"word": word}


_KINDS = {"count": _count, "colour": _colour, "shape": _shape, "word": _word}
