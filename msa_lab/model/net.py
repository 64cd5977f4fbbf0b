"""MSATransformer: the small multimodal byte-level transformer behind msa-tiny and dense-200k.

Positions — the route chosen to reach 1M tokens after training on a few thousand:
  * Main branch: partial RoPE, base 10,000, on the first ``rope_dims`` (half) of each head's dims; the
    other half carries no position. A fully rotated head cannot match content past its slowest
    wavelength (2*pi*base^(1 - 2/D) ~ 35K tokens at D=32): at a distance of 1M every rotated pair sits
    at an arbitrary phase, so q.k of the needle is noise. The unrotated half matches "the same key"
    identically at distance 10 and 10^6; the rotated half gives exact local order (partial rotation
    as in GPT-NeoX's rotary_pct).
    The main branch is also trained with PoSE-style position jumps (msa_lab.train.pose_positions):
    a training sequence of a few thousand tokens gets position ids with random gaps, so relative
    distances up to ``pose_max_position`` (1.2M) are seen in training while local order stays exact.
    Why not NoPE: a byte-level model must know the exact order of its last bytes, which RoPE gives for
    free. Why not only a large base: it delays, but does not remove, rotations never seen in training.
    With MSA the main branch's softmax is over at most top_k * block_size keys at any length, so the
    attention entropy does not drift with context length either.
  * Index branch: NoPE. Block scores are pure content matches, identical at distance 10 and 10^6, so
    ranking a needle block does not depend on how far back it is; recency is covered by the forced
    init/local blocks (local_blocks=2, see config.py).
  Measurable: ``forward(..., positions=...)`` takes explicit positions; tests check that shifting all
  positions leaves the logits unchanged and that index scores ignore positions, and
  msa_lab.eval.position_probe measures answer accuracy against simulated needle distance.

Images: each IMG_PATCH token's embedding is patch_proj(pixels) + patch_pos(slot in the image), plus
patch_stem(pixels) where ModelConfig.patch_stem > 0 (per patch, or over the whole picture with
ModelConfig.stem_scope = "image"; see config.py for why), then, where
ModelConfig.vision_layers > 0, a bidirectional encoder over each whole image (vision_encoder.py).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MSAConfig
from .config import ModelConfig
from .layers import Block, RMSNorm, TokenConv, rope_tables
from .pointer import PatchPointer, point_in_image
from .tokens import IMG_PATCH
from .vision_encoder import VisionEncoder, image_spans


def pool_patches(rows: torch.Tensor, patch_size: int, pool: int) -> torch.Tensor:
    """Patch rows float [P, 3 * p * p] (patchify's layout) -> [P, 3 * (p / pool)^2], each average-pooled over
    pool x pool pixels: the rows a patch_size / pool patch of the image downscaled by pool would have."""
    if pool == 1:
        return rows
    q = patch_size // pool
    return rows.view(-1, 3, q, pool, q, pool).mean((3, 5)).reshape(-1, 3 * q * q)


def upsample_conv1(weight: torch.Tensor, factor: int) -> torch.Tensor:
    """The stem's first kernel [C, 3, k, k] -> [C, 3, k * factor, k * factor] for a picture `factor` times larger
    in each axis (patch_pool times factor): each weight spread evenly over factor x factor pixels, so the new
    convolution of a picture equals the old one of that picture average-pooled by factor. How a warm start
    keeps what a checkpoint's stem computes when ModelConfig.patch_pool grows."""
    return weight.repeat_interleave(factor, 2).repeat_interleave(factor, 3) / factor ** 2


class PatchStem(nn.Module):
    """Per-patch CNN: float [P, 3 * p * p] -> [P, d_model]. conv3x3 (C) -> conv3x3/2 (2C) -> conv3x3/2 (2C) ->
    linear; GELU between. Each patch is convolved on its own (zero padding at its edges), so a patch token
    still depends on its own pixels only and the token interface is unchanged. With pool > 1
    (ModelConfig.patch_pool) the first convolution has kernel 3 * pool and stride pool: a 3x3 convolution over
    the picture downscaled by pool when its weights are constant over each pool x pool cell (upsample_conv1)."""

    def __init__(self, patch_size: int, channels: int, d_model: int, pool: int = 1):
        super().__init__()
        self.p, self.pool = patch_size, pool
        c = channels
        self.conv1 = nn.Conv2d(3, c, 3 * pool, stride=pool, padding=pool)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1)
        self.out = nn.Linear(2 * c * (patch_size // (4 * pool)) ** 2, d_model)

    def reset_parameters(self, gen: Optional[torch.Generator] = None) -> None:
        with torch.no_grad():
            for conv in (self.conv1, self.conv2, self.conv3):  # He init: GELU keeps about half the variance
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                conv.bias.zero_()
            self.out.weight.zero_()  # starts as a no-op next to patch_proj: warm starts are unchanged
            self.out.bias.zero_()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.view(-1, 3, self.p, self.p)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = F.gelu(self.conv3(x))
        return self.out(x.flatten(1))


class ImageStem(PatchStem):
    """PatchStem's convolutions over each whole picture: patch rows float [P, 3 * p * p] plus their slots
    int64 [P] -> [P, d_model]. The rows of each image (msa_lab.model.vision_encoder.image_spans) are put back on
    the image's grid, convolved as one picture, and each patch takes its own (p / 4)^2 cells of the last
    feature map, so a patch token also sees the pixels just past its borders (receptive field 9 px).
    A truncated image's missing patches are zero (mid-grey). Same parameters as PatchStem, so either loads
    the other's weights (ModelConfig.stem_scope)."""

    def __init__(self, image_size: int, patch_size: int, channels: int, d_model: int, pool: int = 1):
        super().__init__(patch_size, channels, d_model, pool)
        self.g = image_size // patch_size

    def forward(self, patches: torch.Tensor, patch_slot: torch.Tensor, spans: Optional[list] = None) -> torch.Tensor:
        """spans: image_spans(patch_slot), where the caller has it already (it costs a device-to-host copy)."""
        g, p, q = self.g, self.p, self.p // (4 * self.pool)
        spans = image_spans(patch_slot) if spans is None else spans
        image_of = torch.repeat_interleave(torch.arange(len(spans), device=patches.device),
                                           torch.tensor([e - s for s, e in spans], device=patches.device))
        cell = image_of * (g * g) + patch_slot  # row -> (image, slot) on a grid of whole images
        grid = patches.new_zeros(len(spans) * g * g, patches.shape[1])
        grid[cell] = patches
        x = grid.view(-1, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(-1, 3, g * p, g * p)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = F.gelu(self.conv3(x))  # [I, 2C, g * q, g * q]
        c = x.shape[1]
        x = x.view(-1, c, g, q, g, q).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * q * q)  # PatchStem's flatten order
        return self.out(x[cell])


class MSATransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.patch_proj = nn.Linear(cfg.pooled_patch_dim, cfg.d_model)
        self.patch_pos = nn.Embedding(cfg.patches_per_image, cfg.d_model)
        self.patch_stem = None if not cfg.patch_stem else \
            ImageStem(cfg.image_size, cfg.patch_size, cfg.patch_stem, cfg.d_model, cfg.patch_pool) \
            if cfg.stem_scope == "image" else PatchStem(cfg.patch_size, cfg.patch_stem, cfg.d_model, cfg.patch_pool)
        self.vision = VisionEncoder(cfg.d_model, cfg.vision_layers, cfg.n_heads, 2 * cfg.d_model, cfg.norm_eps) \
            if cfg.vision_layers else None
        self.pointer = PatchPointer(cfg.d_model, cfg.pointer_dim) if cfg.pointer_dim else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.backend: Optional[str] = None  # public-op backend for "ops" mode; None = automatic
        self.reset_parameters()

    def reset_parameters(self, seed: Optional[int] = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        out_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)  # residual writes shrink with depth (GPT-2)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if name.endswith("norm.weight") else nn.init.zeros_(p)
                continue
            if name.endswith(("attn.sink_k", "attn.sink_v")):
                nn.init.zeros_(p)  # the attention sink starts as a no-op (ModelConfig.attention_sink)
                continue
            if name.endswith("token_conv.weight") or name.startswith("patch_stem."):
                continue  # TokenConv.reset_identity and PatchStem.reset_parameters below
            std = out_std if name.endswith(("wo.weight", "w_down.weight")) else 0.02
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        for m in self.modules():
            if isinstance(m, TokenConv):
                m.reset_identity()
        if self.patch_stem is not None:
            self.patch_stem.reset_parameters(gen)
        if self.vision is not None:
            self.vision.zero_output()

    INFERENCE_FIELDS = ("length_scale_base", "top_k")  # config fields no weight depends on

    def set_inference_config(self, **changes) -> ModelConfig:
        """Change config fields that no weight depends on (``length_scale_base``, ``top_k``), in place, in
        every layer (their ModelConfig and MSAConfig). Lets an eval read one loaded checkpoint under other
        settings; other fields change shapes: build a new model."""
        bad = sorted(set(changes) - set(self.INFERENCE_FIELDS))
        if bad:
            raise ValueError(f"set_inference_config changes only {self.INFERENCE_FIELDS}; {bad} change the weights' "
                             f"shapes or meaning: build a new model (MSATransformer(cfg)) instead.")
        self.cfg = self.cfg.replace(**changes)  # validates
        msa = self.cfg.msa_config()
        for m in self.modules():
            if m is not self and isinstance(getattr(m, "cfg", None), ModelConfig):
                m.cfg = self.cfg
            if isinstance(getattr(m, "msa", None), MSAConfig):
                m.msa = msa
        return self.cfg

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ pieces
    def embed_patches(self, patches: torch.Tensor, patch_slot: torch.Tensor, dtype=None) -> torch.Tensor:
        """patches float [P, patch_dim], patch_slot int64 [P] -> the patch tokens' input embeddings [P, d].

        With a vision encoder, every image among the rows is encoded whole: to prefill in chunks, embed the
        whole input's patches once and pass each chunk its rows (forward's patch_embeds), so that an image
        cut by a chunk boundary is still seen whole."""
        return self.encode_patches(patches, patch_slot, dtype)[0]

    def encode_patches(self, patches: torch.Tensor, patch_slot: torch.Tensor, dtype=None):
        """(the LM's input embeddings [P, d], the vision encoder's normed hidden state [P, d]) of the patch rows;
        without an encoder the second is the first. The hidden state is what the per-patch labels and the GUI
        pointer read (msa_lab.train, msa_lab.vision_pretrain). patches may also be the raw pixels, uint8
        [P, patch_dim] (0-255, patchify's layout): scaled here as patchify scales them, so training batches cross
        process pipes and the host-to-device copy at a quarter of float32's bytes."""
        if patches.dim() != 2 or patches.shape[1] != self.cfg.patch_dim:
            raise ValueError(f"patch rows of shape {tuple(patches.shape)} given; this model takes [P, "
                             f"{self.cfg.patch_dim}] ({self.cfg.patch_size}-px patches of {self.cfg.image_size}-px "
                             f"images): encode images with msa_lab.model.tokens.encode_prompt at the model's "
                             f"image_size and patch_size.")
        dtype = dtype or self.embed.weight.dtype
        px = (patches.float().div(127.5).sub(1.0) if patches.dtype == torch.uint8 else patches).to(dtype)
        pe = self.patch_proj(pool_patches(px, self.cfg.patch_size, self.cfg.patch_pool)) + self.patch_pos(patch_slot)
        spans = None
        if isinstance(self.patch_stem, ImageStem):
            spans = image_spans(patch_slot)  # once, for the stem and the encoder
            pe = pe + self.patch_stem(px, patch_slot, spans)
        elif self.patch_stem is not None:
            pe = pe + self.patch_stem(px)
        if self.vision is None:
            return pe, pe
        return self.vision(pe, patch_slot, spans)

    def embed_inputs(self, ids: torch.Tensor, patches: Optional[torch.Tensor] = None,
                     patch_slot: Optional[torch.Tensor] = None, patch_embeds: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
        """ids int64 [B, N], patches [P, patch_dim] (float, or uint8 pixels: see encode_patches; one row per
        IMG_PATCH id, row-major over B, N), patch_slot int64 [P] -> x [B, N, d]. patch_embeds [P, d] (from
        embed_patches) replaces patches."""
        x = self.embed(ids)
        is_patch = ids == IMG_PATCH
        n_patch = int(is_patch.sum())
        given = patch_embeds if patch_embeds is not None else patches
        n_rows = 0 if given is None else given.shape[0]
        if n_patch != n_rows:
            raise ValueError(
                f"the ids hold {n_patch} IMG_PATCH tokens but {n_rows} patch rows were given; encode prompts "
                f"with msa_lab.model.tokens.encode_prompt so every patch token has its pixels."
            )
        if n_patch:
            pe = patch_embeds if patch_embeds is not None else self.embed_patches(patches, patch_slot, x.dtype)
            x = x.masked_scatter(is_patch[..., None], pe.to(x.dtype))
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        return h @ self.embed.weight.t() if self.lm_head is None else self.lm_head(h)

    @torch.no_grad()
    def point(self, ids: torch.Tensor, patches: torch.Tensor, patch_slot: torch.Tensor, *, mode: str = "ops"):
        """Where a GUI action points: ids int64 [1, N] ending at SEP, with one or more images; the pointer picks
        among the last image's patches. Returns ((x, y) in resized-image pixels, the chosen patch's probability).
        One full forward (no cache): GUI prompts are a screen and an instruction, a few hundred to ~1K tokens."""
        if self.pointer is None:
            raise ValueError(f"{self.cfg.name} has no GUI pointer (ModelConfig.pointer_dim = 0).")
        states = self.pointer_states(ids, patches, patch_slot, mode=mode)
        query, keys = states["query"][:, -1], states["keys"][-self.cfg.patches_per_image:]
        scores = self.pointer.scores(query, keys[None])[0]
        return point_in_image(scores, self.pointer.offsets(keys), self.cfg.image_size, self.cfg.patch_size)

    def pointer_states(self, ids, patches, patch_slot, positions=None, *, mode: str = "ops", aux=None) -> dict:
        """Forward pass that also returns what the pointer reads: {"logits" [B, N, V], "query" (the final normed
        LM states [B, N, d]), "keys" (the vision encoder's normed states [P, d]; absent without an encoder)}."""
        got: dict = {}
        hooks = [self.norm.register_forward_hook(lambda m, i, o: got.__setitem__("query", o))]
        if self.vision is not None:
            hooks.append(self.vision.register_forward_hook(lambda m, i, o: got.__setitem__("keys", o[1])))
        try:
            got["logits"] = self(ids, patches, patch_slot, positions, mode=mode, aux=aux)
        finally:
            for h in hooks:
                h.remove()
        return got

    # ------------------------------------------------------------------ forward
    def forward(self, ids: torch.Tensor, patches: Optional[torch.Tensor] = None,
                patch_slot: Optional[torch.Tensor] = None, positions: Optional[torch.Tensor] = None, *,
                mode: str = "ops", caches=None, record: Optional[Callable] = None, aux: Optional[dict] = None,
                last_only: bool = False, patch_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits float [B, N, vocab] (or [B, vocab] with last_only).

        ids int64 [B, N]; positions int64 [N] (default: the token's index, continuing after the cache).
        caches: a KVCache (engine.py) whose per-layer caches receive this chunk's keys; without one,
        the tokens attend only to each other (the full forward). mode: see layers.py.
        patch_embeds [P, d]: this chunk's rows of embed_patches(whole input), in place of patches.
        """
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, N], got shape {tuple(ids.shape)}; use ids[None] for one sequence.")
        B, N = ids.shape
        start = caches.length if caches is not None else 0
        if positions is None:
            positions = torch.arange(start, start + N, device=ids.device)
        elif positions.shape != (N,):
            raise ValueError(f"positions must be int64 [N={N}], got shape {tuple(positions.shape)}.")
        cos, sin = rope_tables(positions, self.cfg.rope_dims, self.cfg.rope_base)
        x = self.embed_inputs(ids, patches, patch_slot, patch_embeds)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mode=mode, cache=None if caches is None else caches.layers[i], record=record,
                      aux=aux, backend=self.backend, first=start == 0 and N > 0)
        if caches is not None:
            caches.length += N
        if last_only:
            x = x[:, -1]
        return self.logits(x).float()
