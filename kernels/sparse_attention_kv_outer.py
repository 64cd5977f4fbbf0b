"""MSA main branch, prefill, KV-outer schedule: load each selected key block once per query chunk (Triton).

Naive reference: ``msa_lab.reference.sparse_attention``; same contract as ``sparse_attention_prefill``
(kernels/sparse_attention.py), which runs the per-token gather schedule. Opt-in: nothing dispatches here yet.

Schedule (the MSA paper's KV-outer loop). For each chunk of C query tokens:
  1. Invert the selection on the device (torch, no host sync): every valid (b, group, token, slot) entry
     gets the key ``seg = (b * Hkv + group) * n_blocks + block``; a stable sort by seg lists, for every
     (b, group, key block), the tokens that chose it. Each list is cut into tiles of T tokens.
  2. ``_kv_outer_block_kernel``: one program per tile. It loads the tile's key block (K and V) once and
     multiplies it against the T tokens x G query heads that selected it (rows = T * G_P2, e.g. 8 tokens
     x 16 heads = 128 rows: a full tensor-core tile), with the causal mask per row (it only bites in a
     token's own block). It writes the partial result of that one block, normalised O and its LSE, into
     a workspace ``[B, Hkv, C, top_k, G, D]`` (q's dtype; fp32 for fp32) + ``[B, Hkv, C, top_k, G]`` fp32.
  3. ``_kv_outer_combine_kernel``: per (token, head), merge the top_k partials by LSE (slots padded with
     -1 are skipped) into O and LSE; a row with no visible key gets O = 0, LSE = -inf.
  The chunk length is picked so the workspace stays under ``max_partial_bytes`` (2 GiB by default).

Traffic model (m3: Hq 64, Hkv 4, G 16, D 128, block 128, top-16, bf16, batch 1, N = 1M = 2**20 tokens;
"per token" = all 64 heads of one query token; K+V of one block of one group = 128 x 128 x 2 B x 2 = 64 KiB;
H100: ~3.0 TB/s HBM copy, ~690 TFLOP/s bf16 matmul, 50 MB L2):

  per-token gather (sparse_attention.py; measured 1.022 s, 66.6 TFLOP/s at 1M)
    K/V   16 blocks x 64 KiB x 4 groups                                          = 4096 KiB
    Q + O 2 x 64 x 128 x 2 B                                                     =   32 KiB
    ~4.03 MiB/token -> 4.4 TB at 1M: 1.47 s at 3.0 TB/s (L2 hits on the forced blocks give 1.02 s)
  KV-outer (this file); chunk C ~ 8K tokens (2 GiB / (16 x 64 x (128 x 2 + 4) B = 260 KiB) = 8065)
    K/V   a chunk's ~14 x 8K dynamic picks touch ~all visible blocks of each group, each read once:
          mean visible keys N/2 x 2 KiB (K+V, 4 groups) = 1 GiB per chunk / C       =  128 KiB
    Q     each (token, group) gathered once per slot, 16 x 16 KiB                   =  256 KiB
          (tiles run group by group, so one group's chunk of Q, 32 MiB, may stay in L2: >= 16 KiB)
    partials written then read back, 2 x 16 x 64 x (128 x 2 + 4) B                 =  520 KiB
    O     64 x 128 x 2 B                                                           =   16 KiB
    ~680-920 KiB/token (4.5-6x less) -> 0.73-0.99 TB at 1M: 0.24-0.33 s at 3.0 TB/s
  FLOPs (QK + PV over visible keys) are unchanged: ~67 MFLOP/token, 7.03e13 at 1M (0.10 s at 690 TFLOP/s).
  Tiles add padded rows: a dynamic block gets ~14 tokens of a chunk at 1M, ~2.2 tiles of 8, so ~80% of
  rows are real and ~8.8e13 FLOPs are issued. A 128-row tile does 8.4 MFLOP for Q 32 KiB + K/V 64 KiB
  (from L2 after the block's first tile) + partials 33 KiB: 64-128 FLOP/byte, under the H100's ~230
  FLOP/byte ridge, so memory bound, but not by much: tile efficiency matters too.
  Host inversion per chunk: one sort of B x Hkv x C x top_k = 516K int64 keys plus searchsorted, ~130
  chunks at 1M: ~20 ms (estimate).

  Prediction for the next GPU run (H100, m3, bf16, 1M): sparse attention 0.25-0.40 s, i.e. 2.6-4x faster
  than the gather kernel's 1.022 s (175-280 TFLOP/s visible); MSA total (indexer 1.098 s + this)
  1.35-1.50 s -> dense / MSA 24.7-27.5x (target 20x). At 128K: K/V drops to 16 KiB/token, so
  ~570-810 KiB/token, 25-36 ms vs 73.7 ms measured (2-3x; the gather kernel's K/V set half fits L2 there).
  Knobs to sweep on the GPU: ``rows_per_tile`` 64 vs 128 (fewer padded rows vs more K/V re-reads from L2),
  ``max_partial_bytes`` (longer chunks read K/V fewer times) and ``partial_dtype`` (fp32 removes the
  partials' bf16 rounding, back to the gather kernel's error, for +512 KiB/token).

Limits: head dims 32/64/128, fp16/bf16/fp32, group size up to 128 (larger: use sparse_attention_prefill).
Index entries are not validated here (msa_lab.sparse_attention does that): a duplicated block in one row
would be counted twice.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LN2, LOG2E, _dot, autotune_configs, check_inputs, dot_precision, interp_bf16
from ._common import last_dim_contiguous, prune_configs

_alloc = torch.empty  # tests swap in a poisoning allocator so an unwritten element (output or workspace) fails

DEFAULT_ROWS = 128  # rows (tokens x heads) of one tile; 128 = 8 tokens x 16 heads at m3
MAX_GROUP = 128  # one program holds all of a group's heads for one token
DEFAULT_PARTIAL_BYTES = 2**31  # workspace budget per chunk (partial O + LSE)


@triton.autotune(
    configs=autotune_configs(),
    key=["BLOCK_SIZE", "HEAD_DIM", "ROWS", "G_P2"],
    prune_configs_by={"early_config_prune": prune_configs},
)
@triton.jit
def _kv_outer_block_kernel(
    q_ptr, k_ptr, v_ptr, tiles_ptr, perm_ptr, po_ptr, plse_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    n_q, n_k, n_kv, group, n_blocks, q0, chunk, top_k, qk_scale,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, G_P2: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr,
):
    # tiles is int32 [n_tiles_max, 3]: (seg, first entry in perm, tokens in the tile). The grid is an upper
    # bound on the tile count (no host sync to learn it), so trailing programs find n == 0 and leave.
    t = tl.program_id(0).to(tl.int64)
    seg = tl.load(tiles_ptr + 3 * t).to(tl.int64)
    lo = tl.load(tiles_ptr + 3 * t + 1).to(tl.int64)
    n = tl.load(tiles_ptr + 3 * t + 2)
    if n == 0:
        return
    bg = seg // n_blocks
    blk = seg % n_blocks
    b = bg // n_kv
    kvh = bg % n_kv

    # Row r = (token slot r // G_P2 of this tile, head r % G_P2 of the group); padded rows load zeros.
    r = tl.arange(0, ROWS)
    tok_i = r // G_P2
    hh = r % G_P2
    tok_ok = tok_i < n
    row_ok = tok_ok & (hh < group)
    # entry e indexes the chunk's flat [B, Hkv, C, top_k] selection (and the workspace rows).
    e = tl.load(perm_ptr + lo + tok_i, mask=tok_ok, other=0).to(tl.int64)  # [ROWS]
    qi = q0 + (e // top_k) % chunk  # query index in [0, Nq)
    pos = n_k - n_q + qi  # keys j <= pos are visible (bottom-right aligned)
    heads = kvh * group + hh
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + qi[:, None] * stride_qn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)

    k_blk = k_ptr + b * stride_kb + kvh * stride_kh + blk * BLOCK_SIZE * stride_kn  # int64 base
    v_blk = v_ptr + b * stride_vb + kvh * stride_vh + blk * BLOCK_SIZE * stride_vn
    offs_n = tl.arange(0, BLOCK_N)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    l = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    TILES = (BLOCK_SIZE + BLOCK_N - 1) // BLOCK_N
    for it in range(TILES):  # the one key block, BLOCK_N keys at a time, online softmax
        col = it * BLOCK_N + offs_n
        key = blk * BLOCK_SIZE + col
        k_ok = (col < BLOCK_SIZE) & (key < n_k)  # the last block may be short
        kt = tl.load(k_blk + col[:, None] * stride_kn + offs_d[None, :], mask=k_ok[:, None], other=0.0)
        s = _dot(q, tl.trans(kt), DOT_PRECISION, INTERP_BF16) * qk_scale  # [ROWS, BLOCK_N], log2 units
        # Causal per row: each row is its own token; only a token's own block has keys after it.
        vis = k_ok[None, :] & (key[None, :] <= pos[:, None])
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: exp2 gives 0, not NaN
        p = tl.math.exp2(s - shift[:, None])
        alpha = tl.math.exp2(m - shift)
        l = l * alpha + tl.sum(p, 1)
        vt = tl.load(v_blk + col[:, None] * stride_vn + offs_d[None, :], mask=k_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(vt.dtype), vt, DOT_PRECISION, INTERP_BF16)
        m = m_new

    empty = l == 0.0  # a selected block with no visible key (not produced by valid selections): weight 0
    o = acc / tl.where(empty, 1.0, l)[:, None]
    lse = tl.where(empty, float("-inf"), (m + tl.math.log2(tl.where(empty, 1.0, l))) * LN2)
    prow = e * group + hh  # workspace row of (entry, head)
    tl.store(po_ptr + prow[:, None] * HEAD_DIM + offs_d[None, :], o.to(po_ptr.dtype.element_ty), mask=row_ok[:, None])
    tl.store(plse_ptr + prow, lse, mask=row_ok)


@triton.jit
def _kv_outer_combine_kernel(
    po_ptr, plse_ptr, idx_ptr, o_ptr, lse_ptr,
    stride_ib, stride_ih, stride_in,
    stride_ob, stride_oh, stride_on,
    n_q, n_kv, group, q0, chunk, top_k, n_tok_tiles,
    HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, G_P2: tl.constexpr,
):
    # One program per (b, group, ROWS // G_P2 tokens); rows = (token, head) as in the block kernel.
    pid = tl.program_id(0).to(tl.int64)
    bg = pid // n_tok_tiles
    tt = pid % n_tok_tiles
    b = bg // n_kv
    kvh = bg % n_kv
    r = tl.arange(0, ROWS)
    token = tt * (ROWS // G_P2) + r // G_P2  # in the chunk
    hh = r % G_P2
    row_ok = (token < chunk) & (hh < group)
    qi = q0 + token
    heads = kvh * group + hh
    offs_d = tl.arange(0, HEAD_DIM)
    idx_row = idx_ptr + b * stride_ib + kvh * stride_ih + qi * stride_in  # [ROWS]
    m = tl.full([ROWS], float("-inf"), tl.float32)
    w = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    for s in range(0, top_k):
        blk = tl.load(idx_row + s, mask=row_ok, other=-1)
        ok = row_ok & (blk >= 0)  # -1 slots were never written: masked, so their NaN poison is never read
        prow = ((bg * chunk + token) * top_k + s) * group + hh
        plse = tl.load(plse_ptr + prow, mask=ok, other=float("-inf"))
        m_new = tl.maximum(m, plse)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - shift)
        beta = tl.exp(plse - shift)
        po = tl.load(po_ptr + prow[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + po.to(tl.float32) * beta[:, None]
        w = w * alpha + beta
        m = m_new
    empty = w == 0.0
    o = acc / tl.where(empty, 1.0, w)[:, None]
    tl.store(o_ptr + b * stride_ob + heads[:, None] * stride_oh + qi[:, None] * stride_on + offs_d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    lse = tl.where(empty, float("-inf"), m + tl.log(tl.where(empty, 1.0, w)))
    tl.store(lse_ptr + (b * (n_kv * group) + heads) * n_q + qi, lse, mask=row_ok)  # lse is contiguous


def invert_selection(idx_chunk: torch.Tensor, n_blocks: int, tokens_per_tile: int):
    """For each (b, group, key block), the chunk entries that selected it, cut into tiles. No host sync.

    Args:
        idx_chunk: ``int [B, Hkv, C, top_k]`` selected blocks of C query tokens, -1 padded.
        n_blocks: key blocks in the sequence (``cdiv(Nk, block_size)``).
        tokens_per_tile: T, entries per tile.
    Returns:
        perm ``int32 [E]`` (E = B * Hkv * C * top_k): flat entry numbers sorted by (b, group, block),
        invalid (-1) entries last; tiles ``int32 [n_max, 3]`` rows (seg, first position in perm, count),
        seg = (b * Hkv + group) * n_blocks + block, count in [1, T] for real tiles, 0 for the padding
        rows that fill up the upper bound n_max = cdiv(E, T) + min(E, number of segments).
    """
    B, Hkv, C, K = idx_chunk.shape
    dev = idx_chunk.device
    n_seg = B * Hkv * n_blocks
    E = B * Hkv * C * K
    if E >= 2**31 or n_seg >= 2**31:
        raise ValueError(f"{E} selection entries / {n_seg} key-block segments exceed int32; lower max_partial_bytes.")
    bg = torch.arange(B * Hkv, device=dev).view(B, Hkv, 1, 1)
    seg = torch.where(idx_chunk >= 0, bg * n_blocks + idx_chunk.long(), n_seg).flatten()
    sorted_seg, perm = torch.sort(seg, stable=True)  # stable: tokens stay in order inside a block (L2-friendly)
    segs = torch.arange(n_seg, device=dev)
    starts = torch.searchsorted(sorted_seg, segs)
    counts = torch.searchsorted(sorted_seg, segs, right=True) - starts
    T = tokens_per_tile
    tiles_per = (counts + T - 1) // T
    tile_end = torch.cumsum(tiles_per, 0)  # inclusive
    # Upper bound: sum ceil(n_s / T) <= E / T + (non-empty segments); real tiles come first.
    n_max = triton.cdiv(E, T) + min(E, n_seg)
    t = torch.arange(n_max, device=dev)
    t_seg = torch.searchsorted(tile_end, t, right=True)  # n_seg past the last real tile
    real = t_seg < n_seg
    t_seg = t_seg.clamp(max=n_seg - 1)
    j = t - (tile_end[t_seg] - tiles_per[t_seg])  # tile number inside its segment
    lo = starts[t_seg] + j * T
    cnt = torch.where(real, (counts[t_seg] - j * T).clamp(0, T), 0)
    tiles = torch.stack([t_seg, lo.clamp(max=max(E - 1, 0)), cnt], 1).to(torch.int32).contiguous()
    return perm.to(torch.int32), tiles


def chunk_tokens(B: int, Hq: int, D: int, top_k: int, n_q: int, elem_bytes: int, max_partial_bytes: int) -> int:
    """Query tokens per chunk so the workspace (partial O + fp32 LSE for every slot) fits the budget."""
    per_token = B * top_k * Hq * (D * elem_bytes + 4)
    if per_token > max_partial_bytes:
        raise ValueError(f"one query token needs a {per_token}-byte workspace, above max_partial_bytes="
                         f"{max_partial_bytes}; raise max_partial_bytes or split the batch.")
    return max(1, min(n_q, max_partial_bytes // per_token))


def sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse: bool = False, *, rows_per_tile: int = DEFAULT_ROWS,
                              max_partial_bytes: int = DEFAULT_PARTIAL_BYTES, tokens_per_chunk: int | None = None,
                              partial_dtype: torch.dtype | None = None):
    """Exact causal softmax attention over each query's selected key blocks, KV-outer schedule (Triton).

    Args:
        q: ``[B, Hq, Nq, D]`` fp16/bf16/fp32, D in (32, 64, 128); head h uses KV group h // (Hq // Hkv),
            group size Hq // Hkv <= 128.
        k, v: ``[B, Hkv, Nk, D]``, Nq <= Nk; query i sits at key position Nk - Nq + i.
        idx: ``int32 [B, Hkv, Nq, top_k]`` selected blocks, -1 padded, already validated (no duplicates).
        cfg: MSAConfig (block_size, top_k, scale).
        rows_per_tile: tensor-core rows per program (tokens x padded group), a power of two >= 16; tiles
            hold max(1, rows_per_tile // next_pow2(G)) tokens.
        max_partial_bytes: workspace budget; sets the chunk length (2 GiB: 8065 tokens at m3 bf16).
        tokens_per_chunk: force the chunk length (tests); must fit the budget.
        partial_dtype: workspace dtype for partial O; default q's dtype (fp32 stays fp32).
    Returns:
        O ``[B, Hq, Nq, D]`` in q's dtype, and LSE ``float32 [B, Hq, Nq]`` (natural log) if return_lse.
        A row with no selected key gets O = 0, LSE = -inf.
    """
    idx = check_inputs(q, k, v, idx, cfg).contiguous()
    q, k, v = (last_dim_contiguous(n, t) for n, t in (("q", q), ("k", k), ("v", v)))
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    g_p2 = triton.next_power_of_2(group)
    if g_p2 > MAX_GROUP:
        raise ValueError(f"the KV-outer kernel takes groups of up to {MAX_GROUP} query heads per KV head, got "
                         f"{group}; use sparse_attention_prefill (msa_lab.kernels.sparse_attention).")
    if rows_per_tile < 16 or rows_per_tile & (rows_per_tile - 1):
        raise ValueError(f"rows_per_tile must be a power of two >= 16 (tl.dot), got {rows_per_tile}.")
    rows = max(rows_per_tile, g_p2)
    tok_per_tile = rows // g_p2
    top_k, bs = cfg.top_k, cfg.block_size
    n_blocks = triton.cdiv(Nk, bs)
    pdt = partial_dtype or q.dtype
    if pdt not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"partial_dtype must be float16, bfloat16 or float32, got {pdt}.")
    c_max = chunk_tokens(B, Hq, D, top_k, Nq, torch.empty(0, dtype=pdt).element_size(), max_partial_bytes)
    if tokens_per_chunk is not None:
        if not 1 <= min(tokens_per_chunk, Nq) <= c_max:
            raise ValueError(f"tokens_per_chunk={tokens_per_chunk} must be in [1, {c_max}] (the workspace budget "
                             f"max_partial_bytes={max_partial_bytes}).")
        c_max = min(tokens_per_chunk, Nq)

    o = _alloc((B, Hq, Nq, D), dtype=q.dtype, device=q.device)
    lse = _alloc((B, Hq, Nq), dtype=torch.float32, device=q.device)
    part_o = _alloc((B * Hkv * c_max * top_k * group * D,), dtype=pdt, device=q.device)  # [B,Hkv,C,top_k,G,D]
    part_lse = _alloc((B * Hkv * c_max * top_k * group,), dtype=torch.float32, device=q.device)
    qk_scale = cfg.softmax_scale(D) * LOG2E
    comb_rows = max(16, g_p2)
    for q0 in range(0, Nq, c_max):
        c = min(c_max, Nq - q0)
        perm, tiles = invert_selection(idx[:, :, q0:q0 + c], n_blocks, tok_per_tile)
        if tiles.shape[0] >= 2**31:
            raise ValueError(f"{tiles.shape[0]} tiles exceed the CUDA grid limit; lower max_partial_bytes.")
        _kv_outer_block_kernel[(tiles.shape[0],)](
            q, k, v, tiles, perm, part_o, part_lse,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            Nq, Nk, Hkv, group, n_blocks, q0, c, top_k, qk_scale,
            BLOCK_SIZE=bs, HEAD_DIM=D, ROWS=rows, G_P2=g_p2,
            DOT_PRECISION=dot_precision(q.dtype), INTERP_BF16=interp_bf16(q.dtype),
        )
        n_tok_tiles = triton.cdiv(c, comb_rows // g_p2)
        _kv_outer_combine_kernel[(B * Hkv * n_tok_tiles,)](
            part_o, part_lse, idx, o, lse,
            idx.stride(0), idx.stride(1), idx.stride(2),
            o.stride(0), o.stride(1), o.stride(2),
            Nq, Hkv, group, q0, c, top_k, n_tok_tiles,
            HEAD_DIM=D, ROWS=comb_rows, G_P2=g_p2, num_warps=4 if comb_rows * D <= 4096 else 8,
        )
    return (o, lse) if return_lse else o
