"""Transformer pieces: RMSNorm, RoPE, SwiGLU and the attention layer (MSA or dense).

Attention modes:
  "ops"           inference: MSA through the public ops (msa_lab.msa_attention), dense through SDPA;
  "train_dense"   training, dense causal SDPA for the main branch (the warm-up phase);
  "train_sparse"  training, the main branch attends over the selected blocks via SDPA with a boolean
                  mask built from select_blocks (reference.selection_to_key_mask): the exact same math as
                  sparse_attention, but with autograd, which the public ops do not provide.
In both training modes the index branch reads detached hidden states and is trained only by the KL
loss of msa_lab.model.indexer (no gradient flows between indexer and main branch).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import attention as ops
from ..reference import selection_to_key_mask
from .config import ModelConfig
from .indexer import (concentration_loss, dense_block_mass, free_blocks, index_block_logits, indexer_kl,
                      selection_mask)

_DENSE_SCORE_BYTES = 256 << 20  # per query chunk of the bottom-right-aligned dense path


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(positions: torch.Tensor, rope_dims: int, base: float):
    """cos, sin float32 [N, rope_dims / 2] for int64 positions [N] (rope_dims: the rotated part of a head).

    Angles are formed in float64: at position 1e6 a float32 angle is off by ~0.06 rad, which would
    blur exactly the long distances this model is meant to reach.
    """
    inv = base ** (-torch.arange(0, rope_dims, 2, dtype=torch.float64, device=positions.device) / max(1, rope_dims))
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2 * cos.shape[-1] dims of [B, H, N, D] (half-split pairs); the rest pass unrotated.

    Partial RoPE: the rotated dims carry local order; the unrotated ones match content at any distance,
    which a fully rotated head cannot do once distances pass the slowest wavelength (see net.py).
    """
    r = 2 * cos.shape[-1]
    if r == 0:
        return x
    xr, rest = x[..., :r].float(), x[..., r:]
    x1, x2 = xr.chunk(2, dim=-1)
    rot = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
    return torch.cat([rot, rest], dim=-1) if rest.shape[-1] else rot


class SwiGLU(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.w_gate = nn.Linear(d, d_ff, bias=False)
        self.w_up = nn.Linear(d, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


def length_scale(n_k: int, n_q: int, base: int, like: torch.Tensor) -> torch.Tensor:
    """Per-row logit factor [1, 1, Nq, 1]: max(1, ln(visible keys) / ln(base)); query i sees n_k - n_q + i + 1."""
    visible = torch.arange(n_k - n_q + 1, n_k + 1, device=like.device, dtype=torch.float32)
    return (visible.log() / math.log(base)).clamp(min=1.0).to(like.dtype).view(1, 1, -1, 1)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Dense causal GQA, bottom-right aligned (queries are the last Nq keys): [B, Hq, Nq, D].

    q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D]. Nq == Nk uses SDPA's causal kernel; Nq < Nk (chunked
    prefill, decode) uses an explicit mask per query chunk so the scratch stays bounded.
    """
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    if q.is_cuda and k.shape[1] != Hq:
        # SDPA's memory-efficient CUDA kernel has no GQA: with enable_gqa an fp32 call falls back to the
        # math kernel, which materialises [Hq, N, N] scores (128 GiB at 64K tokens, measured OOM on an H100)
        k, v = (t.repeat_interleave(Hq // k.shape[1], dim=1) for t in (k, v))
    if Nq == Nk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    if Nq == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    if q.is_cuda:
        return dense_attention_lower_right(q, k, v, scale)
    out = torch.empty_like(q)
    step = max(1, min(Nq, _DENSE_SCORE_BYTES // max(1, B * Hq * Nk * 4 * 2)))
    keys = torch.arange(Nk, device=q.device)
    for s0 in range(0, Nq, step):
        s1 = min(Nq, s0 + step)
        pos = torch.arange(Nk - Nq + s0, Nk - Nq + s1, device=q.device)
        mask = keys[None, :] <= pos[:, None]  # [C, Nk]
        out[:, :, s0:s1] = F.scaled_dot_product_attention(q[:, :, s0:s1], k, v, attn_mask=mask, scale=scale,
                                                          enable_gqa=True)
    return out


def dense_attention_lower_right(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Chunked-prefill dense attention through SDPA's bottom-right causal bias: [B, Hq, Nq, D].

    On CUDA the bias selects the flash / memory-efficient kernels, which mask by index, so neither a
    [Nq, Nk] mask nor the math kernel's scores are built. The explicit boolean mask that the CPU path
    uses sends CUDA to the masked memory-efficient kernel: 82 s for a 200K-token prefill of dense-200k
    on an H100, measured in notebook 03. k/v need as many heads as q (SDPA's GQA is math-only there).
    """
    from torch.nn.attention.bias import causal_lower_right

    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]), scale=scale)


def masked_sparse_attention(q, k, v, idx, cfg, scale: float) -> torch.Tensor:
    """Training main branch: softmax over the selected blocks, as a masked SDPA (differentiable).

    q [B, Hq, N, D], k/v [B, Hkv, N, D], idx int32 [B, Hkv, N, top_k] -> [B, Hq, N, D].
    Groups are folded into the batch so the [N, N] mask is shared by a group's heads, not copied.
    """
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    mask = selection_to_key_mask(idx, N, cfg).reshape(B * Hkv, 1, N, N)
    qf = q.reshape(B * Hkv, g, N, D)
    kf = k.reshape(B * Hkv, 1, N, D).expand(B * Hkv, g, N, D)
    vf = v.reshape(B * Hkv, 1, N, D).expand(B * Hkv, g, N, D)
    o = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=scale)
    return o.reshape(B, Hq, N, D)


class TokenConv(nn.Module):
    """Causal depthwise convolutions over the last ``width`` positions, one per attention input path:
    y[p]_t = sum_j w[p, j] * x_{t-j} for p in (q, k, v[, iq, ik]).

    Separate taps per path are the point (as in Primer's depthwise-convolved Q/K/V): with k's taps on
    x_{t-1} and q's and v's on x_t, a single attention layer matches "the byte before p" against "the
    byte at t" and copies x_p, which is induction without a previous-token head in an earlier layer.
    Initialised to the identity (w[:, 0] = 1, the rest 0), so it starts as a no-op and a checkpoint
    trained without it can be warm-started. In chunked prefill and decode the previous chunk's last
    width - 1 inputs come from the layer cache (``conv_tail``), so chunked and full forwards agree.
    """

    def __init__(self, d: int, width: int, paths: int):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.zeros(paths, width, d))  # [path, j, d]: tap j reads x_{t-j}
        self.reset_identity()

    def reset_identity(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, 0] = 1.0

    def forward(self, x: torch.Tensor, tail: Optional[torch.Tensor] = None, paths: slice = slice(None)):
        """x [B, N, d], tail [B, width - 1, d] or None (zeros) -> (y [paths, B, N, d], new tail)."""
        B, N, d = x.shape
        w = self.width
        if tail is None:
            tail = x.new_zeros(B, w - 1, d)
        ext = torch.cat([tail.to(x.dtype), x], dim=1)  # [B, w - 1 + N, d]
        taps = self.weight[paths].to(x.dtype)
        y = x[None] * taps[:, 0, None, None]
        for j in range(1, w):
            y = y + ext[None, :, w - 1 - j: w - 1 - j + N] * taps[:, j, None, None]
        return y, ext[:, -(w - 1):]


class Attention(nn.Module):
    """GQA attention with RoPE; MSA adds an index branch (Hkv index-query heads, Hik shared index keys, NoPE)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.msa = cfg.msa_config()
        d, Hq, Hkv, D = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(d, Hq * D, bias=False)
        self.wk = nn.Linear(d, Hkv * D, bias=False)
        self.wv = nn.Linear(d, Hkv * D, bias=False)
        self.wo = nn.Linear(Hq * D, d, bias=False)
        self.token_conv = TokenConv(d, cfg.token_conv, 5 if cfg.sparse else 3) if cfg.token_conv else None
        if cfg.sparse:
            self.wiq = nn.Linear(d, Hkv * cfg.index_dim, bias=False)
            self.wik = nn.Linear(d, cfg.index_key_heads * cfg.index_dim, bias=False)
        if cfg.attention_sink:  # ModelConfig.attention_sink: offsets on the first token's key and value
            self.sink_k = nn.Parameter(torch.zeros(Hkv, D))
            self.sink_v = nn.Parameter(torch.zeros(Hkv, D))

    def _heads(self, x: torch.Tensor, h: int) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, h, -1).transpose(1, 2)  # [B, N, h*d] -> [B, h, N, d]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, mode: str = "ops",
                cache=None, record: Optional[Callable] = None, aux: Optional[dict] = None,
                backend: Optional[str] = None, first: bool = False) -> torch.Tensor:
        """x [B, N, d] (already normed) -> [B, N, d]. cache: a LayerCache the new keys are appended to.
        first: x[:, 0] is the sequence's first token (it takes the attention-sink offsets)."""
        cfg = self.cfg
        # the indexer never sends gradient into the trunk: its inputs are detached in training (its own
        # convolution taps still learn from the KL loss)
        xi = x.detach() if mode != "ops" else x
        xq = xk = xv = x
        xiq = xik = xi
        if self.token_conv is not None:
            tail = None if cache is None else cache.conv_tail
            if xi is x:  # inference: one pass over all paths
                mixed, new_tail = self.token_conv(x, tail)
            else:  # training: the index paths convolve the detached input
                mixed, new_tail = self.token_conv(x, tail, slice(0, 3))
                if cfg.sparse:
                    mixed = torch.cat([mixed, self.token_conv(xi, tail, slice(3, 5))[0]])
            xq, xk, xv = mixed[0], mixed[1], mixed[2]
            if cfg.sparse:
                xiq, xik = mixed[3], mixed[4]
            if cache is not None:
                cache.conv_tail = new_tail
        q = apply_rope(self._heads(self.wq(xq), cfg.n_heads), cos, sin)  # [B, Hq, N, D]
        k = apply_rope(self._heads(self.wk(xk), cfg.n_kv_heads), cos, sin)  # [B, Hkv, N, D]
        v = self._heads(self.wv(xv), cfg.n_kv_heads)
        if first and cfg.attention_sink:
            k, v = (torch.cat([t[:, :, :1] + off[None, :, None].to(t.dtype), t[:, :, 1:]], dim=2)
                    for t, off in ((k, self.sink_k), (v, self.sink_v)))
        iq = ik = None
        if cfg.sparse:
            iq = self._heads(self.wiq(xiq), cfg.n_kv_heads)  # [B, Hkv, N, Di], NoPE
            ik = self._heads(self.wik(xik), cfg.index_key_heads)  # [B, Hik, N, Di], NoPE
        if cache is not None:
            k, v, ik = cache.append(k, v, ik)  # now the whole prefix: [B, Hkv, Nk, D]
        scale = self.msa.softmax_scale()
        if not cfg.sparse and cfg.length_scale_base is not None and k.shape[2] > cfg.length_scale_base:
            q = q * length_scale(k.shape[2], q.shape[2], cfg.length_scale_base, q)
        idx = None
        if mode == "ops":
            if cfg.sparse:
                o, idx = ops.msa_attention(q, k, v, iq, ik, self.msa, return_indices=True, backend=backend)
            else:
                o = dense_attention(q, k, v, scale)
        elif mode == "train_dense":
            o = dense_attention(q, k, v, scale)  # Nq == Nk: SDPA's causal kernel, K/V expanded on CUDA
        elif mode == "train_sparse":
            # fp32 and autocast off for the selection: it is cheap next to attention, every backend takes
            # fp32, and under bf16 autocast the torch path's -FLT_MAX sentinel overflows
            with torch.autocast(device_type=iq.device.type, enabled=False):
                idx = ops.select_blocks(iq.detach().float(), ik.detach().float(), self.msa, backend=backend)
            o = masked_sparse_attention(q, k, v, idx, self.msa, scale)
        else:
            raise ValueError(f"unknown attention mode {mode!r}; use 'ops', 'train_dense' or 'train_sparse'.")
        if aux is not None and cfg.sparse and mode != "ops":
            self._indexer_loss(q, k, iq, ik, aux)
        if record is not None:
            record(self.layer, q=q, k=k, idx=idx)
        B, _, N, _ = q.shape
        return self.wo(o.transpose(1, 2).reshape(B, N, -1))

    def _indexer_loss(self, q, k, iq, ik, aux: dict) -> None:
        slots = aux["kl_slots"]  # int64 [S], query positions (key slots) the KL is taken on
        target = dense_block_mass(q.detach()[:, :, slots], k.detach(), slots, self.msa)
        logits = index_block_logits(iq[:, :, slots], ik, slots, self.msa)
        keep = free_blocks(slots, k.shape[2], self.msa)
        aux.setdefault("kl", []).append(indexer_kl(logits, target, keep))
        if aux.get("concentration_k"):  # msa_lab.train --concentration-weight: on a subset of the KL's queries
            rows = aux["concentration_rows"]  # int64 [S'] rows of slots
            sel = selection_mask(logits.detach()[:, :, rows], slots[rows], k.shape[2], self.msa, aux["concentration_k"])
            aux.setdefault("concentration", []).append(
                concentration_loss(q[:, :, slots[rows]], k, slots[rows], sel, self.msa))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x, cos, sin, **kw) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, **kw)
        return x + self.mlp(self.mlp_norm(x))
