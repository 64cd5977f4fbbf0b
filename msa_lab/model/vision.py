"""Images -> patch tokens.

Every image (any PIL mode, any size, or a numpy array / file path) is converted to RGB and resized to
image_size x image_size, then cut into patch_size x patch_size patches; each patch becomes one token
(a linear projection of its 3 * patch_size**2 pixels inside the model). The per-axis scale is kept so
that a point the model names on the resized image maps back to the original pixels:
  x_original = (x_model + 0.5) * scale_x   (centre of the resized pixel), likewise y.
Several images in a row form a video.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One image ready for the model.

    pixels: uint8 [3, S, S] (RGB, resized). original_size: (width, height) of the input.
    scale: (scale_x, scale_y) = original / resized, per axis. conversion: what was done, in words.
    """

    pixels: torch.Tensor
    original_size: Tuple[int, int]
    scale: Tuple[float, float]
    original_mode: str
    conversion: str

    @property
    def size(self) -> int:
        return int(self.pixels.shape[-1])

    def to_original(self, x: float, y: float) -> Tuple[int, int]:
        """A point on the resized image (model pixels) -> the original image's pixels (centre of the cell)."""
        return int((x + 0.5) * self.scale[0]), int((y + 0.5) * self.scale[1])

    def to_model(self, x: float, y: float) -> Tuple[int, int]:
        """A point in original pixels -> the resized image's pixel that contains it."""
        return int(x // self.scale[0]), int(y // self.scale[1])

    def patches(self, patch_size: int) -> torch.Tensor:
        """float32 [P, 3 * patch_size**2] in [-1, 1], patches in row-major order (P = (S / patch_size)**2)."""
        return patchify(self.pixels, patch_size)


def _load(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.is_file():
            raise FileNotFoundError(f"image file {str(p)!r} does not exist; pass a PIL image, an array or a file path.")
        img = Image.open(p)
        img.load()
        return img
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise TypeError(
        f"unsupported image type {type(image).__name__}; pass a PIL.Image, a numpy array [H, W] / [H, W, C] "
        f"(uint8, or float in [0, 1]) or a path to an image file."
    )


def _from_array(a: np.ndarray):
    from PIL import Image

    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(
            f"image array has shape {a.shape}; expected [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA). "
            f"A [C, H, W] array needs .transpose(1, 2, 0) first."
        )
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"image array has dtype {a.dtype}; use uint8 (0..255) or float (0..1).")
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if np.isnan(a).any() or lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float image array has values in [{lo}, {hi}] (or NaN); float images must lie in [0, 1]. "
                f"Scale it, or pass uint8."
            )
        a = np.round(a * 255.0).astype(np.uint8)
    return Image.fromarray(a)


def _to_rgb(img) -> Tuple[object, str]:
    """(RGB image, description). Alpha is composited on white; high-bit-depth modes are rescaled, not clipped."""
    from PIL import Image

    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "P+transparency"
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB"), f"{mode} -> RGB (alpha composited on white)"
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            a, how = a / 257.0, "16-bit values / 257"
        elif img.mode == "F" and a.min() >= 0.0 and a.max() <= 1.0:
            a, how = a * 255.0, "float [0, 1] * 255"
        else:
            lo, hi = float(a.min()), float(a.max())
            a, how = (a - lo) / max(hi - lo, 1e-12) * 255.0, f"min-max rescaled from [{lo:g}, {hi:g}]"
        grey = Image.fromarray(np.round(a).astype(np.uint8))  # 2-D uint8 -> mode L
        return grey.convert("RGB"), f"{mode} -> RGB ({how})"
    if img.mode == "RGB":
        return img, "RGB"
    return img.convert("RGB"), f"{mode} -> RGB"


def prepare_image(image, size: int) -> PreparedImage:
    """Convert any image to RGB, resize it to size x size and record the scale back to the original.

    Args:
        image: PIL.Image (any mode), numpy array [H, W] / [H, W, 3|4] (uint8, or float in [0, 1]), or a path.
        size: the model's image side (ModelConfig.image_size).
    Returns:
        PreparedImage with pixels uint8 [3, size, size].
    """
    from PIL import Image

    img = _load(image)
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image has size {w}x{h}; it must have at least one pixel.")
    rgb, how = _to_rgb(img)
    if (w, h) != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
        how += f", resized {w}x{h} -> {size}x{size}"
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # [3, S, S]
    return PreparedImage(pixels, (w, h), (w / size, h / size), img.mode, how)


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """uint8 [3, S, S] -> float32 [P, 3 * p * p] in [-1, 1], patches row-major (P = (S / p)**2)."""
    c, s, _ = pixels.shape
    n = s // patch_size
    x = pixels.float().div(127.5).sub(1.0).view(c, n, patch_size, n, patch_size)
    return x.permute(1, 3, 0, 2, 4).reshape(n * n, c * patch_size * patch_size)
