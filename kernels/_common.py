"""Shared pieces of the MSA attention kernels: input checks, autotune configs, the slot loop.

The prefill kernel (sparse_attention.py) and the decode kernel (sparse_decode.py) run the same inner
loop, :func:`attend_slots`: one program owns one query token of one KV group and up to G_TILE of the
group's query heads (the rows of every tl.dot), and walks a range of the token's selected blocks with
an online softmax. They differ only in which slots a program walks and where the result goes.
"""
from __future__ import annotations

import os
import warnings

import torch
import triton
import triton.language as tl

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

LOG2E = 1.4426950408889634  # softmax runs in base 2 (exp2 is the fast instruction); host side
LN2 = tl.constexpr(0.6931471805599453)  # kernels turn base-2 LSE into natural log
MAX_G_TILE = 64  # query heads per program; larger groups are split over programs (register budget)
_warned: set = set()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, stacklevel=3)


def last_dim_contiguous(name: str, t: torch.Tensor) -> torch.Tensor:
    """Kernels take any strides for the outer dims (so [B, N, H, D].transpose(1, 2) costs no copy)
    but need unit stride along D for coalesced loads; anything else is copied once, with a warning."""
    if t.stride(-1) == 1:
        return t
    _warn_once(
        f"stride-{name}",
        f"msa_lab.kernels: {name} has stride {t.stride(-1)} along its last dim; copying it to a contiguous "
        f"tensor (pass tensors whose last dim is contiguous to avoid this copy).",
    )
    return t.contiguous()


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, cfg) -> torch.Tensor:
    """Cheap checks the kernels need even when called directly (no host sync). Returns idx as int32.

    The public op (msa_lab.sparse_attention) has already checked shapes, dtypes and idx values; an idx
    with out-of-range or future blocks that reaches the kernels unchecked gives undefined results.
    """
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"msa_lab.kernels needs CUDA tensors (got {q.device}); set TRITON_INTERPRET=1 before importing "
            f"triton to run them on the CPU (slow, for tests), or use backend='torch'."
        )
    if q.dtype not in SUPPORTED_DTYPES or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"msa_lab.kernels supports float16, bfloat16 and float32 with q, k, v of one dtype; got "
            f"{q.dtype}, {k.dtype}, {v.dtype}. Cast them, e.g. .to(torch.bfloat16)."
        )
    D = q.shape[-1]
    if D not in SUPPORTED_HEAD_DIMS or k.shape[-1] != D or v.shape[-1] != D:
        raise ValueError(
            f"msa_lab.kernels supports head dims {', '.join(map(str, SUPPORTED_HEAD_DIMS))}; got q/k/v head dims "
            f"{q.shape[-1]}/{k.shape[-1]}/{v.shape[-1]}. Use backend='torch' for other head dims."
        )
    B, Hq, Nq, _ = q.shape
    _, Hkv, Nk, _ = k.shape
    if Hq % Hkv or Nq > Nk or tuple(idx.shape[:3]) != (B, Hkv, Nq) or idx.shape[-1] != cfg.top_k:
        raise ValueError(
            f"shapes do not fit the MSA layout: q {tuple(q.shape)}, k {tuple(k.shape)}, idx {tuple(idx.shape)}; "
            f"expected q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D] with Hq % Hkv == 0 and Nq <= Nk, idx "
            f"[B, Hkv, Nq, top_k={cfg.top_k}]. Call msa_lab.sparse_attention, which explains each mismatch."
        )
    if idx.dtype != torch.int32:
        if idx.dtype != torch.int64:
            raise ValueError(f"idx has dtype {idx.dtype}; pass int32 block numbers padded with -1.")
        idx = idx.to(torch.int32)
    return idx


def head_tiling(n_heads: int, n_kv: int):
    """(group size G, rows per program G_TILE, head chunks per group). G_TILE >= 16 for tl.dot."""
    g = n_heads // n_kv
    g_tile = min(max(16, triton.next_power_of_2(g)), MAX_G_TILE)
    return g, g_tile, triton.cdiv(g, g_tile)


def autotune_configs():
    """BLOCK_N x num_warps x num_stages; prune_configs keeps those that fit the block size."""
    return [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn in (16, 32, 64, 128)
        for w in (4, 8)
        for s in (2, 3)
    ]


SMEM_BUDGET = 200 * 1024  # Hopper has 227 KB of shared memory per block; leave room for the rest


def prune_configs(configs, named_args, **kwargs):
    """Keep key tiles no larger than the (power-of-two rounded) key block, and at least 64 wide
    when the block allows it, whose pipelined K and V buffers ((stages - 1) x 2 tiles) fit in
    shared memory. In the interpreter timing is meaningless: keep one config."""
    args = {**named_args, **kwargs}
    bs2 = max(16, triton.next_power_of_2(args["BLOCK_SIZE"]))
    lo, hi = min(64, bs2), min(128, bs2)
    tile_bytes = args.get("HEAD_DIM", 128) * args["q_ptr"].element_size() if "q_ptr" in args else 128 * 2

    def fits(c):
        return (c.num_stages - 1) * 2 * c.kwargs["BLOCK_N"] * tile_bytes <= SMEM_BUDGET

    kept = [c for c in configs if lo <= c.kwargs["BLOCK_N"] <= hi and fits(c)]
    # MSA_LAB_AUTOTUNE=0 (as in kernels/indexer.py): one config, for quick correctness runs
    return kept[:1] if interpreting() or os.environ.get("MSA_LAB_AUTOTUNE", "1") == "0" else kept


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands get exact fp32 products (tf32 would cost ~3e-4 relative error); fp16/bf16 ignore it."""
    return "ieee" if dtype == torch.float32 or interp_bf16(dtype) else "tf32"


def interp_bf16(dtype: torch.dtype) -> bool:
    """The Triton 3.9 interpreter multiplies bf16 tl.dot operands as their raw uint16 bits; there we
    upcast them (exactly) to fp32 first. Compiled kernels keep native bf16 dots."""
    return interpreting() and dtype == torch.bfloat16


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def attend_slots(
    q,  # [G_TILE, HEAD_DIM] the token's query rows (padding rows are zero)
    k_base, v_base,  # pointers to k[b, group, 0, 0] and v[b, group, 0, 0]
    stride_kn, stride_vn,
    idx_row,  # pointer to idx[b, group, i, 0]
    slot_lo, slot_hi,  # walk slots [slot_lo, slot_hi)
    pos,  # the query's key position p_i = Nk - Nq + i: keys j <= pos are visible
    qk_scale,  # softmax scale * log2(e)
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, G_TILE: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr,
):
    """Online softmax over the visible keys of the selected blocks in slots [slot_lo, slot_hi).

    Returns (acc [G_TILE, HEAD_DIM] fp32 unnormalised, m [G_TILE] running max in log2 units,
    l [G_TILE] running sum). No key seen: acc = 0, l = 0, m = -inf.
    """
    TILES = (BLOCK_SIZE + BLOCK_N - 1) // BLOCK_N  # key tiles per block (a constexpr)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([G_TILE], float("-inf"), tl.float32)
    l = tl.zeros([G_TILE], tl.float32)
    acc = tl.zeros([G_TILE, HEAD_DIM], tl.float32)
    # One flat loop over (slot, key tile) with no branches, so the pipeliner can prefetch the next
    # gathered tile. Padding slots (-1), tile columns past the block end and keys after the query
    # (its own block only, or past Nk) are all masked in the same load mask; the mask costs a few
    # integer ops per key, nothing next to the K/V traffic.
    for it in range(slot_lo * TILES, slot_hi * TILES):
        blk = tl.load(idx_row + it // TILES)
        col = (it % TILES) * BLOCK_N + offs_n  # key offset inside the block
        key = blk.to(tl.int64) * BLOCK_SIZE + col
        # key >= 0 <=> blk >= 0 (col < BLOCK_SIZE); written on the vector because the interpreter
        # turns a scalar-bool & vector-bool into ints.
        ok = (col < BLOCK_SIZE) & (key >= 0) & (key <= pos)  # [BLOCK_N]
        k_blk = k_base + blk.to(tl.int64) * BLOCK_SIZE * stride_kn  # int64 base, small int32 tile offsets
        v_blk = v_base + blk.to(tl.int64) * BLOCK_SIZE * stride_vn
        kt = tl.load(k_blk + col[:, None] * stride_kn + offs_d[None, :], mask=ok[:, None], other=0.0)
        s = _dot(q, tl.trans(kt), DOT_PRECISION, INTERP_BF16) * qk_scale  # [G_TILE, BLOCK_N]
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        # Until a row has seen a key its max is -inf; shift by 0 then so that exp2 gives 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - shift[:, None])
        alpha = tl.math.exp2(m - shift)
        l = l * alpha + tl.sum(p, 1)
        vt = tl.load(v_blk + col[:, None] * stride_vn + offs_d[None, :], mask=ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(vt.dtype), vt, DOT_PRECISION, INTERP_BF16)
        m = m_new
    return acc, m, l
