"""Byte-level tokens with images spliced in. No tokenizer file, nothing to download.

Ids 0..255 are the UTF-8 bytes; specials follow. An image becomes
  IMG_START, IMG_PATCH x patches_per_image, IMG_END
and the IMG_PATCH positions take their embedding from the image's pixels (see vision.py).
Training/inference format: BOS + prompt + SEP + answer + EOS (the model writes answer + EOS).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from .vision import PreparedImage, prepare_image

PAD, BOS, EOS, SEP, IMG_START, IMG_END, IMG_PATCH, UNK = range(256, 264)
SPECIALS = {"PAD": PAD, "BOS": BOS, "EOS": EOS, "SEP": SEP, "IMG_START": IMG_START, "IMG_END": IMG_END,
            "IMG_PATCH": IMG_PATCH, "UNK": UNK}
IMAGE_PLACEHOLDER = "<image>"


@dataclass
class Encoded:
    """A token sequence with its image patches.

    ids: int64 [N]. patches: float32 [P, patch_dim], one row per IMG_PATCH id, in order.
    patch_slot: int64 [P], each patch's index inside its image (its learned 2-D position).
    """

    ids: torch.Tensor
    patches: torch.Tensor
    patch_slot: torch.Tensor
    images: List[PreparedImage] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ids.numel())

    def patch_range(self, start: int, end: int):
        """(p0, p1): the patch rows of tokens [start, end)."""
        is_patch = self.ids == IMG_PATCH
        return int(is_patch[:start].sum()), int(is_patch[:end].sum())

    def slice(self, start: int, end: int) -> "Encoded":
        """Tokens [start, end) with their patches (images are kept for reference)."""
        p0, p1 = self.patch_range(start, end)
        return Encoded(self.ids[start:end], self.patches[p0:p1], self.patch_slot[p0:p1], self.images)

    def cat(self, other: "Encoded") -> "Encoded":
        extra = [im for im in other.images if all(im is not mine for mine in self.images)]
        return Encoded(torch.cat([self.ids, other.ids]), torch.cat([self.patches, other.patches]),
                       torch.cat([self.patch_slot, other.patch_slot]), self.images + extra)


def text_ids(text: str) -> List[int]:
    return list(text.encode("utf-8"))


def _empty(patch_dim: int) -> Encoded:
    return Encoded(torch.zeros(0, dtype=torch.long), torch.zeros(0, patch_dim), torch.zeros(0, dtype=torch.long))


def encode_segments(text: str, images: Optional[Sequence] = None, *, image_size: int, patch_size: int) -> Encoded:
    """Text with "<image>" placeholders + images -> Encoded (no BOS/SEP).

    If the text has no placeholder but images are given, the images come first, in order.
    """
    images = list(images or [])
    parts = text.split(IMAGE_PLACEHOLDER)
    n_ph = len(parts) - 1
    if n_ph == 0 and images:
        parts = [""] * len(images) + [text]
    elif n_ph != len(images):
        raise ValueError(
            f"the prompt has {n_ph} {IMAGE_PLACEHOLDER!r} placeholders but {len(images)} images were given; "
            f"put one placeholder per image (in order), or none to place all images before the text."
        )
    prepared = [im if isinstance(im, PreparedImage) else prepare_image(im, image_size) for im in images]
    ids: List[int] = []
    patches, slots = [], []
    n_img_patches = (image_size // patch_size) ** 2
    for i, part in enumerate(parts):
        ids += text_ids(part)
        if i < len(prepared):
            im = prepared[i]
            if im.size != image_size:
                raise ValueError(f"image {i} was prepared at {im.size}px but the model uses {image_size}px.")
            ids += [IMG_START] + [IMG_PATCH] * n_img_patches + [IMG_END]
            patches.append(im.patches(patch_size))
            slots.append(torch.arange(n_img_patches))
    patch_dim = 3 * patch_size * patch_size
    return Encoded(
        torch.tensor(ids, dtype=torch.long),
        torch.cat(patches) if patches else torch.zeros(0, patch_dim),
        torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long),
        prepared,
    )


def encode_prompt(text: str, images=None, *, image_size: int, patch_size: int) -> Encoded:
    """BOS + prompt (images spliced) + SEP: what generate() feeds the model before it writes the answer."""
    if not isinstance(text, str):
        raise TypeError(f"the prompt must be a str, got {type(text).__name__}")
    if not text.strip() and not images:
        raise ValueError("the prompt is empty; pass some text (or images) to generate from.")
    body = encode_segments(text, images, image_size=image_size, patch_size=patch_size)
    bos = _wrap([BOS], body.patches.shape[1])
    sep = _wrap([SEP], body.patches.shape[1])
    return bos.cat(body).cat(sep)


def encode_example(prompt: str, images, answer: str, *, image_size: int, patch_size: int):
    """Training example: (Encoded of BOS + prompt + SEP + answer + EOS, loss mask bool [N] on answer + EOS)."""
    enc = encode_prompt(prompt, images, image_size=image_size, patch_size=patch_size)
    n_prompt = len(enc)
    tail = _wrap(text_ids(answer) + [EOS], enc.patches.shape[1])
    enc = enc.cat(tail)
    mask = torch.zeros(len(enc), dtype=torch.bool)
    mask[n_prompt:] = True
    return enc, mask


def _wrap(ids: List[int], patch_dim: int) -> Encoded:
    e = _empty(patch_dim)
    e.ids = torch.tensor(ids, dtype=torch.long)
    return e


def decode(ids) -> str:
    """Byte ids -> text; specials are dropped, invalid UTF-8 becomes U+FFFD."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def describe(ids) -> List[str]:
    """A short printable label per token (for plots): the character, or the special's name."""
    names = {v: k for k, v in SPECIALS.items()}
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    out = []
    for i in ids:
        if i in names:
            out.append(f"<{names[i]}>")
        elif 32 <= i < 127:
            out.append(chr(i))
        else:
            out.append(f"\\x{i:02x}")
    return out
