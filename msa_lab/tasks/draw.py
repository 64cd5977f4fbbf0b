"""Pillow drawing shared by the image tasks: colours, shapes, fonts, non-overlapping placement.

Boxes are [x0, y0, x1, y1] in image pixels with x0, y0 inclusive and x1, y1 exclusive, so a box
is inside a W x H image when 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H. Shapes are drawn without
anti-aliasing, in a square box, and always cover the box centre, so the centre pixel has the
shape's exact colour (the tests rely on this).
"""
from __future__ import annotations

import functools
import math
import random

from PIL import ImageDraw, ImageFont

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 195, 20),
    "orange": (245, 130, 20),
    "purple": (140, 60, 190),
    "black": (20, 20, 20),
    "brown": (130, 80, 40),
}
# Light backgrounds, none equal to a shape colour.
BACKGROUNDS = ((255, 255, 255), (245, 245, 238), (232, 238, 250), (250, 238, 232), (226, 226, 226), (236, 248, 236))
SHAPES = ("circle", "square", "triangle", "star")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}

Box = tuple[int, int, int, int]


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (no system fonts needed, same on every machine)."""
    return ImageFont.load_default(size=size)


def text_size(text: str, size: int) -> tuple[int, int]:
    """(width, height) of text drawn at the origin, from the font's ink box."""
    x0, y0, x1, y1 = font(size).getbbox(text)
    return x1, y1


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int, fill) -> Box:
    """Draw text with its top-left at xy; return the box of its ink (inclusive/exclusive)."""
    draw.text(xy, text, font=font(size), fill=fill)
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=font(size))
    return (int(x0), int(y0), int(x1), int(y1))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill) -> None:
    """Draw a filled shape inside a square box (x1, y1 exclusive)."""
    x0, y0, x1, y1 = box
    r0, r1 = x1 - 1, y1 - 1  # PIL coordinates are inclusive
    if shape == "circle":
        draw.ellipse((x0, y0, r0, r1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, r0, r1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, r1), (r0, r1), ((x0 + r0) / 2, y0)], fill=fill)
    elif shape == "star":
        cx, cy, ro = (x0 + r0) / 2, (y0 + r1) / 2, (r0 - x0) / 2
        pts = []
        for k in range(10):
            r = ro if k % 2 == 0 else ro * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        draw.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def centre(box: Box) -> tuple[int, int]:
    """Integer centre, inside the box for any box at least 1 pixel wide."""
    return (box[0] + box[2] - 1) // 2, (box[1] + box[3] - 1) // 2


def overlaps(a: Box, b: Box, pad: int = 0) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def place(rng: random.Random, width: int, height: int, w: int, h: int, taken: list[Box], pad: int, tries: int = 200):
    """A random w x h box inside the image not within pad pixels of any taken box, or None."""
    if w > width or h > height:
        return None
    for _ in range(tries):
        x, y = rng.randrange(width - w + 1), rng.randrange(height - h + 1)
        box = (x, y, x + w, y + h)
        if not any(overlaps(box, t, pad) for t in taken):
            return box
    return None
