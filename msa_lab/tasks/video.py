"""Video-frame needle: consecutive frames (images) of a short "video"; exactly one shows X.

Each frame shows one moving object on a slowly drifting background: a coloured shape, or a word.
X is "a red star" (shape target; other frames show other shape/colour pairs, often the same shape
in another colour or the same colour in another shape) or "the word 'apple'" (word target; other
frames show other words). Answer: the 1-based number of the frame that shows X.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from PIL import Image, ImageDraw

from . import vocab
from .draw import BACKGROUNDS, COLOURS, SHAPES, draw_shape, draw_text, text_size
from .schema import IMAGE_TOKEN, build_dataset, check_choices, check_int, check_n_seed, check_size_range, example, example_rng

TASK = "video"
TARGETS = ("shape", "word")
MAX_FRAMES = 64
WORD_COLOURS = tuple(c for c in COLOURS if c != "yellow")


def iter_video(
    n: int,
    seed: int,
    *,
    num_frames: int = 8,
    min_size: int = 64,
    max_size: int = 128,
    targets: Sequence[str] = TARGETS,
) -> Iterator[dict]:
    """Yield n video-needle examples (common schema; num_frames images each).

    num_frames: frames per video (2..64). Frame width and height are drawn from [min_size,
    max_size] once per video. targets: what X may be, a subset of ("shape", "word").
    """
    check_n_seed(n, seed)
    check_int("num_frames", num_frames, 2, MAX_FRAMES)
    check_size_range("min_size", min_size, "max_size", max_size, 48)
    targets = check_choices("targets", targets, TARGETS)
    return _generate(n, seed, num_frames, min_size, max_size, targets)


def make_video(n: int, seed: int, cache_dir: str | None = None, **opts):
    """`datasets.Dataset` of iter_video(n, seed, **opts)."""
    return build_dataset("msa_lab.tasks.video:iter_video", TASK, n, seed, opts, cache_dir)


def _generate(n, seed, num_frames, min_size, max_size, targets) -> Iterator[dict]:
    for i in range(n):
        rng = example_rng(TASK, seed, i)
        w, h = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
        kind = rng.choice(targets)
        hit = rng.randrange(num_frames)
        if kind == "shape":
            want = (rng.choice(SHAPES), rng.choice(list(COLOURS)))
            contents = [want if f == hit else _other_shape(rng, want) for f in range(num_frames)]
            described = f"a {want[1]} {want[0]}"
        else:
            want = rng.choice(vocab.WORDS)
            contents = [want if f == hit else rng.choice([x for x in vocab.WORDS if x != want]) for f in range(num_frames)]
            described = f"the word '{want}'"

        bg0, bg1 = rng.sample(BACKGROUNDS, 2)
        start, end = (rng.random(), rng.random()), (rng.random(), rng.random())
        text_colour = rng.choice(WORD_COLOURS)
        images, frames = [], []
        for f, content in enumerate(contents):
            t = f / (num_frames - 1)
            bg = tuple(round(a + (b - a) * t) for a, b in zip(bg0, bg1))  # drifts like a real clip
            img = Image.new("RGB", (w, h), bg)
            pos = (start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t)  # moves along a line
            frames.append({"background": list(bg), **_draw_content(ImageDraw.Draw(img), (w, h), pos, content, text_colour)})
            images.append(img)

        matches = [f for f, fr in enumerate(frames) if _shows(fr, kind, want)]
        (frame,) = matches  # the generator's own record must show X exactly once
        prompt = (
            IMAGE_TOKEN * num_frames
            + f"\nThe {num_frames} images above are consecutive frames of a video. "
            + f"Which frame shows {described}? Answer with the frame number (1 to {num_frames})."
        )
        target = {"kind": kind, "shape": want[0], "colour": want[1]} if kind == "shape" else {"kind": kind, "word": want}
        meta = {"num_frames": num_frames, "size": [w, h], "target": target, "frame": frame + 1, "frames": frames}
        yield example(TASK, seed, i, prompt, images, str(frame + 1), meta)


def _other_shape(rng, want: tuple[str, str]) -> tuple[str, str]:
    """A shape/colour pair other than want; half the time a near miss sharing one attribute."""
    while True:
        roll = rng.random()
        shape = want[0] if roll < 0.25 else rng.choice(SHAPES)
        colour = want[1] if 0.25 <= roll < 0.5 else rng.choice(list(COLOURS))
        if (shape, colour) != want:
            return shape, colour


def _draw_content(draw, size, pos, content, text_colour) -> dict:
    w, h = size
    if isinstance(content, tuple):
        s = max(10, min(w, h) // 3)
        x, y = round(pos[0] * (w - s)), round(pos[1] * (h - s))
        box = (x, y, x + s, y + s)
        draw_shape(draw, content[0], box, COLOURS[content[1]])
        return {"shape": content[0], "colour": content[1], "word": None, "box": list(box)}
    fs = max(10, min(w, h) // 5)
    while text_size(content, fs)[0] > w - 4 and fs > 8:  # shrink to fit, never clip
        fs -= 1
    tw, th = text_size(content, fs)
    x, y = 2 + round(pos[0] * max(0, w - tw - 4)), 2 + round(pos[1] * max(0, h - th - 4))
    box = draw_text(draw, (x, y), content, fs, COLOURS[text_colour])
    return {"shape": None, "colour": text_colour, "word": content, "box": list(box)}


def _shows(frame: dict, kind: str, want) -> bool:
    if kind == "shape":
        return (frame["shape"], frame["colour"]) == tuple(want)
    return frame["word"] == want
