"""MSA main branch, decode: 1..16 new tokens per sequence, split over the selected blocks (Triton).

Naive reference: ``msa_lab.reference.sparse_attention``. At decode the prefill schedule (one program
per token x group) launches only B * Hkv * Nq programs, too few to fill 132 SMs, and each walks all
top_k blocks alone. Here each program takes one (batch, KV group, head chunk, token, slot chunk):
it walks ``slots_per_split`` of the token's selected blocks and writes a partial O (normalised) and
its LSE to a small fp32 workspace; a second kernel merges the splits by their LSE.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import LN2, LOG2E, attend_slots, autotune_configs, check_inputs, head_tiling, last_dim_contiguous
from ._common import dot_precision, interp_bf16, prune_configs
from .sparse_attention import sparse_attention_prefill

_alloc = torch.empty  # tests swap in a poisoning allocator so an unwritten element (output or workspace) fails
MAX_DECODE_TOKENS = 16


@triton.autotune(
    configs=autotune_configs(),
    key=["BLOCK_SIZE", "HEAD_DIM", "G_TILE", "top_k", "slots_per_split"],
    prune_configs_by={"early_config_prune": prune_configs},
)
@triton.jit
def _sparse_decode_split_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, po_ptr, plse_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ib, stride_ih, stride_in,
    n_q, n_k, n_kv, group, n_chunks, top_k, slots_per_split, n_splits, qk_scale,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, G_TILE: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr,
):
    # grid = (B * Hkv * n_chunks, Nq, n_splits); the workspace is [B, Hq, Nq, n_splits, (D)] fp32.
    bhc = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    chunk = bhc % n_chunks
    bh = bhc // n_chunks
    b = bh // n_kv
    kvh = bh % n_kv

    rows = chunk * G_TILE + tl.arange(0, G_TILE)
    row_ok = rows < group
    heads = kvh * group + rows
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + i * stride_qn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)

    slot_lo = split * slots_per_split
    slot_hi = tl.minimum(slot_lo + slots_per_split, top_k)
    acc, m, l = attend_slots(
        q, k_ptr + b * stride_kb + kvh * stride_kh, v_ptr + b * stride_vb + kvh * stride_vh,
        stride_kn, stride_vn, idx_ptr + b * stride_ib + kvh * stride_ih + i * stride_in,
        slot_lo, slot_hi, n_k - n_q + i, qk_scale,
        BLOCK_SIZE, HEAD_DIM, G_TILE, BLOCK_N, DOT_PRECISION, INTERP_BF16,
    )

    # A split that saw no key (all its slots -1) writes O = 0, LSE = -inf: weight 0 in the merge.
    empty = l == 0.0
    o = acc / tl.where(empty, 1.0, l)[:, None]
    lse = tl.where(empty, float("-inf"), (m + tl.math.log2(tl.where(empty, 1.0, l))) * LN2)
    row = ((b * (n_kv * group) + heads) * n_q + i) * n_splits + split  # [G_TILE] workspace rows
    tl.store(po_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], o, mask=row_ok[:, None])
    tl.store(plse_ptr + row, lse, mask=row_ok)


@triton.jit
def _sparse_decode_combine_kernel(
    po_ptr, plse_ptr, o_ptr, lse_ptr,
    stride_ob, stride_oh, stride_on,
    n_heads, n_q, n_splits,
    HEAD_DIM: tl.constexpr, SPLITS_P2: tl.constexpr,
):
    # One program per (b, h, i) row: O = sum_s w_s O_s / sum_s w_s with w_s = exp(lse_s - max lse).
    row = tl.program_id(0).to(tl.int64)
    i = row % n_q
    h = (row // n_q) % n_heads
    b = row // (n_q * n_heads)
    offs_s = tl.arange(0, SPLITS_P2)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < n_splits
    plse = tl.load(plse_ptr + row * n_splits + offs_s, mask=s_ok, other=float("-inf"))
    mx = tl.max(plse, 0)
    shift = tl.where(mx == float("-inf"), 0.0, mx)  # every split empty: all weights 0, no NaN
    w = tl.exp(plse - shift)  # [SPLITS_P2]
    po = tl.load(po_ptr + (row * n_splits + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                 mask=s_ok[:, None], other=0.0)
    wsum = tl.sum(w, 0)
    empty = wsum == 0.0
    o = tl.sum(po * w[:, None], 0) / tl.where(empty, 1.0, wsum)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + i * stride_on + offs_d, o.to(o_ptr.dtype.element_ty))
    tl.store(lse_ptr + row, tl.where(empty, float("-inf"), shift + tl.log(tl.where(empty, 1.0, wsum))))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def _default_splits(work_items: int, top_k: int, device: torch.device) -> int:
    """Enough slot chunks that the split kernel has about two programs per SM (one 'wave' of
    2 resident programs), never more chunks than slots."""
    return max(1, min(top_k, triton.cdiv(2 * _sm_count(device), work_items)))


def sparse_attention_decode(q, k, v, idx, cfg, return_lse: bool = False, *, num_splits: int | None = None):
    """Sparse attention for 1..16 new tokens per sequence, split over the selected blocks + combine.

    Args:
        q: ``[B, Hq, Nq, D]`` with Nq <= 16, fp16/bf16/fp32, D in (32, 64, 128).
        k, v: ``[B, Hkv, Nk, D]`` (the whole cache, this step's tokens included); query i sits at Nk - Nq + i.
        idx: ``int32 [B, Hkv, Nq, top_k]`` selected blocks, -1 padded, already validated.
        num_splits: slot chunks per token. Default: enough programs to fill the GPU; when one chunk
            already does, this runs the prefill kernel (no workspace, no combine). Tests force it.
    Returns:
        O ``[B, Hq, Nq, D]`` in q's dtype, and LSE ``float32 [B, Hq, Nq]`` if return_lse.
        A row with no selected key gets O = 0, LSE = -inf.
    """
    idx = check_inputs(q, k, v, idx, cfg).contiguous()
    q, k, v = (last_dim_contiguous(n, t) for n, t in (("q", q), ("k", k), ("v", v)))
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    if Nq > MAX_DECODE_TOKENS:
        raise ValueError(f"the decode kernel takes at most {MAX_DECODE_TOKENS} new tokens, got Nq={Nq}; "
                         f"use sparse_attention_prefill (msa_lab.kernels.sparse_attention dispatches).")
    top_k = cfg.top_k
    group, g_tile, n_chunks = head_tiling(Hq, Hkv)
    if num_splits is None:
        num_splits = _default_splits(B * Hkv * n_chunks * Nq, top_k, q.device)
        if num_splits == 1:
            # (token, group) programs already fill the GPU: the prefill kernel does the same work
            # without the workspace and the combine pass (H200, M3, B=8, Nq=16: 119 us vs 136 us).
            return sparse_attention_prefill(q, k, v, idx, cfg, return_lse=return_lse)
    if not 1 <= num_splits <= top_k:
        raise ValueError(f"num_splits must be in [1, top_k={top_k}], got {num_splits}.")
    per_split = triton.cdiv(top_k, num_splits)
    num_splits = triton.cdiv(top_k, per_split)  # no split left without slots
    if B * Hkv * n_chunks >= 2**31:
        raise ValueError(f"B * Hkv = {B * Hkv} exceeds the CUDA grid limit; split the batch.")

    part_o = _alloc((B, Hq, Nq, num_splits, D), dtype=torch.float32, device=q.device)
    part_lse = _alloc((B, Hq, Nq, num_splits), dtype=torch.float32, device=q.device)
    _sparse_decode_split_kernel[(B * Hkv * n_chunks, Nq, num_splits)](
        q, k, v, idx, part_o, part_lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        idx.stride(0), idx.stride(1), idx.stride(2),
        Nq, Nk, Hkv, group, n_chunks, top_k, per_split, num_splits, cfg.softmax_scale(D) * LOG2E,
        BLOCK_SIZE=cfg.block_size, HEAD_DIM=D, G_TILE=g_tile,
        DOT_PRECISION=dot_precision(q.dtype), INTERP_BF16=interp_bf16(q.dtype),
    )

    o = _alloc((B, Hq, Nq, D), dtype=q.dtype, device=q.device)
    lse = _alloc((B, Hq, Nq), dtype=torch.float32, device=q.device)
    _sparse_decode_combine_kernel[(B * Hq * Nq,)](
        part_o, part_lse, o, lse,
        o.stride(0), o.stride(1), o.stride(2),
        Hq, Nq, num_splits,
        HEAD_DIM=D, SPLITS_P2=triton.next_power_of_2(num_splits), num_warps=1 if D <= 64 else 2,
    )
    return (o, lse) if return_lse else o
