"""MSA index branch (the "indexer"): block scores and top-k block selection, in Triton.

Schedule, and why it is shaped so:
  * iq . ik is the cost that grows with N (~5.6e14 FLOPs for m3 at 1M), so it is a tensor-core GEMM:
    rows = KV groups x query tokens (a shared ik head is loaded once for all groups), columns = the
    keys of one block, K = Di, fp32 accumulation; a block's score is a row max (no exp anywhere).
  * Scores never reach memory: each program keeps a running top-k per row in registers
    (replace-the-minimum), so extra memory is the [B, Hkv, Nq, top_k] output, never [Nq, Nk].
  * Programs = (query tile, batch x group chunk, key-block chunk). Prefill fills the GPU with query
    tiles (one key chunk, latest tiles first, future blocks skipped, causal mask on the diagonal
    only); decode has one tile per batch, so key blocks are split over programs to stream ik at HBM
    speed and a one-row-per-program merge kernel reduces the chunks' top-k lists.

Naive reference: ``msa_lab.reference.block_scores`` / ``select_blocks`` (float64). Batch, head, token
and key offsets are int64 inside the kernels: no 2**31-element limit. fp32 inputs run the dot in full
fp32 ("ieee", never tf32) so selections match the reference to fp32 rounding; fp16/bf16 use native
tensor-core dots with fp32 accumulation. MSA_LAB_AUTOTUNE=0 skips autotuning (one config; quick runs).
Measured on an H200 (Triton 3.6, autotuned): m3 at 128K 16 ms (555 TFLOP/s), at 1M 1.08 s (519
TFLOP/s, 256 MiB extra); decode, 4 tokens over 1M keys: 124 us on the GPU (ik read at ~2.2 TB/s).
"""
from __future__ import annotations

import functools
import os
import warnings

import torch
import triton
import triton.language as tl

SUPPORTED_INDEX_DIMS = (16, 32, 64, 128, 256)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
_MIN_BLOCKS_PER_CHUNK = 8  # a key chunk streams at least this many blocks (decode: ~1 MB of ik at M3 shapes)
_SMEM_BUDGET = 180 << 10  # what MSA_LAB_AUTOTUNE=0 allows the q tile plus the pipelined ik tiles
_TILE_BYTES = 32 << 10  # cap on one ik tile [Di, BLOCK_N]: shared memory per pipeline stage
_NEG_FLT_MAX = tl.constexpr(-3.4028234663852886e38)
MODE_SCORES = 0  # write block scores [.., Nq, n_blocks] (debug / tests)
MODE_TOPK = 1  # write top-k block numbers (the selection)

_alloc = torch.empty  # tests swap in a poisoning allocator so an unwritten output element fails
_warned: set = set()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------- kernels
def _autotune_configs():
    return [
        triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s)
        for m, w, s in ((64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 3),
                        (128, 4, 3), (128, 8, 2), (128, 8, 3), (128, 8, 4))
    ]


def _prune_configs(configs, named_args, **kwargs):
    """Decode-sized M (groups x new tokens <= 64) only wastes a 128-row tile. In the interpreter
    timings mean nothing: keep one config. MSA_LAB_AUTOTUNE=0 keeps one sensible config (quick runs)."""
    args = {**named_args, **kwargs}
    decode = args["NQ_BUCKET"] * args["GROUPS"] <= 64
    kept = [c for c in configs if c.kwargs["BLOCK_M"] == 64] if decode else configs
    if _interpreting():
        return kept[:1]
    if os.environ.get("MSA_LAB_AUTOTUNE", "1") == "0":
        elem = args["iq_ptr"].element_size()
        prefs = ((64, 4, 3), (64, 4, 2)) if decode else ((128, 8, 3), (128, 8, 2), (64, 4, 3), (64, 4, 2))
        for m, w, st in prefs:  # first whose q tile + pipelined ik tiles fit in shared memory
            if (m + st * args["BLOCK_N"]) * args["DI"] * elem <= _SMEM_BUDGET:
                return [c for c in kept if (c.kwargs["BLOCK_M"], c.num_warps, c.num_stages) == (m, w, st)]
        return [c for c in kept if (c.kwargs["BLOCK_M"], c.num_warps, c.num_stages) == prefs[-1]]
    return kept


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # The Triton 3.9 interpreter multiplies bf16 dot operands as raw bits; UPCAST (interpreter + bf16
    # only) widens them exactly to fp32 first. Compiled kernels keep native dots.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _insert(topv, topi, val, blk, K_PAD: tl.constexpr):
    """Running top-k: per row, `val` [M] replaces the current minimum of `topv` [M, K_PAD] if larger.

    Slots past top_k hold +inf so they are never the minimum; empty slots hold -inf / -1.
    """
    low, slot = tl.min(topv, 1, return_indices=True)
    hit = (tl.arange(0, K_PAD)[None, :] == slot[:, None]) & (val > low)[:, None]
    return tl.where(hit, val[:, None], topv), tl.where(hit, blk[:, None], topi)


@triton.jit
def _tile_max(q, ik_base, stride_kn, t, pos, n_k,
              BS: tl.constexpr, DI: tl.constexpr, BLOCK_N: tl.constexpr, NSUB: tl.constexpr,
              MASK_COLS: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Row max of q . ik over key tile t (tile t % NSUB of block t // NSUB): [BLOCK_M] fp32, unscaled.

    Columns past the block end (and, with CAUSAL, keys after the row's query) count as -inf. NaN
    products are skipped: tl.max reduces with maxnum on GPU and np.nanmax in the interpreter, so a
    NaN acts as -inf unless every column is NaN (then NaN, which _finish maps to -inf). CAUSAL=False
    is only used for blocks every row of the tile sees wholly.
    """
    blk = t // NSUB
    col = (t % NSUB) * BLOCK_N + tl.arange(0, BLOCK_N)  # key offset inside the block
    key = blk * BS + col
    # one tile per loop step (so the pipeliner holds num_stages tiles, not NSUB x num_stages);
    # int64 tile base (stride_kn is int64), int32 offsets inside the tile
    base = ik_base + (blk * BS + (t % NSUB) * BLOCK_N) * stride_kn
    ptrs = base + (tl.arange(0, BLOCK_N)[None, :] * tl.cast(stride_kn, tl.int32) + tl.arange(0, DI)[:, None])
    if CAUSAL:
        kt = tl.load(ptrs, mask=((col < BS) & (key < n_k))[None, :], other=0.0)
    elif MASK_COLS:
        kt = tl.load(ptrs, mask=(col < BS)[None, :], other=0.0)
    else:
        kt = tl.load(ptrs)
    s = _dot(q, kt, PRECISION, UPCAST)  # [BLOCK_M, BLOCK_N]
    if CAUSAL:
        s = tl.where((key[None, :] <= pos[:, None]) & (col < BS)[None, :], s, float("-inf"))
    elif MASK_COLS:
        s = tl.where((col < BS)[None, :], s, float("-inf"))
    return tl.max(s, 1)


@triton.jit
def _finish(best, blk, pos, scale, BS: tl.constexpr, CAUSAL: tl.constexpr):
    """Raw block max [BLOCK_M] -> index score: * scale; -FLT_MAX if the block is visible but every
    product is -inf or NaN (so it still beats invisible blocks); -inf if the row sees none of it."""
    best = tl.where(best == best, best, float("-inf"))
    best = tl.where(best == float("-inf"), _NEG_FLT_MAX, best * scale)  # scale > 0: max commutes
    if CAUSAL:
        best = tl.where(blk * BS <= pos, best, float("-inf"))
    return best


@triton.autotune(
    configs=_autotune_configs(),
    key=["NQ_BUCKET", "BS", "DI", "BLOCK_N", "GROUPS", "SHARED_IK", "K_PAD", "MODE"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def _indexer_kernel(
    iq_ptr, ik_ptr, out_v_ptr, out_i_ptr, descale_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    n_q, n_k, n_kv, n_gc, n_bg, n_kc, n_blocks, top_k, init_blocks, local_blocks, index_scale,
    NQ_BUCKET,  # autotune key only
    BS: tl.constexpr, DI: tl.constexpr, BLOCK_N: tl.constexpr, NSUB: tl.constexpr, MASK_COLS: tl.constexpr,
    GROUPS: tl.constexpr, SHARED_IK: tl.constexpr, K_PAD: tl.constexpr, MODE: tl.constexpr,
    WRITE_V: tl.constexpr, FP8: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    BLOCK_Q: tl.constexpr = BLOCK_M // GROUPS  # query tokens per tile; rows = GROUPS x BLOCK_Q
    n_qt = tl.cdiv(n_q, BLOCK_Q)
    # program -> (key chunk fastest, batch x group chunk, query tile slowest and latest first)
    pid = tl.program_id(0)
    kc = pid % n_kc
    rest = pid // n_kc
    bg = rest % n_bg
    qt = n_qt - 1 - rest // n_bg
    b = bg // n_gc
    gc = bg % n_gc

    rows = tl.arange(0, BLOCK_M)
    grp = gc * GROUPS + rows // BLOCK_Q  # [BLOCK_M] KV group of each row
    tok = qt * BLOCK_Q + rows % BLOCK_Q  # [BLOCK_M] query token of each row
    row_ok = tok < n_q
    pos = n_k - n_q + tok  # key position of each query (bottom-right aligned)
    own = pos // BS

    offs_d = tl.arange(0, DI)
    q_ptrs = (iq_ptr + b.to(tl.int64) * stride_qb + grp.to(tl.int64)[:, None] * stride_qh
              + tok.to(tl.int64)[:, None] * stride_qn + offs_d[None, :])
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # [BLOCK_M, DI]
    ik_base = ik_ptr + b.to(tl.int64) * stride_kb
    stride_kn = tl.cast(stride_kn, tl.int64)  # keeps key-tile base offsets in int64 (tl.cast: may be a constexpr)
    if not SHARED_IK:
        ik_base += gc.to(tl.int64) * stride_kh  # GROUPS == 1: one group per program
    scale = index_scale
    if FP8:
        scale = scale * tl.load(descale_ptr)  # undo the per-tensor fp8 scales (> 0, so max commutes)

    # key blocks of this program: its chunk of [0, hi); blocks < full are wholly visible to every row
    pos_lo = n_k - n_q + qt * BLOCK_Q
    pos_hi = n_k - n_q + tl.minimum(n_q, (qt + 1) * BLOCK_Q) - 1
    if MODE == 0:
        hi = n_blocks  # scores: write -inf for the future blocks too
    else:
        hi = pos_hi // BS + 1  # selection: blocks in the future of the whole tile are skipped
    per = tl.cdiv(hi, n_kc)
    lo_b = kc * per
    hi_b = tl.minimum(hi, lo_b + per)
    full = tl.minimum(hi_b, tl.maximum(lo_b, (pos_lo + 1) // BS))  # [lo_b, full) unmasked, [full, hi_b) masked

    out_row = ((b.to(tl.int64) * n_kv + grp) * n_q + tok)  # [BLOCK_M] row of [B, Hkv, Nq, .]
    slots = tl.arange(0, K_PAD)
    topv = tl.where(slots[None, :] < top_k, float("-inf"), float("inf")) + tl.zeros([BLOCK_M, K_PAD], tl.float32)
    topi = tl.full([BLOCK_M, K_PAD], -1, tl.int32)
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    # One loop step per key tile (NSUB tiles per block; NSUB == 1 for blocks up to 128 keys). The
    # same body runs twice: off the diagonal without the causal mask, then on it with the mask.
    for t in range(lo_b * NSUB, full * NSUB):
        blk = t // NSUB
        m = _tile_max(q, ik_base, stride_kn, t, pos, n_k, BS, DI, BLOCK_N, NSUB, MASK_COLS, False, PRECISION, UPCAST)
        sub = t % NSUB + tl.zeros([BLOCK_M], tl.int32)  # a tensor also where t is a Python int
        if NSUB == 1:
            best = m
        else:
            best = tl.where(sub == 0, m, tl.maximum(best, m))
        s = _finish(best, blk, pos, scale, BS, False)
        last = sub == NSUB - 1
        if MODE == 0:
            tl.store(out_v_ptr + out_row * n_blocks + blk, s, mask=row_ok & last)
        else:
            s = tl.where((blk < init_blocks) | (blk > own - local_blocks), float("inf"), s)  # forced
            if NSUB > 1:
                s = tl.where(last, s, float("-inf"))  # inserts nothing until the block's last tile
            topv, topi = _insert(topv, topi, s, tl.full([BLOCK_M], blk, tl.int32), K_PAD)
    for t in range(full * NSUB, hi_b * NSUB):
        blk = t // NSUB
        m = _tile_max(q, ik_base, stride_kn, t, pos, n_k, BS, DI, BLOCK_N, NSUB, MASK_COLS, True, PRECISION, UPCAST)
        sub = t % NSUB + tl.zeros([BLOCK_M], tl.int32)  # a tensor also where t is a Python int
        if NSUB == 1:
            best = m
        else:
            best = tl.where(sub == 0, m, tl.maximum(best, m))
        s = _finish(best, blk, pos, scale, BS, True)
        last = sub == NSUB - 1
        if MODE == 0:
            tl.store(out_v_ptr + out_row * n_blocks + blk, s, mask=row_ok & last)
        else:
            forced = (blk <= own) & ((blk < init_blocks) | (blk > own - local_blocks))
            s = tl.where(forced, float("inf"), s)
            if NSUB > 1:
                s = tl.where(last, s, float("-inf"))
            topv, topi = _insert(topv, topi, s, tl.full([BLOCK_M], blk, tl.int32), K_PAD)
    if MODE == 1:
        # [B, Hkv, Nq, n_kc, top_k]: this chunk's list; with n_kc == 1 that is the final selection
        offs = (out_row * n_kc + kc)[:, None] * top_k + slots[None, :]
        ok = row_ok[:, None] & (slots[None, :] < top_k)
        tl.store(out_i_ptr + offs, tl.where(topv == float("-inf"), -1, topi), mask=ok)
        if WRITE_V:
            tl.store(out_v_ptr + offs, topv, mask=ok)


@triton.jit
def _merge_kernel(pv_ptr, pi_ptr, out_ptr, n_cand, top_k, CHUNK: tl.constexpr, K_PAD: tl.constexpr):
    """One row per program: its n_cand = n_kc x top_k candidates [R, n_cand] -> selection [R, top_k].

    top_k rounds of (max, argmax, knock out) per chunk of candidates, each winner replacing the
    running list's minimum when larger: a few reductions per round, all rows in parallel.
    """
    row = tl.program_id(0).to(tl.int64)
    slots = tl.arange(0, K_PAD)
    offs = tl.arange(0, CHUNK)
    topv = tl.where(slots < top_k, float("-inf"), float("inf"))
    topi = tl.full([K_PAD], -1, tl.int32)
    for c0 in range(0, n_cand, CHUNK):
        ok = c0 + offs < n_cand
        v = tl.load(pv_ptr + row * n_cand + c0 + offs, mask=ok, other=float("-inf"))
        i = tl.load(pi_ptr + row * n_cand + c0 + offs, mask=ok, other=-1)
        for _ in range(top_k):
            top, j = tl.max(v, 0, return_indices=True)
            low, slot = tl.min(topv, 0, return_indices=True)
            hit = (slots == slot) & (top + tl.zeros([K_PAD], tl.float32) > low)  # vector: interpreter-safe
            topv = tl.where(hit, top, topv)
            topi = tl.where(hit, tl.sum(tl.where(offs == j, i, 0)), topi)
            v = tl.where(offs == j, float("-inf"), v)
    tl.store(out_ptr + row * top_k + slots, tl.where(topv == float("-inf"), -1, topi), mask=slots < top_k)


# ------------------------------------------------------------------------------------------ host
def _check(iq: torch.Tensor, ik: torch.Tensor, cfg, fp8: bool):
    """Cheap checks the kernels need even when called directly (no host sync)."""
    for n, t in (("iq", iq), ("ik", ik)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{n} must be a 4-D tensor (iq [B, Hkv, Nq, Di], ik [B, Hik, Nk, Di]); got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}.")
    if iq.device.type != "cuda" and not _interpreting():
        raise RuntimeError(f"msa_lab.kernels.indexer needs CUDA tensors (got {iq.device}); set TRITON_INTERPRET=1 "
                           f"before importing triton to run it on the CPU (slow, for tests), or use backend='torch'.")
    if iq.device != ik.device:
        raise ValueError(f"iq is on {iq.device} but ik is on {ik.device}; move them to one device.")
    if iq.dtype not in SUPPORTED_DTYPES or iq.dtype != ik.dtype:
        raise ValueError(f"the indexer supports float16, bfloat16 and float32 with iq and ik of one dtype; got "
                         f"{iq.dtype} and {ik.dtype}. Cast them, e.g. .to(torch.bfloat16).")
    B, Hkv, Nq, Di = iq.shape
    Bk, Hik, Nk, Dik = ik.shape
    if Bk != B or Dik != Di or Hik not in (1, Hkv) or Nq > Nk or min(iq.shape) == 0 or min(ik.shape) == 0:
        raise ValueError(f"index shapes do not fit: iq {tuple(iq.shape)}, ik {tuple(ik.shape)}; expected iq "
                         f"[B, Hkv, Nq, Di], ik [B, Hik, Nk, Di] with Hik 1 or Hkv, 0 < Nq <= Nk. "
                         f"msa_lab.select_blocks explains each mismatch.")
    if Di not in SUPPORTED_INDEX_DIMS:
        raise ValueError(f"the indexer supports index dims {', '.join(map(str, SUPPORTED_INDEX_DIMS))}; got Di={Di}. "
                         f"Use backend='torch' for other index dims.")
    if fp8 and Di < 32:
        raise ValueError(f"fp8=True needs Di >= 32 (the fp8 tensor-core dot's K step); got Di={Di}. Use fp8=False.")
    if cfg.top_k > 1024:
        raise ValueError(f"the indexer keeps top_k in registers and supports top_k <= 1024; got {cfg.top_k}. "
                         f"Use backend='torch' for larger top_k.")
    return [_last_dim_contiguous(n, t) for n, t in (("iq", iq), ("ik", ik))]


def _last_dim_contiguous(name: str, t: torch.Tensor) -> torch.Tensor:
    """Any strides for B, H, N (so [B, N, H, Di].transpose(1, 2) costs no copy); Di needs unit stride for
    coalesced loads, otherwise one copy with a warning."""
    if t.stride(-1) == 1 or t.shape[-1] == 1:
        return t
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"msa_lab.kernels.indexer: {name} has stride {t.stride(-1)} along its last dim; copying it "
                      f"(pass tensors whose last dim is contiguous to avoid the copy).", stacklevel=4)
    return t.contiguous()


def _to_fp8(x: torch.Tensor):
    """x -> (float8_e4m3fn tensor, fp32 [1] descale): a per-tensor scale maps max |x| (finite values) to 448."""
    amax = x.detach().abs().float().nan_to_num(0.0, posinf=0.0, neginf=0.0).amax()
    s = torch.where(amax > 0, FP8_MAX / amax, torch.ones_like(amax))
    return (x.float() * s).to(torch.float8_e4m3fn), (1.0 / s).reshape(1)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreter: programs run one after another, fewer is faster


def _waves(n_q: int) -> int:
    """Programs per SM the key-chunk split aims for. Fewer chunks = fewer top-k candidates for the merge
    kernel (one program per row), more = more loads in flight. Measured on an H100, m3, 1M keys, one new
    token, each setting its own bench process (data/bench/2026-11-27-nvidia-h100-80gb-hbm3-decode-waves*.json),
    MSA step in ms at 1 / 2 / 4 waves:
      batch 1, CUDA graphs 0.116 / 0.127 / 0.139; eager 0.307 / 0.289 / 0.245 (eager is host-bound there);
      batch 8, CUDA graphs 0.741 / 0.719 / 0.723; eager 0.748 / 0.724 / 0.727.
    Decode takes 2: the best at batch 8 either way, and at batch 1 better than 4 under graphs without
    halving the eager rate as 1 does. Prefill keeps 4 (its query tiles fill the GPU from 16K tokens on).
    MSA_LAB_INDEXER_WAVES overrides it (tuning runs)."""
    text = os.environ.get("MSA_LAB_INDEXER_WAVES")
    if text is None:
        return 4 if n_q > 16 else 2
    try:
        waves = int(text)
    except ValueError:
        waves = 0
    if waves < 1:
        raise ValueError(f"MSA_LAB_INDEXER_WAVES must be a positive int (programs per SM), got {text!r}.")
    return waves


def _plan(iq, ik, cfg, key_chunks):
    B, Hkv, Nq, Di = iq.shape
    Hik, Nk = ik.shape[1], ik.shape[2]
    bs, nb = cfg.block_size, cfg.num_blocks(Nk)
    shared = Hik == 1 and Hkv > 1
    # groups stacked into M: the largest power of two (<= 8) dividing Hkv, so no row is padding
    groups = 1
    while shared and groups < 8 and Hkv % (2 * groups) == 0:
        groups *= 2
    n_gc = Hkv // groups
    block_n = max(16, min(128, triton.next_power_of_2(bs)))
    while block_n > 16 and Di * block_n * iq.element_size() > _TILE_BYTES:
        block_n //= 2
    nsub = triton.cdiv(bs, block_n)
    if key_chunks is None:  # enough programs for a few waves (_waves), each chunk streaming a useful run of ik
        tiles = B * n_gc * triton.cdiv(Nq, 128 // groups)  # query tiles at the larger BLOCK_M
        n_kc = min(triton.cdiv(_waves(Nq) * _sm_count(iq.device), tiles), triton.cdiv(nb, _MIN_BLOCKS_PER_CHUNK))
    else:  # tests: any split, even one block per chunk
        if not isinstance(key_chunks, int) or key_chunks < 1:
            raise ValueError(f"key_chunks must be a positive int or None (automatic); got {key_chunks!r}.")
        n_kc = min(key_chunks, nb)
    n_kc = max(1, n_kc)
    return dict(shared=shared, groups=groups, n_gc=n_gc, block_n=block_n, nsub=nsub, n_kc=n_kc, nb=nb)


def _launch(iq, ik, cfg, mode, out_v, out_i, fp8, p):
    B, Hkv, Nq, Di = iq.shape
    Nk = ik.shape[2]
    scale = cfg.index_softmax_scale(Di)
    descale = iq  # read only when fp8
    if fp8:
        (iq, dq), (ik, dk) = _to_fp8(iq), _to_fp8(ik)
        descale = dq * dk
    precision = "ieee" if iq.dtype == torch.float32 else "tf32"
    upcast = _interpreting() and iq.dtype == torch.bfloat16
    n_bg, n_kc = B * p["n_gc"], p["n_kc"]
    groups = p["groups"]

    def grid(meta):
        n = triton.cdiv(Nq, meta["BLOCK_M"] // groups) * n_bg * n_kc
        if n >= 2**31:
            raise ValueError(f"{n} programs exceed the CUDA grid limit; split the batch or the query chunk.")
        return (n,)

    _indexer_kernel[grid](
        iq, ik, out_v, out_i, descale,
        iq.stride(0), iq.stride(1), iq.stride(2),
        ik.stride(0), ik.stride(1), ik.stride(2),
        Nq, Nk, Hkv, p["n_gc"], n_bg, n_kc, p["nb"], cfg.top_k, cfg.init_blocks, cfg.local_blocks, scale,
        min(triton.next_power_of_2(Nq), 4096),
        BS=cfg.block_size, DI=Di, BLOCK_N=p["block_n"], NSUB=p["nsub"],
        MASK_COLS=p["block_n"] * p["nsub"] != cfg.block_size, GROUPS=groups, SHARED_IK=p["shared"],
        K_PAD=max(2, triton.next_power_of_2(cfg.top_k)), MODE=mode, WRITE_V=out_v is not None and mode == MODE_TOPK,
        FP8=fp8, PRECISION=precision, UPCAST=upcast,
    )


def _select_blocks(iq, ik, cfg, *, fp8=False, key_chunks=None):
    """select_blocks with the key-chunk count exposed (tests force the split and the merge)."""
    iq, ik = _check(iq, ik, cfg, fp8)
    B, Hkv, Nq, _ = iq.shape
    p = _plan(iq, ik, cfg, key_chunks)
    K, n_kc = cfg.top_k, p["n_kc"]
    out = _alloc((B, Hkv, Nq, K), dtype=torch.int32, device=iq.device)
    if n_kc == 1:
        _launch(iq, ik, cfg, MODE_TOPK, None, out, fp8, p)
        return out
    pv = _alloc((B, Hkv, Nq, n_kc, K), dtype=torch.float32, device=iq.device)  # per-chunk top-k lists
    pi = _alloc((B, Hkv, Nq, n_kc, K), dtype=torch.int32, device=iq.device)
    _launch(iq, ik, cfg, MODE_TOPK, pv, pi, fp8, p)
    n_cand = n_kc * K
    _merge_kernel[(B * Hkv * Nq,)](pv, pi, out, n_cand, K, CHUNK=min(4096, triton.next_power_of_2(n_cand)),
                                   K_PAD=max(2, triton.next_power_of_2(K)))
    return out


def _block_scores(iq, ik, cfg, *, fp8=False, key_chunks=None):
    iq, ik = _check(iq, ik, cfg, fp8)
    B, Hkv, Nq, _ = iq.shape
    p = _plan(iq, ik, cfg, key_chunks)
    out = _alloc((B, Hkv, Nq, p["nb"]), dtype=torch.float32, device=iq.device)
    _launch(iq, ik, cfg, MODE_SCORES, out, None, fp8, p)
    return out


def selection_agreement(idx_a: torch.Tensor, idx_b: torch.Tensor) -> float:
    """Share of selected blocks two selections have in common, compared as sets per row.

    idx_a, idx_b: int [..., top_k], -1 padded (e.g. [B, Hkv, Nq, top_k]). Returns
    sum over rows |A & B| / sum over rows max(|A|, |B|), in [0, 1]; 1.0 when both select nothing.
    Runs in row chunks, so it is fine at 1M tokens.
    """
    if idx_a.shape != idx_b.shape:
        raise ValueError(f"selections differ in shape: {tuple(idx_a.shape)} vs {tuple(idx_b.shape)}; compare "
                         f"selections of the same rows and top_k.")
    a = idx_a.reshape(-1, idx_a.shape[-1])
    b = idx_b.reshape(-1, idx_b.shape[-1]).to(a.device)
    common = total = 0
    for r0 in range(0, a.shape[0], 1 << 16):
        ra, rb = a[r0:r0 + (1 << 16)].long(), b[r0:r0 + (1 << 16)].long()
        hit = ((ra[:, :, None] == rb[:, None, :]) & (ra[:, :, None] >= 0)).any(-1)  # [R, K]
        common += int(hit.sum())
        total += int(torch.maximum((ra >= 0).sum(-1), (rb >= 0).sum(-1)).sum())
    return 1.0 if total == 0 else common / total


def block_scores(iq: torch.Tensor, ik: torch.Tensor, cfg, *, fp8: bool = False) -> torch.Tensor:
    """Index score of every key block (debug/tests): float32 ``[B, Hkv, Nq, n_blocks]``.

    iq ``[B, Hkv, Nq, Di]``, ik ``[B, Hik, Nk, Di]`` (Hik 1 or Hkv); n_blocks = ceil(Nk / block_size).
    score = max over the query's visible keys of the block of iq . ik * index_scale; -inf where the
    block has no visible key; -FLT_MAX where it is visible but every dot product is -inf or NaN (the
    reference writes -1e308 there). No forcing. This writes the full [Nq, n_blocks] matrix:
    use it at debug sizes; :func:`select_blocks` never materialises it.
    """
    return _block_scores(iq, ik, cfg, fp8=fp8)


def select_blocks(iq: torch.Tensor, ik: torch.Tensor, cfg, *, fp8: bool = False) -> torch.Tensor:
    """The top_k key blocks per (query token, KV group): int32 ``[B, Hkv, Nq, top_k]``, -1 padded.

    Args:
        iq: index queries ``[B, Hkv, Nq, Di]`` fp16/bf16/fp32, Di in 16..256 (power of two).
        ik: index keys ``[B, Hik, Nk, Di]``, Hik = 1 (shared by all groups) or Hkv; Nq <= Nk and the
            queries are the last Nq key positions (causal, bottom-right aligned).
        cfg: MSAConfig (block_size, top_k, init_blocks, local_blocks, index_scale).
        fp8: run the dot on float8_e4m3fn copies of iq and ik (one scale per tensor). Faster on
            Hopper, approximate (see selection_agreement); non-finite inputs are not supported there.
    Returns:
        Block numbers in unspecified order. Forced blocks (init + local window, when visible) are
        always present; fewer than top_k visible blocks leave -1 slots.
    """
    return _select_blocks(iq, ik, cfg, fp8=fp8)
