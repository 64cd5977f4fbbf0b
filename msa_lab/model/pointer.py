"""PatchPointer: where a GUI action points, as a choice among the image's patches plus an offset inside one.

Why: the answer JSON names the point in decimal digits, so to click, the LM must find the target among
the image's patches, read that patch's position from its embedding and spell it out, digit by digit. The
GUI runs through the tenth session left the digits' loss at ~1.3 nats each, and the accuracy at ~0.5, at
64, 128 and 256 px alike. A pointer splits the job as GUI grounding models do (an action head that attends
over the visual patch tokens, as in GUI-Actor, Wu et al. 2025): the state at the prompt's last token (SEP,
which has read the instruction and the screen) is matched against every patch's vision-encoder state, and
the best patch's own state says where inside it the target's centre lies. Training supervises both
(msa_lab.train --pointer-weight). The JSON's kind, text and direction still come from the LM's text.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class PatchPointer(nn.Module):
    def __init__(self, d_model: int, dim: int):
        super().__init__()
        self.dim = dim
        self.query = nn.Linear(d_model, dim)
        self.key = nn.Linear(d_model, dim)
        self.offset = nn.Linear(d_model, 2)  # (x, y) inside the patch, through a sigmoid

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query [B, d] (LM state at SEP), keys [B, P, d] (vision-encoder states) -> logits float [B, P]."""
        q, k = self.query(query), self.key(keys)
        return torch.einsum("bd,bpd->bp", q, k).float() / self.dim ** 0.5

    def offsets(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [..., d] -> float [..., 2] in (0, 1): the point's place inside each patch, (x, y)."""
        return torch.sigmoid(self.offset(keys).float())


def point_in_image(scores: torch.Tensor, offsets: torch.Tensor, image_size: int, patch_size: int):
    """scores [P], offsets [P, 2] of one image -> (x, y) in the resized image's pixels, and the chosen patch's
    probability. The point lies inside the image by construction (offsets are in (0, 1))."""
    g = image_size // patch_size
    p = int(scores.argmax())
    ox, oy = offsets[p].tolist()
    x = min(image_size - 1, int(((p % g) + ox) * patch_size))
    y = min(image_size - 1, int(((p // g) + oy) * patch_size))
    return (x, y), float(torch.softmax(scores.float(), -1)[p])


def point_targets(xy: torch.Tensor, image_size: int, patch_size: int):
    """xy int64 [B, 2] (resized-image pixels; a pixel's centre is x + 0.5) -> (patch index int64 [B], offset
    float [B, 2] in (0, 1) inside that patch)."""
    g = image_size // patch_size
    c = (xy.float() + 0.5) / patch_size  # in patch units
    cell = c.floor().clamp(0, g - 1)
    return (cell[:, 1] * g + cell[:, 0]).long(), c - cell
