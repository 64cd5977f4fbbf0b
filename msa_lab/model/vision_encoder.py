"""VisionEncoder: a few bidirectional transformer layers over each image's patches, before the LM.

Why: the language model is causal, so a patch token sees only the patches above and to its left, and
an object's shape is known only at the last patch it covers, and only in late layers. The answer to
"What shape is drawn in green?" is a lookup (find the green patches, read their shape) that the LM
does in its middle layers, where those features do not exist yet. The vision runs of the sixth and
seventh sessions showed it: per-patch shape labels were learned at the LM's last layer while shape
answers stayed at chance. A vision encoder that sees the whole image (as in every ViT + LM model)
puts object features on every patch token at the LM's input.

Each image is encoded on its own (attention never crosses images, so a video frame stays a frame).
The encoder's output layer starts at zero: a warm start from a checkpoint without it computes what
the checkpoint did. A chunked prefill encodes every image whole (MSATransformer.embed_patches over the
whole input, then sliced), so chunking never changes what a patch token holds.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import RMSNorm, SwiGLU


def image_spans(patch_slot: torch.Tensor) -> List[tuple]:
    """[(start, end)] row ranges of the images in patch_slot int64 [P]: an image starts where a slot is not
    the previous slot + 1 (each image's slots run 0, 1, ..., so a new image restarts at 0; a truncated
    image keeps the run it has). Known limit: were a truncation to cut the end of one image and the start of
    the next so that their remaining slots happened to continue each other, the two pieces would be encoded
    as one; whole images (every prompt, and every chunk of a prefill) never are."""
    if patch_slot.numel() == 0:
        return []
    s = patch_slot.detach().cpu()
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[1:] = s[1:] != s[:-1] + 1
    idx = starts.nonzero().flatten().tolist() + [s.numel()]
    return list(zip(idx[:-1], idx[1:]))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, eps: float):
        super().__init__()
        self.h = n_heads
        self.attn_norm = RMSNorm(d, eps)
        self.wqkv = nn.Linear(d, 3 * d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, eps)
        self.mlp = SwiGLU(d, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [I, P, d] (I images of P patches) -> [I, P, d]; full attention inside each image."""
        i, p, d = x.shape
        q, k, v = self.wqkv(self.attn_norm(x)).view(i, p, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # [I, H, P, d/H], no mask: every patch sees its image
        x = x + self.wo(a.transpose(1, 2).reshape(i, p, d))
        return x + self.mlp(self.mlp_norm(x))


class VisionEncoder(nn.Module):
    """Patch embeddings [P, d] (rows of one or more images, in order) -> [P, d] with whole-image context.

    forward returns (embeddings to feed the LM, the encoder's final normed hidden state [P, d]); the second
    is what training's per-patch labels supervise (msa_lab.train.PatchSupervision)."""

    def __init__(self, d: int, n_layers: int, n_heads: int, d_ff: int, eps: float):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(d, n_heads, d_ff, eps) for _ in range(n_layers))
        self.norm = RMSNorm(d, eps)
        self.out = nn.Linear(d, d)

    def zero_output(self) -> None:
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, pe: torch.Tensor, patch_slot: torch.Tensor, spans: Optional[List[tuple]] = None):
        """spans: image_spans(patch_slot), where the caller has it already (it costs a device-to-host copy)."""
        spans = image_spans(patch_slot) if spans is None else spans
        hidden: Optional[torch.Tensor]
        sizes = {e - s for s, e in spans}
        if len(sizes) == 1:  # the common case: whole images of one size -> one batched call
            p = sizes.pop()
            hidden = self._encode(pe.view(-1, p, pe.shape[-1])).view_as(pe)
        else:  # a truncated image among whole ones: each on its own
            hidden = torch.cat([self._encode(pe[s:e][None])[0] for s, e in spans]) if spans else pe
        return pe + self.out(hidden), hidden
