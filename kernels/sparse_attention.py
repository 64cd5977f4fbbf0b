"""MSA main branch, prefill: exact softmax attention over each token's selected key blocks (Triton).

Naive reference: ``msa_lab.reference.sparse_attention``. Schedule: one program per (query token,
batch, KV group, chunk of the group's query heads). All query heads of a group share the group's
selection, so they are the rows of one [G_TILE, D] x [D, BLOCK_N] dot and each gathered K/V tile is
read once for all of them. For each of the token's top_k slots the kernel gathers that key block by
pointer arithmetic (-1 slots are masked), masks keys after the query, and keeps an online softmax.
Any Nq <= Nk (chunked prefill, bottom-right aligned: query i sits at Nk - Nq + i).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LN2, LOG2E, attend_slots, autotune_configs, check_inputs, head_tiling, last_dim_contiguous
from ._common import dot_precision, interp_bf16, prune_configs

_alloc = torch.empty  # tests swap in a poisoning allocator so an unwritten output element fails


@triton.autotune(
    configs=autotune_configs(),
    key=["BLOCK_SIZE", "HEAD_DIM", "G_TILE", "top_k"],
    prune_configs_by={"early_config_prune": prune_configs},
)
@triton.jit
def _sparse_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ib, stride_ih, stride_in,
    stride_ob, stride_oh, stride_on,
    n_q, n_k, n_kv, group, n_chunks, top_k, qk_scale,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, G_TILE: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr,
):
    # Tokens vary fastest across program ids: neighbouring tokens of one group share their forced
    # (init + local) blocks and often more, so they find those K/V tiles in L2.
    pid = tl.program_id(0).to(tl.int64)
    i = pid % n_q
    rest = pid // n_q
    chunk = rest % n_chunks
    bh = rest // n_chunks
    b = bh // n_kv
    kvh = bh % n_kv

    rows = chunk * G_TILE + tl.arange(0, G_TILE)  # head index inside the group
    row_ok = rows < group
    heads = kvh * group + rows  # [G_TILE] query heads of this group
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + i * stride_qn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)

    acc, m, l = attend_slots(
        q, k_ptr + b * stride_kb + kvh * stride_kh, v_ptr + b * stride_vb + kvh * stride_vh,
        stride_kn, stride_vn, idx_ptr + b * stride_ib + kvh * stride_ih + i * stride_in,
        0, top_k, n_k - n_q + i, qk_scale,
        BLOCK_SIZE, HEAD_DIM, G_TILE, BLOCK_N, DOT_PRECISION, INTERP_BF16,
    )

    empty = l == 0.0  # no selected visible key: O = 0, LSE = -inf (the contract)
    o = acc / tl.where(empty, 1.0, l)[:, None]
    o_rows = o_ptr + b * stride_ob + heads[:, None] * stride_oh + i * stride_on + offs_d[None, :]
    tl.store(o_rows, o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    lse = tl.where(empty, float("-inf"), (m + tl.math.log2(tl.where(empty, 1.0, l))) * LN2)
    lse_rows = lse_ptr + (b * (n_kv * group) + heads) * n_q + i  # lse is a contiguous [B, Hq, Nq]
    tl.store(lse_rows, lse, mask=row_ok)


def sparse_attention_prefill(q, k, v, idx, cfg, return_lse: bool = False):
    """Exact causal softmax attention over each query's selected key blocks (Triton, any Nq).

    Args:
        q: ``[B, Hq, Nq, D]`` fp16/bf16/fp32, D in (32, 64, 128); head h uses KV group h // (Hq // Hkv).
        k, v: ``[B, Hkv, Nk, D]``, Nq <= Nk; query i sits at key position Nk - Nq + i.
        idx: ``int32 [B, Hkv, Nq, top_k]`` selected blocks, -1 padded, already validated.
        cfg: MSAConfig (block_size, top_k, scale).
    Returns:
        O ``[B, Hq, Nq, D]`` in q's dtype, and LSE ``float32 [B, Hq, Nq]`` (natural log) if return_lse.
        A row with no selected key gets O = 0, LSE = -inf.
    """
    idx = check_inputs(q, k, v, idx, cfg).contiguous()
    q, k, v = (last_dim_contiguous(n, t) for n, t in (("q", q), ("k", k), ("v", v)))
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    group, g_tile, n_chunks = head_tiling(Hq, Hkv)
    o = _alloc((B, Hq, Nq, D), dtype=q.dtype, device=q.device)
    lse = _alloc((B, Hq, Nq), dtype=torch.float32, device=q.device)
    n_prog = Nq * B * Hkv * n_chunks
    if n_prog >= 2**31:
        raise ValueError(f"{n_prog} programs exceed the CUDA grid limit 2**31 - 1; split the batch or the query chunk.")
    _sparse_attn_fwd_kernel[(n_prog,)](
        q, k, v, idx, o, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        idx.stride(0), idx.stride(1), idx.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        Nq, Nk, Hkv, group, n_chunks, cfg.top_k, cfg.softmax_scale(D) * LOG2E,
        BLOCK_SIZE=cfg.block_size, HEAD_DIM=D, G_TILE=g_tile,
        DOT_PRECISION=dot_precision(q.dtype), INTERP_BF16=interp_bf16(q.dtype),
    )
    return (o, lse) if return_lse else o
