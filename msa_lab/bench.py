"""`msa-lab bench`: the MSA kernels vs dense SDPA and FlexAttention, on one GPU, in one process.

    python -m msa_lab.bench                          # full run on an H100/H200
    python -m msa_lab.bench --quick                  # m3 at 8K/32K, decode at 32K: a smoke run
    python -m msa_lab.bench --budget-s 300 --out data/bench/

Rows (bf16, batch 1 unless said; ms is the median of repeats, warm-up excluded):
  prefill  dense SDPA causal, MSA indexer (bf16 and fp8 + selection agreement), MSA sparse attention,
           MSA total (indexer + attention), FlexAttention with the same selection, a correctness check
  decode   dense SDPA vs MSA (indexer, sparse attention, total) for 1 and 16 new tokens, batch 1 and 8
  device   copy bandwidth and bf16 matmul TFLOP/s: the ceilings the ratios are read against
  memory   peak allocated for one m3 layer prefilled with MSA at 1M (KV cache included)
Every row is wrapped: an error or OOM is recorded in that row and the run goes on; --budget-s skips
rows that would not finish in time (with the reason). Results go to data/bench/<date>-<card>.json
after every row, so a killed run still leaves its rows. The pure helpers (FLOP counting, the
FlexAttention mask, JSON, tables) run on CPU and are tested in tests/test_bench.py.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import signal
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .config import MSAConfig

SCHEMA = "msa-lab-bench/1"
KILO, MEGA = 1024, 1024 * 1024
DEFAULT_LENGTHS = "8K,32K,128K,512K,1M"
DEFAULT_DECODE_LENGTHS = "128K,1M"
STATUSES = ("ok", "error", "skipped")
# Row names and what they time. Their FLOPs count only visible (causal) work; see the *_flops helpers.
ROW_NAMES = {
    "copy": "device-to-device copy (GB/s counts bytes read + written)",
    "matmul": "bf16 matmul 8192^3, random data",
    "dense_sdpa": "torch SDPA, causal, GQA (prefill)",
    "msa_indexer": "MSA indexer alone: block selection, bf16",
    "msa_indexer_fp8": "MSA indexer alone, fp8 scores",
    "msa_sparse_attn": "MSA sparse attention alone (given idx)",
    "msa_total": "MSA total: indexer + sparse attention (msa_lab.kernels.msa_attention)",
    "flex_attention": "FlexAttention (torch.compile) with the same per-token selection",
    "check": "MSA total vs msa_lab.torch_path on the last query rows",
    "dense_decode": "torch SDPA decode: new tokens vs the whole KV cache",
    "msa_decode_indexer": "MSA decode indexer alone (GB/s = index-key bytes read)",
    "msa_decode_attn": "MSA decode sparse attention alone",
    "msa_decode": "MSA decode total: indexer + sparse attention",
    "dense_decode_graph": "torch SDPA decode (fastest way) captured in a CUDA graph: replay time, no launch overhead",
    "msa_decode_graph": "MSA decode step (indexer + sparse attention kernels) captured in a CUDA graph: replay time",
    "memory": "peak allocated, one layer prefilled with MSA (KV cache included)",
}
# (key, what, goal, op). The targets of the issue, read from the rows by derive_targets.
TARGETS = (
    ("prefill_speedup", "prefill: dense SDPA ms / MSA total ms", 20.0, ">="),
    ("sparse_vs_dense_tflops", "MSA sparse attention TFLOP/s / dense SDPA TFLOP/s", 0.70, ">="),
    ("indexer_vs_dense_tflops", "MSA indexer TFLOP/s / dense SDPA TFLOP/s", 0.50, ">="),
    ("msa_vs_flex", "FlexAttention ms / MSA sparse attention ms (same selection)", 2.0, ">="),
    ("decode_speedup_b1", "decode, batch 1, 1 token: dense ms / MSA ms", 7.6, ">="),
    ("decode_speedup_b8", "decode, batch 8, 1 token: dense ms / MSA ms", 7.6, ">="),
    ("index_key_bw_vs_copy", "decode indexer index-key GB/s / copy GB/s", 0.70, ">="),
    ("memory_peak_gb", "peak GB, one m3 layer prefilled with MSA (KV cache included)", 80.0, "<="),
)
TARGET_LENGTH = MEGA  # the targets are stated at 1M tokens
FLEX_OPT_IN = ("not run: FlexAttention is opt-in (--flex): it compiles per shape and takes seconds per repeat "
               "(3.2 s at 128K on an H100); its first run crashed the CUDA context "
               "(data/bench/logs/2026-11-27-h100-flex-crash.log), the fixed mask has run at 32K and 128K")


# ============================================================================ units
def parse_length(text: str) -> int:
    """'8K' -> 8192, '1M' -> 1048576, '4096' -> 4096 (K = 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", str(text))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"bad length {text!r}: write a positive number of tokens such as 4096, 8K or 1M (K = 1024).")
    return int(m.group(1)) * {"": 1, "k": KILO, "m": MEGA}[m.group(2).lower()]


def parse_lengths(text: str) -> list[int]:
    """'8K,32K' -> [8192, 32768]; an empty string -> []."""
    return [parse_length(t) for t in str(text).split(",") if t.strip()]


def fmt_length(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit, size in (("M", MEGA), ("K", KILO)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def slugify(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


# ============================================================================ FLOP and byte counting
def causal_pairs(n_q: int, n_k: int) -> int:
    """Visible (query, key) pairs of causal bottom-right-aligned attention: query i sees Nk - Nq + i + 1 keys."""
    if not (0 < n_q <= n_k):
        raise ValueError(f"causal_pairs needs 0 < n_q <= n_k (queries are the last n_q keys), got n_q={n_q}, n_k={n_k}")
    return n_q * (n_k - n_q) + n_q * (n_q + 1) // 2


def dense_flops(n_q: int, n_k: int, head_dim: int, n_heads: int, batch: int = 1) -> int:
    """Causal attention FLOPs (QK^T and PV, 2 each per pair and dim): 4*D*Hq*pairs.

    For Nq == Nk this is 2*N*(N+1)*D*Hq, the usual 2*N^2*D*Hq ("half of 4*N^2*D*Hq") plus the diagonal.
    """
    return 4 * head_dim * n_heads * batch * causal_pairs(n_q, n_k)


def indexer_flops(n_q: int, n_k: int, index_dim: int, n_kv_heads: int, batch: int = 1) -> int:
    """Index-branch FLOPs: one causal QK^T per KV group (2*Di per visible pair); max/top-k not counted."""
    return 2 * index_dim * n_kv_heads * batch * causal_pairs(n_q, n_k)


def attended_keys(idx: torch.Tensor, n_k: int, block_size: int, chunk: int = 1 << 16) -> int:
    """Visible keys inside the selected blocks, summed over (batch, KV group, query).

    idx: int32 ``[B, Hkv, Nq, top_k]``, -1 padded; query i sits at Nk - Nq + i. Counted in query chunks
    so a 1M-token idx needs no full int64 copy.
    """
    if idx.dim() != 4:
        raise ValueError(f"idx must be [B, Hkv, Nq, top_k], got shape {tuple(idx.shape)}")
    n_q = idx.shape[2]
    total = 0
    for s0 in range(0, n_q, chunk):
        s1 = min(n_q, s0 + chunk)
        blk = idx[:, :, s0:s1].long()
        pos = torch.arange(n_k - n_q + s0, n_k - n_q + s1, device=idx.device)[None, None, :, None]
        start = blk * block_size
        # keys start .. min(start + bs, pos + 1) - 1 are visible; pos + 1 <= Nk covers a short last block
        n = (torch.minimum(pos + 1, start + block_size) - start).clamp(min=0)
        total += int(torch.where(blk >= 0, n, torch.zeros_like(n)).sum())
    return total


def sparse_flops(n_attended: int, head_dim: int, group_size: int) -> int:
    """Sparse attention FLOPs: 4*D per (query head, attended key); each group's keys serve its g heads."""
    return 4 * head_dim * group_size * n_attended


def selection_overlap(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 15) -> float:
    """Fraction of a's selected blocks (entries >= 0) that b selects for the same (batch, group, query).

    a, b: ``[B, Hkv, Nq, top_k]`` (orders may differ). 1.0 when a selects nothing.
    """
    if a.shape[:3] != b.shape[:3]:
        raise ValueError(f"selections differ in [B, Hkv, Nq]: {tuple(a.shape)} vs {tuple(b.shape)}")
    hit = total = 0
    for s0 in range(0, a.shape[2], chunk):
        x, y = a[:, :, s0:s0 + chunk], b[:, :, s0:s0 + chunk]
        valid = x >= 0
        found = (x[..., :, None] == y[..., None, :]).any(-1) & valid
        hit += int(found.sum())
        total += int(valid.sum())
    return hit / total if total else 1.0


# ============================================================================ FlexAttention mask
def selection_table(idx: torch.Tensor, n_blocks: int, chunk: int = 1 << 14) -> torch.Tensor:
    """Per-token selection as a lookup table: bool ``[B, Hkv, Nq, n_blocks]``, True where selected.

    Built in query chunks with a spare column for the -1 padding, so no full int64 copy of idx.
    """
    B, H, n_q, _ = idx.shape
    table = torch.zeros(B, H, n_q, n_blocks, dtype=torch.bool, device=idx.device)
    for s0 in range(0, n_q, chunk):
        s1 = min(n_q, s0 + chunk)
        blk = idx[:, :, s0:s1].long()
        if bool((blk >= n_blocks).any()):
            raise ValueError(f"idx holds a block >= n_blocks={n_blocks}; it does not belong to these keys.")
        tmp = torch.zeros(B, H, s1 - s0, n_blocks + 1, dtype=torch.bool, device=idx.device)
        tmp.scatter_(-1, torch.where(blk < 0, n_blocks, blk), True)
        table[:, :, s0:s1] = tmp[..., :n_blocks]
    return table


def selection_table_bytes(batch: int, n_kv_heads: int, n_q: int, n_k: int, block_size: int) -> int:
    return batch * n_kv_heads * n_q * (-(-n_k // block_size))


# Compiled flex inlines the mask_mod into its Triton kernel with int32 index arithmetic: a lookup
# table of 2**31 elements or more wraps to negative offsets (an illegal memory access, or silently a
# wrong mask). 512K tokens with 4 KV groups and blocks of 128 is 2**33 elements: such lengths do not fit.
FLEX_MAX_TABLE_ELEMENTS = 2 ** 31 - 1


@dataclass
class FlexBlocks:
    """Block lists of a FlexAttention BlockMask, per KV group, in torch's own layout (as
    ``create_block_mask`` makes them): counts ``int32 [B, Hkv, n_q_blocks]``, indices
    ``int32 [B, Hkv, n_q_blocks, n_kv_blocks]`` (full width), listed blocks first in ascending order,
    then every other block, so each entry is a valid block index.

    partial blocks run the mask_mod; full blocks (every row of the query block selected the key block
    and sees all of it) skip it. ``union_blocks`` counts (group, query block, key block) tiles computed.
    """
    kv_num: torch.Tensor
    kv_idx: torch.Tensor
    full_num: torch.Tensor
    full_idx: torch.Tensor
    q_block: int
    union_blocks: int


def _block_list(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [B, H, Qb, KVb] -> (count [B, H, Qb], indices [B, H, Qb, KVb]) int32, contiguous.

    Full width on purpose: torch's BlockMask takes kv_indices.shape[-1] as the number of KV blocks
    (to_dense, the transposed lists of from_kv_blocks, _adjust, flex decoding's MAX_KV_IDX); a list
    cut to the longest row makes those read and write past the row (on the GPU: illegal address).
    """
    num = mask.sum(-1, dtype=torch.int32)
    order = torch.argsort(mask.to(torch.int8), dim=-1, descending=True, stable=True)
    return num.contiguous(), order.to(torch.int32).contiguous()


def flex_blocks(idx: torch.Tensor, n_k: int, block_size: int, q_block: int = 128) -> FlexBlocks:
    """The union of the per-token selections of each query block (q_block rows), split partial/full.

    idx: int32 ``[B, Hkv, Nq, top_k]``, -1 padded, query i at Nk - Nq + i. Raises ValueError on an
    entry outside [-1, n_blocks) (it would become an out-of-range block index in the BlockMask).
    """
    B, H, n_q, K = idx.shape
    nb = -(-n_k // block_size)
    nqb = -(-n_q // q_block)
    counts = torch.zeros(B, H, nqb * (nb + 1), dtype=torch.int32, device=idx.device)
    step = 1 << 16  # query rows per chunk: bounds the int64 copy of idx
    for s0 in range(0, n_q, step):
        s1 = min(n_q, s0 + step)
        blk = idx[:, :, s0:s1].long()
        if blk.numel() and (int(blk.min()) < -1 or int(blk.max()) >= nb):
            raise ValueError(f"idx holds block {int(blk.min()) if int(blk.min()) < -1 else int(blk.max())}, outside "
                             f"[-1, {nb}) for {n_k} keys in blocks of {block_size}; pass the selection of these keys.")
        qb = (torch.arange(s0, s1, device=idx.device) // q_block)[None, None, :, None]
        flat = qb * (nb + 1) + torch.where(blk < 0, nb, blk)  # padding lands in a spare column
        counts.scatter_add_(-1, flat.reshape(B, H, -1), torch.ones_like(flat, dtype=torch.int32).reshape(B, H, -1))
    counts = counts.view(B, H, nqb, nb + 1)[..., :nb]
    q_start = torch.arange(nqb, device=idx.device) * q_block
    rows = (n_q - q_start).clamp(max=q_block)  # rows in each query block (the last may be short)
    first_pos = n_k - n_q + q_start  # position of each query block's first row
    last_key = (torch.arange(1, nb + 1, device=idx.device) * block_size).clamp(max=n_k) - 1
    fully_visible = last_key[None, :] <= first_pos[:, None]  # [nqb, nb]
    full = (counts == rows[:, None]) & fully_visible
    partial = (counts > 0) & ~full
    kv_num, kv_idx = _block_list(partial)
    full_num, full_idx = _block_list(full)
    return FlexBlocks(kv_num, kv_idx, full_num, full_idx, q_block, int((counts > 0).sum()))


def flex_mask_mod(table: torch.Tensor, group_size: int, block_size: int, offset: int):
    """mask_mod(b, h, q_idx, kv_idx): query head h's group selected kv_idx's block, and the key is visible.

    table: bool ``[B, Hkv, Nq, n_blocks]`` from :func:`selection_table`; offset = Nk - Nq.
    Compiled flex (and create_block_mask) also evaluate the mask_mod on the padding of a length that
    is not a multiple of the block size, so the table reads are clamped into range; the causal test
    on the unclamped indices (and flex's own bound on the padding) keeps those positions masked.
    """
    if table.numel() > FLEX_MAX_TABLE_ELEMENTS:
        raise ValueError(f"does not fit: the selection table has {table.numel()} elements, over the "
                         f"{FLEX_MAX_TABLE_ELEMENTS} that compiled flex's int32 indexing reaches; use a shorter length.")
    n_q, n_blocks = table.shape[2], table.shape[3]

    def mask_mod(b, h, q_idx, kv_idx):
        row = q_idx.clamp(0, n_q - 1)
        blk = (kv_idx // block_size).clamp(0, n_blocks - 1)
        return table[b, h // group_size, row, blk] & (kv_idx <= q_idx + offset)

    return mask_mod


def check_block_mask(bm, n_q: int, n_k: int, n_heads: int, batch: int) -> None:
    """Raise ValueError naming the first way bm breaks torch's BlockMask layout for these shapes.

    Run before a compiled flex call: a malformed mask is then an error in one row, not an illegal
    memory access that takes the CUDA context (and every later row) with it.
    """
    qb, kb = bm.BLOCK_SIZE
    want = (-(-n_q // qb), -(-n_k // kb))
    if tuple(bm.seq_lengths) != (n_q, n_k):
        raise ValueError(f"BlockMask seq_lengths {tuple(bm.seq_lengths)} != (Nq, Nk) = {(n_q, n_k)}")
    lists = [("kv", bm.kv_num_blocks, bm.kv_indices)]
    if bm.full_kv_num_blocks is not None:
        lists.append(("full_kv", bm.full_kv_num_blocks, bm.full_kv_indices))
    for name, num, ind in lists:
        if num.dtype != torch.int32 or ind.dtype != torch.int32:
            raise ValueError(f"{name} lists must be int32, got {num.dtype} / {ind.dtype}")
        if not (num.is_contiguous() and ind.is_contiguous()):
            raise ValueError(f"{name} lists must be contiguous")
        if ind.dim() != 4 or tuple(ind.shape[2:]) != want or tuple(num.shape) != tuple(ind.shape[:3]):
            raise ValueError(f"{name}_indices shape {tuple(ind.shape)} / num {tuple(num.shape)}: need "
                             f"[B, H, {want[0]}, {want[1]}] (query blocks, KV blocks) and [B, H, {want[0]}]")
        if ind.shape[0] not in (1, batch) or ind.shape[1] not in (1, n_heads):
            raise ValueError(f"{name} lists have B, H = {tuple(ind.shape[:2])}; need 1 or {batch}, 1 or {n_heads}")
        if ind.numel() and (int(ind.min()) < 0 or int(ind.max()) >= want[1]):
            raise ValueError(f"{name}_indices hold blocks outside [0, {want[1]}): [{int(ind.min())}, {int(ind.max())}]")
        if num.numel() and (int(num.min()) < 0 or int(num.max()) > want[1]):
            raise ValueError(f"{name}_num_blocks outside [0, {want[1]}]: [{int(num.min())}, {int(num.max())}]")
    if len(lists) == 2:  # a tile in both lists would be attended twice
        dense = [torch.zeros(*ind.shape[:3], want[1] + 1, dtype=torch.bool, device=ind.device)
                 .scatter_(-1, torch.where(torch.arange(want[1], device=ind.device) < num[..., None],
                                           ind.long(), want[1]), True)[..., :want[1]] for _, num, ind in lists]
        if bool((dense[0] & dense[1]).any()):
            raise ValueError("a KV block is listed both as partial and as full for one query block")


def flex_block_mask(idx: torch.Tensor, n_k: int, cfg: MSAConfig, n_heads: int, q_block: int = 128):
    """(BlockMask, table, FlexBlocks) expressing the per-token selection idx for flex_attention.

    The block lists are repeated per query head: flex looks block lists up by query head modulo the
    BlockMask's head count, which would pair head h with group h // (Hq // Hkv) only by accident.
    The result is what ``create_block_mask(mask_mod, B, n_heads, Nq, Nk, BLOCK_SIZE=(q_block,
    block_size))`` builds (tests/test_bench.py checks it), without evaluating the mask token by token.
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, H, n_q, _ = idx.shape
    if n_heads % H:
        raise ValueError(f"n_heads={n_heads} is not a multiple of the {H} KV groups in idx")
    g = n_heads // H
    elements = selection_table_bytes(B, H, n_q, n_k, cfg.block_size)
    if elements > FLEX_MAX_TABLE_ELEMENTS:
        raise ValueError(f"does not fit: the selection table would have {elements} elements, over the "
                         f"{FLEX_MAX_TABLE_ELEMENTS} that compiled flex's int32 indexing reaches; use a shorter length.")
    table = selection_table(idx, -(-n_k // cfg.block_size))
    fb = flex_blocks(idx, n_k, cfg.block_size, q_block)
    rep = (lambda t: t.repeat_interleave(g, dim=1).contiguous()) if g > 1 else (lambda t: t)
    kwargs = dict(BLOCK_SIZE=(q_block, cfg.block_size), mask_mod=flex_mask_mod(table, g, cfg.block_size, n_k - n_q),
                  seq_lengths=(n_q, n_k))
    try:  # forward only: skip the transposed (backward) lists where this torch allows it
        bm = BlockMask.from_kv_blocks(rep(fb.kv_num), rep(fb.kv_idx), rep(fb.full_num), rep(fb.full_idx),
                                      compute_q_blocks=False, **kwargs)
    except TypeError:
        bm = BlockMask.from_kv_blocks(rep(fb.kv_num), rep(fb.kv_idx), rep(fb.full_num), rep(fb.full_idx), **kwargs)
    return bm, table, fb


def flex_mask_bytes(batch: int, n_kv_heads: int, n_heads: int, n_q: int, n_k: int, block_size: int,
                    q_block: int = 128) -> int:
    """Bytes of the Flex mask: the bool table plus the int32 partial and full lists repeated per query head."""
    nqb, nkb = -(-n_q // q_block), -(-n_k // block_size)
    return selection_table_bytes(batch, n_kv_heads, n_q, n_k, block_size) + 2 * 4 * batch * n_heads * nqb * (nkb + 1)


# ============================================================================ results
@dataclass
class Row:
    """One measurement. ms: median of repeats; flops/bytes: the useful work, for TFLOP/s and GB/s."""
    name: str
    mode: str  # device | prefill | decode | memory | check
    shape: Optional[str] = None
    n: Optional[int] = None  # context length Nk
    nq: Optional[int] = None  # query tokens
    batch: int = 1
    status: str = "ok"  # ok | error | skipped
    ms: Optional[float] = None
    tflops: Optional[float] = None
    gbps: Optional[float] = None
    flops: Optional[int] = None
    bytes: Optional[int] = None
    reps: Optional[int] = None
    first_ms: Optional[float] = None  # the warm-up call (compile / autotune included), not in ms
    wall_s: Optional[float] = None
    notes: dict = field(default_factory=dict)
    error: Optional[str] = None

    def finish(self) -> "Row":
        if self.status == "ok" and self.ms:
            if self.flops:
                self.tflops = self.flops / self.ms / 1e9
            if self.bytes:
                self.gbps = self.bytes / self.ms / 1e6
        return self


def find_row(rows: list[dict], name: str, shape=None, n=None, batch=None, nq=None) -> Optional[dict]:
    """The ok row matching the given fields; with n=None, the one with the largest n."""
    hits = [r for r in rows if r["name"] == name and r["status"] == "ok"
            and (shape is None or r.get("shape") == shape) and (n is None or r.get("n") == n)
            and (batch is None or r.get("batch") == batch) and (nq is None or r.get("nq") == nq)]
    return max(hits, key=lambda r: r.get("n") or 0) if hits else None


def _ratio(a: Optional[dict], b: Optional[dict], key: str) -> Optional[float]:
    if a is None or b is None or not a.get(key) or not b.get(key):
        return None
    return a[key] / b[key]


def derive_targets(rows: list[dict], shape: str = "m3") -> dict:
    """The issue's targets from the rows: {key: {value, goal, op, met, n, what, detail}}.

    Each is read at 1M tokens for `shape`; when a row is missing there, at the largest length both
    rows have, with at_target_length False (so a --quick run never passes for a 1M claim).
    """
    out = {}

    def common_n(*names, **kw):
        sets = [{r["n"] for r in rows if r["name"] == nm and r["status"] == "ok" and r.get("shape") == shape
                 and all(r.get(k) == v for k, v in kw.items())} for nm in names]
        both = set.intersection(*sets) if sets else set()
        return TARGET_LENGTH if TARGET_LENGTH in both else (max(both) if both else None)

    def put(key, value, n, detail=""):
        _, what, goal, op = next(t for t in TARGETS if t[0] == key)
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        out[key] = dict(value=value, goal=goal, op=op, met=met, n=n, at_target_length=n == TARGET_LENGTH,
                        what=what, detail=detail)

    n = common_n("dense_sdpa", "msa_total")
    dense = find_row(rows, "dense_sdpa", shape, n) if n else None
    put("prefill_speedup", _ratio(dense, find_row(rows, "msa_total", shape, n) if n else None, "ms"), n)
    n = common_n("dense_sdpa", "msa_sparse_attn")
    put("sparse_vs_dense_tflops", _ratio(find_row(rows, "msa_sparse_attn", shape, n) if n else None,
                                         find_row(rows, "dense_sdpa", shape, n) if n else None, "tflops"), n)
    n = common_n("dense_sdpa", "msa_indexer")
    put("indexer_vs_dense_tflops", _ratio(find_row(rows, "msa_indexer", shape, n) if n else None,
                                          find_row(rows, "dense_sdpa", shape, n) if n else None, "tflops"), n)
    n = common_n("flex_attention", "msa_sparse_attn")
    put("msa_vs_flex", _ratio(find_row(rows, "flex_attention", shape, n) if n else None,
                              find_row(rows, "msa_sparse_attn", shape, n) if n else None, "ms"), n,
        "largest length Flex ran at (its mask must fit)")
    for b in (1, 8):
        n = common_n("dense_decode", "msa_decode", batch=b, nq=1)
        put(f"decode_speedup_b{b}", _ratio(find_row(rows, "dense_decode", shape, n, b, 1) if n else None,
                                          find_row(rows, "msa_decode", shape, n, b, 1) if n else None, "ms"), n)
    copy = find_row(rows, "copy")
    batches = sorted({r["batch"] for r in rows if r["name"] == "msa_decode_indexer" and r["status"] == "ok"
                      and r.get("shape") == shape and r.get("nq") == 1})
    b = batches[-1] if batches else None
    n = common_n("msa_decode_indexer", batch=b, nq=1) if b else None
    idx_row = find_row(rows, "msa_decode_indexer", shape, n, b, 1) if n else None
    put("index_key_bw_vs_copy", _ratio(idx_row, copy, "gbps"), n, f"batch {b}" if b else "")
    mem = find_row(rows, "memory", shape)
    put("memory_peak_gb", mem["bytes"] / 1e9 if mem and mem.get("bytes") else None, mem["n"] if mem else None,
        "GB = 1e9 bytes, torch.cuda.max_memory_allocated")
    return out


def validate_results(d: dict) -> None:
    """Raise ValueError naming the first thing that breaks the results schema."""
    if not isinstance(d, dict):
        raise ValueError(f"results must be a JSON object, got {type(d).__name__}")
    if d.get("schema") != SCHEMA:
        raise ValueError(f"results schema is {d.get('schema')!r}, expected {SCHEMA!r}; "
                         f"was it written by msa_lab.bench?")
    for key in ("date", "device", "versions", "rows", "targets", "run"):
        if key not in d:
            raise ValueError(f"results lack the {key!r} field")
    if "name" not in d["device"]:
        raise ValueError("results.device lacks 'name'")
    for i, r in enumerate(d["rows"]):
        for key in ("name", "mode", "status"):
            if key not in r:
                raise ValueError(f"row {i} lacks {key!r}: {r}")
        if r["status"] not in STATUSES:
            raise ValueError(f"row {i} ({r['name']}) has status {r['status']!r}; expected one of {STATUSES}")
        if r["status"] == "ok" and r["name"] != "memory" and not isinstance(r.get("ms"), (int, float)):
            raise ValueError(f"row {i} ({r['name']}) is ok but has no ms")
        if r["status"] != "ok" and not r.get("error"):
            raise ValueError(f"row {i} ({r['name']}) is {r['status']} but gives no reason in 'error'")


def write_json(results: dict, path: Path) -> Path:
    """Validate, then write atomically (a killed run never leaves half a file)."""
    validate_results(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load_json(path) -> dict:
    d = json.loads(Path(path).read_text())
    validate_results(d)
    return d


def merge_results(parts: list[dict]) -> dict:
    """One results dict from several runs on one card and one software stack (e.g. a device call per shape)."""
    if not parts:
        raise ValueError("merge_results needs at least one results dict")
    for p in parts:
        validate_results(p)
    for key in ("device", "versions"):
        seen = {json.dumps(p[key], sort_keys=True) for p in parts}
        if len(seen) > 1:
            raise ValueError(f"these results differ in {key} ({' vs '.join(sorted(seen))}); timings only compare "
                             f"on one card with one software stack, so they are not merged.")
    rows = [r for p in parts for r in p["rows"]]
    run = dict(merged=[p["run"] for p in parts], elapsed_s=sum(p["run"].get("elapsed_s") or 0 for p in parts),
               finished=all(p["run"].get("finished") for p in parts))
    return dict(parts[0], date=max(p["date"] for p in parts), run=run, rows=rows, targets=derive_targets(rows),
                env=_merged_env(parts))


def _autotune_off(p: dict) -> bool:
    return (p.get("env") or {}).get("MSA_LAB_AUTOTUNE") == "0"


def _merged_env(parts: list[dict]) -> dict:
    """One env for merged runs: MSA_LAB_AUTOTUNE if all agree, else "mixed" plus the modes run without it."""
    flags = {_autotune_off(p) for p in parts}
    env = dict(parts[0].get("env") or {})
    if len(flags) > 1:
        # the tables show the last ok row of each key (_any_row): name the modes of those shown from
        # untuned runs; device rows (copy, matmul) run no MSA kernel, so the flag does not touch them
        shown = {_row_key(r): (r["mode"], _autotune_off(p)) for p in parts for r in p["rows"] if r["status"] == "ok"}
        env["MSA_LAB_AUTOTUNE"] = "mixed"
        env["autotune_off_modes"] = sorted({mode for mode, off in shown.values() if off} - {"device"})
    return env


# ============================================================================ tables
def _num(x: Optional[float], unit: str = "") -> str:
    if x is None:
        return "-"
    s = f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return s + unit


def _cell(r: Optional[dict], main: str = "ms", extra: Optional[str] = None, extra_unit: str = "") -> str:
    """'12.3 (456)' for an ok row, 'skip'/'error' otherwise, '-' when it was never planned."""
    if r is None:
        return "-"
    if r["status"] != "ok":
        return "does not fit" if (r.get("error") or "").startswith("does not fit") else r["status"]
    s = _num(r.get(main))
    if extra and r.get(extra) is not None:
        s += f" ({_num(r[extra], extra_unit)})"
    return s


def _check_cell(r: Optional[dict]) -> str:
    if r is None:
        return "-"
    if r["status"] == "ok":
        return "pass"
    return "FAIL" if (r.get("error") or "").startswith("AssertionError") else r["status"]


def _any_row(rows, name, **kw) -> Optional[dict]:
    hits = [r for r in rows if r["name"] == name and all(r.get(k) == v for k, v in kw.items())]
    ok = [r for r in hits if r["status"] == "ok"]
    return (ok or hits or [None])[-1]


def autotune_note(d: dict) -> str:
    """'' with autotuning on (or unrecorded); else which rows ran with MSA_LAB_AUTOTUNE=0 (one kernel config)."""
    env = d.get("env") or {}
    if env.get("MSA_LAB_AUTOTUNE") == "0":
        return "MSA_LAB_AUTOTUNE=0 (one kernel config, no autotuning)"
    modes = env.get("autotune_off_modes")
    if modes:
        return f"MSA_LAB_AUTOTUNE=0 (one kernel config) for the {', '.join(modes)} rows; autotuned elsewhere"
    return ""


def caption(d: dict) -> str:
    v, dev = d["versions"], d["device"]
    note = autotune_note(d)
    return (f"{dev['name']} · torch {v.get('torch') or '?'} · triton {v.get('triton') or '?'} "
            f"· CUDA {v.get('cuda') or '?'}"
            f" · {d['date']}" + (f" · {note}" if note else ""))


def render_markdown(d: dict) -> str:
    """The README "Performance" section: prefill, decode, device and target tables in markdown."""
    rows = d["rows"]
    out = [f"Measured with `python -m msa_lab.bench` on {caption(d)}. bf16, batch 1 unless noted; ms = median "
           f"of repeats after warm-up; TFLOP/s count visible work only.", ""]
    prefill = sorted({(r["shape"], r["n"]) for r in rows if r["mode"] == "prefill"},
                     key=lambda t: (t[0] != "m3", t[0], t[1]))
    if prefill:
        out += ["| shape | N | dense SDPA ms (TFLOP/s) | indexer ms (TFLOP/s) | fp8 indexer ms (agree) "
                "| sparse attn ms (TFLOP/s) | MSA total ms | dense / MSA | Flex ms | check |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for shape, n in prefill:
            g = {nm: _any_row(rows, nm, shape=shape, n=n) for nm in
                 ("dense_sdpa", "msa_indexer", "msa_indexer_fp8", "msa_sparse_attn", "msa_total", "flex_attention")}
            fp8 = g["msa_indexer_fp8"]
            fp8_cell = _cell(fp8)
            if fp8 and fp8["status"] == "ok" and fp8["notes"].get("agreement") is not None:
                fp8_cell += f" ({fp8['notes']['agreement']:.3f})"
            speed = _ratio(g["dense_sdpa"] if g["dense_sdpa"] and g["dense_sdpa"]["status"] == "ok" else None,
                           g["msa_total"] if g["msa_total"] and g["msa_total"]["status"] == "ok" else None, "ms")
            out.append(f"| {shape} | {fmt_length(n)} | {_cell(g['dense_sdpa'], extra='tflops')} "
                       f"| {_cell(g['msa_indexer'], extra='tflops')} | {fp8_cell} "
                       f"| {_cell(g['msa_sparse_attn'], extra='tflops')} | {_cell(g['msa_total'])} "
                       f"| {_num(speed, 'x') if speed else '-'} | {_cell(g['flex_attention'])} "
                       f"| {_check_cell(_any_row(rows, 'check', shape=shape, n=n))} |")
        out.append("")
    decode = sorted({(r["shape"], r["n"], r["batch"], r["nq"]) for r in rows if r["mode"] == "decode"},
                    key=lambda t: (t[0] != "m3", t))
    if decode:
        out += ["| shape | N | batch | new tokens | dense ms (KV GB/s) | MSA ms | indexer ms (index-key GB/s) "
                "| sparse attn ms | dense / MSA | dense graph ms | MSA graph ms | graph dense / MSA |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for shape, n, b, nq in decode:
            kw = dict(shape=shape, n=n, batch=b, nq=nq)
            dn, ms = _any_row(rows, "dense_decode", **kw), _any_row(rows, "msa_decode", **kw)
            gdn, gms = _any_row(rows, "dense_decode_graph", **kw), _any_row(rows, "msa_decode_graph", **kw)
            ok = [x if x and x["status"] == "ok" else None for x in (dn, ms, gdn, gms)]
            speed, gspeed = _ratio(ok[0], ok[1], "ms"), _ratio(ok[2], ok[3], "ms")
            out.append(f"| {shape} | {fmt_length(n)} | {b} | {nq} | {_cell(dn, extra='gbps')} | {_cell(ms)} "
                       f"| {_cell(_any_row(rows, 'msa_decode_indexer', **kw), extra='gbps')} "
                       f"| {_cell(_any_row(rows, 'msa_decode_attn', **kw))} | {_num(speed, 'x') if speed else '-'} "
                       f"| {_cell(gdn)} | {_cell(gms)} | {_num(gspeed, 'x') if gspeed else '-'} |")
        out += ["", "Decode \"graph\" columns: one decode step captured in a CUDA graph and replayed (no launch or "
                "Python overhead), dense and MSA alike; the other columns launch eagerly.", ""]
    copy, mm, mem = _any_row(rows, "copy"), _any_row(rows, "matmul"), _any_row(rows, "memory")
    dev = []
    if copy:
        dev.append(f"copy {_num(copy.get('gbps'), ' GB/s') if copy['status'] == 'ok' else copy['status']}")
    if mm:
        dev.append(f"bf16 matmul {_num(mm.get('tflops'), ' TFLOP/s') if mm['status'] == 'ok' else mm['status']}")
    if mem:
        val = f"{mem['bytes'] / 1e9:.1f} GB" if mem["status"] == "ok" and mem.get("bytes") else mem["status"]
        dev.append(f"peak memory, one {mem.get('shape')} layer prefilled at {fmt_length(mem.get('n'))} with MSA: {val}")
    if dev:
        out += ["Device: " + "; ".join(dev) + ".", ""]
    out += render_targets(d)
    out += render_problems(rows)
    return "\n".join(out)


def _where(r: dict) -> str:
    parts = [r["name"], r.get("shape") or "", fmt_length(r.get("n")) if r.get("n") else ""]
    if r["mode"] == "decode":
        parts += [f"B={r['batch']}", f"Nq={r['nq']}"]
    return " ".join(p for p in parts if p)


def _row_key(r: dict) -> tuple:
    return tuple(r.get(k) for k in ("name", "mode", "shape", "n", "nq", "batch"))


def render_problems(rows: list[dict], width: int = 200) -> list[str]:
    """Rows not measured, grouped by reason (first line, cut to width for the table; the JSON has it all).

    A row skipped or failed in one run but measured in another (merged results) counts as measured."""
    groups: dict = {}
    measured = {_row_key(r) for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok" and _row_key(r) not in measured:  # merged runs: measured in another file
            reason = (r.get("error") or "").splitlines()[0] if r.get("error") else ""
            groups.setdefault((r["status"], reason), []).append(_where(r))
    if not groups:
        return []
    out = ["", "Not measured (full reasons in the JSON):"]
    for (status, reason), where in groups.items():
        cut = reason if len(reason) <= width else reason[:width] + " ..."
        out.append(f"- {status} ({len(where)}): {', '.join(where)}: {cut}")
    return out


def render_targets(d: dict) -> list[str]:
    out = ["| target | goal | measured | at | met |", "|---|---|---|---|---|"]
    for key, what, goal, op in TARGETS:
        t = d["targets"].get(key)
        if t is None:
            continue
        at = fmt_length(t["n"]) if t["n"] else "-"
        if t["n"] and not t["at_target_length"]:
            at += " (not 1M)"
        met = {True: "yes", False: "no", None: "-"}[t["met"]]
        out.append(f"| {what} | {op} {goal:g} | {_num(t['value'])} | {at} | {met} |")
    return out


def render_rows(d: dict) -> str:
    """Every row, one line each (the long format printed as the bench runs)."""
    out = ["| row | shape | N | B | Nq | ms | TFLOP/s | GB/s | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['name']} | {r.get('shape') or '-'} | {fmt_length(r.get('n'))} | {r.get('batch', 1)} "
                   f"| {fmt_length(r.get('nq'))} | {_num(r.get('ms'))} | {_num(r.get('tflops'))} "
                   f"| {_num(r.get('gbps'))} "
                   f"| {r['status']} |")
    return "\n".join(out)


def render_short(d: dict) -> str:
    return "\n".join([f"msa-lab bench: {caption(d)}", render_markdown(d)])


# ============================================================================ timing
@dataclass
class Timing:
    ms: float  # median of the timed runs
    runs_ms: list
    first_ms: float  # the warm-up call


def time_calls(fn: Callable[[int], object], device: torch.device, *, target_s: float = 1.0, min_reps: int = 2,
               max_reps: int = 100) -> Timing:
    """Median ms of fn(i) over repeats, after one warm-up call; i picks the rotating input set.

    One call (synchronised) sizes the repeats to about target_s; then the repeats are queued back to
    back, each between its own CUDA events, so the GPU never idles waiting for the launch of the next.
    """
    if device.type != "cuda":  # CPU: only for smoke runs of the bench's control flow
        t0 = time.perf_counter()
        fn(0)
        first = (time.perf_counter() - t0) * 1e3
        runs = []
        for i in range(max(1, min_reps)):
            t0 = time.perf_counter()
            fn(i + 1)
            runs.append((time.perf_counter() - t0) * 1e3)
        return Timing(statistics.median(runs), runs, first)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    fn(0)
    ev[1].record()
    torch.cuda.synchronize()
    first = ev[0].elapsed_time(ev[1])
    ev[0].record()
    fn(1)
    ev[1].record()
    torch.cuda.synchronize()
    est = ev[0].elapsed_time(ev[1])
    reps = int(min(max_reps, max(min_reps, target_s * 1e3 / max(est, 1e-3)))) - 1
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        fn(i + 2)
        ends[i].record()
    torch.cuda.synchronize()
    runs = [est] + [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return Timing(statistics.median(runs), runs, first)


def graphs_unsupported_reason(device: torch.device) -> Optional[str]:
    """None where CUDA graphs can be captured on device, else why not (the graph rows are then skipped)."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device (this run is on the CPU); the eager decode rows stand alone"
    return None


def capture_graph(fn: Callable[[], object], warmup: int = 2):
    """(graph, output): one call of fn captured into a torch.cuda.CUDAGraph.

    Warm-up calls run first on a side stream (Triton compiles and autotunes there, not in the
    capture). fn must not sync with the host (.item(), bool of a tensor, a CPU copy): capture raises.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    torch.cuda.synchronize()
    return graph, out


# ============================================================================ the run
def _err_text(e: BaseException, limit: int = 4000) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    frames = traceback.extract_tb(e.__traceback__)[-2:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    text = f"{text} [at {where}]" if where else text
    return text if len(text) <= limit else text[:limit] + f" ... [{len(text) - limit} more characters cut]"


class Interrupted(Exception):
    """SIGTERM from an outer timeout: stop, but write what was measured."""


class DeviceLost(Exception):
    """The CUDA context is gone (illegal address, device-side assert): no later row can run."""


def _device_lost(e: BaseException) -> bool:
    """True for errors that leave the CUDA context unusable (every later CUDA call fails the same way)."""
    text = str(e).lower()
    return type(e).__name__ == "AcceleratorError" or any(
        m in text for m in ("illegal memory access", "illegal address", "device-side assert",
                            "unspecified launch failure", "misaligned address"))


def _on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


def _kernels():
    import importlib

    return importlib.import_module("msa_lab.kernels")


def _rand(shape, *, device, dtype, gen):
    return torch.randn(shape, device=device, dtype=torch.float32 if dtype is None else dtype, generator=gen)


def make_inputs(cfg: MSAConfig, batch: int, n_q: int, n_k: int, *, device, dtype=torch.bfloat16, seed: int = 0) -> dict:
    """Random q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]``, iq ``[B, Hkv, Nq, Di]``, ik ``[B, Hik, Nk, Di]``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(device=device, dtype=dtype, gen=gen)
    return dict(q=_rand((batch, cfg.n_heads, n_q, cfg.head_dim), **kw),
                k=_rand((batch, cfg.n_kv_heads, n_k, cfg.head_dim), **kw),
                v=_rand((batch, cfg.n_kv_heads, n_k, cfg.head_dim), **kw),
                iq=_rand((batch, cfg.n_kv_heads, n_q, cfg.index_dim), **kw),
                ik=_rand((batch, cfg.index_key_heads, n_k, cfg.index_dim), **kw))


SDPA_ORDER = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")


def sdpa_candidates(q, k, v, n_q: int, n_k: int) -> list:
    """[(label, fn)] ways to run dense causal GQA attention with SDPA, one backend forced per way.

    Prefill (Nq == Nk): is_causal with enable_gqa, or with K/V repeated per query head (made once,
    outside the timed calls). Decode: is_causal would align top-left, so 1 token uses no mask and
    16 tokens use causal_lower_right; "packed" folds each group's query heads into query rows
    (exact for 1 token, with a bool mask for more) instead of repeating the cache.
    """
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    cache: dict = {}

    def repeated():
        if "kv" not in cache:
            cache["kv"] = (k.repeat_interleave(g, 1), v.repeat_interleave(g, 1))
        return cache["kv"]

    def packed_mask():
        if "mask" not in cache:  # row (head j, token t) sees keys <= Nk - Nq + t
            t = torch.arange(n_q, device=q.device).repeat(g)
            cache["mask"] = torch.arange(n_k, device=q.device)[None, :] <= (n_k - n_q + t)[:, None]
        return cache["mask"]

    ways = []
    for name in SDPA_ORDER:
        be = getattr(SDPBackend, name, None)
        if be is None:
            continue

        def run(call, be=be):
            with sdpa_kernel([be]):
                return call()

        if n_q == n_k:
            ways.append((f"{name}/enable_gqa", lambda run=run: run(
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))))
            ways.append((f"{name}/repeat_kv", lambda run=run: run(
                lambda: F.scaled_dot_product_attention(q, *repeated(), is_causal=True))))
        elif n_q == 1:
            ways.append((f"{name}/enable_gqa", lambda run=run: run(
                lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))))
            ways.append((f"{name}/packed", lambda run=run: run(
                lambda: F.scaled_dot_product_attention(q.reshape(B, Hkv, g, D), k, v).reshape(B, Hq, 1, D))))
        else:
            from torch.nn.attention.bias import causal_lower_right

            ways.append((f"{name}/enable_gqa+lower_right", lambda run=run: run(
                lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n_q, n_k),
                                                       enable_gqa=True))))
            ways.append((f"{name}/packed+mask", lambda run=run: run(
                lambda: F.scaled_dot_product_attention(q.reshape(B, Hkv, g * n_q, D), k, v, attn_mask=packed_mask())
                .reshape(B, Hq, n_q, D))))
    return ways


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.t0 = time.perf_counter()
        self.rows: list[Row] = []
        self.rates: dict = {}  # measured FLOP/s (or B/s) per row name: predicts the next length's time
        self.sdpa_rank: dict = {}  # mode -> SDPA ways, fastest first (prefill: once; decode: per length and batch)
        self._flex = None
        self.flex_compile_s = args.flex_compile_s  # then what the last Flex compile took
        self.meta = self._meta()
        self.path = self._out_path()
        self.dtype = torch.bfloat16

    # ------------------------------------------------------------------ bookkeeping
    def _meta(self) -> dict:
        import importlib

        dev = {"name": "cpu", "slug": "cpu"}
        if self.device.type == "cuda":
            p = torch.cuda.get_device_properties(self.device)
            dev = dict(name=p.name, slug=slugify(p.name), sm=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                       memory_bytes=p.total_memory, l2_bytes=getattr(p, "L2_cache_size", None))
        versions = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version())
        try:
            versions["triton"] = importlib.import_module("triton").__version__
        except Exception as e:  # noqa: BLE001
            versions["triton"] = f"unavailable ({type(e).__name__})"
        if self.device.type == "cuda" and torch.backends.cudnn.is_available():
            versions["cudnn"] = torch.backends.cudnn.version()
        from . import __version__

        versions["msa_lab"] = __version__
        try:
            kern = _kernels()
            versions["kernels"] = {f: hasattr(kern, f) for f in ("select_blocks", "sparse_attention", "msa_attention")}
            versions["kernels"]["indexer"] = getattr(kern, "INDEXER", "unknown")
        except Exception as e:  # noqa: BLE001
            versions["kernels"] = f"import failed: {_err_text(e, 500)}"
        # MSA_LAB_AUTOTUNE=0 runs one kernel config: timings are then not the tuned ones (the caption says so)
        env = {"MSA_LAB_AUTOTUNE": os.environ.get("MSA_LAB_AUTOTUNE")}
        return dict(schema=SCHEMA, date=_dt.date.today().isoformat(), device=dev, versions=versions,
                    env=env, row_names=ROW_NAMES)

    def _out_path(self) -> Path:
        tag = f"-{slugify(self.args.tag)}" if self.args.tag else ""
        name = f"{self.meta['date']}-{self.meta['device']['slug']}{tag}.json"
        out = self.args.out
        if out is None:
            return Path("data/bench") / name
        out = Path(out)
        return out / name if (str(self.args.out).endswith("/") or out.is_dir()) else out

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def results(self, finished: bool = False, interrupted: Optional[str] = None) -> dict:
        rows = [asdict(r) for r in self.rows]
        run = dict(args={k: v for k, v in vars(self.args).items()}, budget_s=self.args.budget_s,
                   elapsed_s=round(self.elapsed(), 1), finished=finished, interrupted=interrupted,
                   n_ok=sum(r["status"] == "ok" for r in rows), n_error=sum(r["status"] == "error" for r in rows),
                   n_skipped=sum(r["status"] == "skipped" for r in rows))
        return dict(self.meta, run=run, rows=rows, targets=derive_targets(rows))

    def save(self, **kw) -> None:
        write_json(_jsonable(self.results(**kw)), self.path)

    def add(self, row: Row) -> Row:
        self.rows.append(row.finish())
        copy = next((r for r in self.rows if r.name == "copy" and r.gbps), None)
        if row.name == "msa_decode_indexer" and row.gbps and copy:
            row.notes["vs_copy"] = row.gbps / copy.gbps  # index keys streamed vs the device's copy bandwidth
        what = " ".join(x for x in (row.shape or "", fmt_length(row.n) if row.n else "",
                                    f"B={row.batch} Nq={fmt_length(row.nq)}" if row.mode == "decode" else "") if x)
        if row.status == "ok":
            msg = f"{_num(row.ms)} ms" + (f"  {_num(row.tflops)} TFLOP/s" if row.tflops else "") \
                + (f"  {_num(row.gbps)} GB/s" if row.gbps else "")
        else:
            msg = f"{row.status.upper()}: {(row.error or '').splitlines()[0][:300]}"
        print(f"[{self.elapsed():6.0f}s] {row.name:<20} {what:<22} {msg}", flush=True)
        try:
            self.save()
        except Exception as e:  # noqa: BLE001 - a failed save must not end the run; the next one retries
            print(f"warning: could not write {self.path}: {_err_text(e, 300)}", flush=True)
        return row

    def budget_reason(self, predict_s: float) -> Optional[str]:
        if self.args.budget_s is None:
            return None
        left = self.args.budget_s - self.elapsed()
        if predict_s > left:
            return (f"time budget: this row needs ~{predict_s:.0f} s, {max(left, 0):.0f} s left of "
                    f"--budget-s {self.args.budget_s:g}")
        return None

    def per_call_s(self, name: str, work: float) -> float:
        """Seconds one call takes at the rate measured for this row so far, or a prior vs the matmul ceiling."""
        ceiling = next((r.tflops * 1e12 for r in self.rows if r.name == "matmul" and r.tflops), 4e14)
        priors = dict(dense_sdpa=0.5, msa_indexer=0.3, msa_indexer_fp8=0.3, msa_sparse_attn=0.15,
                      msa_total=0.1, flex_attention=0.03)
        return work / (self.rates.get(name) or ceiling * priors.get(name, 0.1))

    def predict(self, name: str, work: float, extra_s: float = 0.0) -> float:
        """Seconds a row will take: warm-up + repeats (see time_calls) + extra_s."""
        per_call = self.per_call_s(name, work)
        reps = max(self.args.min_reps, min(self.args.max_reps, self.args.target_s / max(per_call, 1e-6)))
        return per_call * (1 + reps) + extra_s + 0.5  # warm-up + repeats

    def run_row(self, row: Row, body: Callable[[Row], None], predict_s: float = 0.0) -> Row:
        """Run body(row), which fills ms/flops/bytes/notes; any exception becomes the row's error."""
        reason = self.budget_reason(predict_s)
        if reason:
            row.status, row.error = "skipped", reason
            return self.add(row)
        t0 = time.perf_counter()
        try:
            body(row)
            if row.ms and row.flops:
                self.rates[row.name] = row.flops / (row.ms * 1e-3)
        except Interrupted as e:
            row.status, row.error = "error", f"interrupted ({e}) while this row ran"
            self.add(row)
            raise
        except Exception as e:  # noqa: BLE001 - one failing row must not stop the others
            row.status, row.error = "error", _err_text(e)
            if isinstance(e, torch.cuda.OutOfMemoryError):
                row.error = "out of memory: " + row.error
        finally:
            row.wall_s = round(time.perf_counter() - t0, 2)
        try:
            self.free()  # synchronises: a kernel's illegal memory access surfaces here, after the row
        except Exception as e:  # noqa: BLE001
            if not _device_lost(e):
                raise
            note = f"the GPU failed during or right after this row (CUDA context lost): {_err_text(e, 1000)}"
            row.status, row.error = "error", note + (f"; the row's own error: {row.error}" if row.error else "")
            self.add(row)
            raise DeviceLost(f"{row.name} {row.shape or ''} {fmt_length(row.n)}: {_err_text(e, 300)}") from e
        return self.add(row)

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def time(self, row: Row, fn: Callable[[int], object], target_s: Optional[float] = None) -> None:
        t = time_calls(fn, self.device, target_s=self.args.target_s if target_s is None else target_s,
                       min_reps=self.args.min_reps, max_reps=self.args.max_reps)
        row.ms, row.first_ms, row.reps = t.ms, t.first_ms, len(t.runs_ms)
        if len(t.runs_ms) > 1:
            row.notes["spread_ms"] = [min(t.runs_ms), max(t.runs_ms)]

    def n_sets(self, working_bytes: int) -> int:
        """Input sets to rotate through: 3 when one set would sit in L2 between repeats."""
        l2 = self.meta["device"].get("l2_bytes") or (50 << 20)
        return 3 if working_bytes < 2 * l2 else 1

    # ------------------------------------------------------------------ rows
    def ceilings(self) -> None:
        def copy(row):
            n = (self.args.copy_mb << 20) // 2
            src = torch.randn(n, device=self.device, dtype=torch.bfloat16)
            dst = torch.empty_like(src)
            row.bytes = 2 * src.nbytes  # read + written
            self.time(row, lambda i: dst.copy_(src))
            row.notes["buffer_bytes"] = src.nbytes

        def matmul(row):
            n = self.args.matmul_n
            a = [torch.randn(n, n, device=self.device, dtype=torch.bfloat16) for _ in range(2)]
            b = [torch.randn(n, n, device=self.device, dtype=torch.bfloat16) for _ in range(2)]
            row.flops = 2 * n ** 3
            self.time(row, lambda i: a[i % 2] @ b[i % 2])
            row.notes["n"] = n

        self.run_row(Row("copy", "device"), copy)
        self.run_row(Row("matmul", "device"), matmul)

    def _select(self, inp, cfg, notes: dict):
        """idx from the Triton indexer, or the torch path if that fails (so Flex and attention rows still run)."""
        try:
            return _kernels().select_blocks(inp["iq"], inp["ik"], cfg)
        except Exception as e:  # noqa: BLE001
            from . import torch_path

            notes["idx_source"] = f"torch_path (msa_lab.kernels.select_blocks failed: {_err_text(e, 300)})"
            return torch_path.select_blocks(inp["iq"], inp["ik"], cfg)

    def prefill(self, cfg: MSAConfig, n: int) -> None:
        tag = dict(mode="prefill", shape=cfg.name, n=n, nq=n)
        names = ("msa_indexer", "msa_indexer_fp8", "msa_sparse_attn", "msa_total", "check", "flex_attention",
                 "dense_sdpa")
        try:
            inp = make_inputs(cfg, 1, n, n, device=self.device, dtype=self.dtype, seed=self.args.seed)
        except Exception as e:  # noqa: BLE001
            for nm in names:
                self.add(Row(nm, status="error", error="inputs: " + _err_text(e), **tag))
            self.free()
            return
        q, k, v, iq, ik = (inp[x] for x in ("q", "k", "v", "iq", "ik"))
        g = cfg.n_heads // cfg.n_kv_heads
        f_idx = indexer_flops(n, n, cfg.index_dim, cfg.n_kv_heads)
        f_dense = dense_flops(n, n, cfg.head_dim, cfg.n_heads)
        state: dict = {}

        def indexer(row):
            kern = _kernels()
            row.flops = f_idx
            self.time(row, lambda i: kern.select_blocks(iq, ik, cfg))
            row.notes["indexer"] = getattr(kern, "INDEXER", "unknown")

        def indexer_fp8(row):
            row.flops = f_idx
            self.time(row, lambda i: _kernels().select_blocks(iq, ik, cfg, fp8=True))
            a = _kernels().select_blocks(iq, ik, cfg, fp8=True)
            b = state["idx"]
            row.notes["agreement"] = selection_overlap(a, b)  # fraction of fp8 picks that bf16 also picks
            agree = getattr(getattr(_kernels(), "indexer", None), "selection_agreement", None)
            if agree is not None:
                try:
                    val = agree(a, b)
                    row.notes["agreement_kernels"] = float(val) if not isinstance(val, dict) else val
                except Exception as e:  # noqa: BLE001
                    row.notes["agreement_kernels"] = f"error: {_err_text(e, 300)}"

        self.run_row(Row("msa_indexer", **tag), indexer, self.predict("msa_indexer", f_idx))
        # the selection every later row uses (the indexer row's calls are discarded)
        sel_notes: dict = {}
        try:
            state["idx"] = self._select(inp, cfg, sel_notes)
            state["sel_notes"] = sel_notes
            state["attended"] = attended_keys(state["idx"], n, cfg.block_size)
        except Exception as e:  # noqa: BLE001
            state["error"] = "selection failed: " + _err_text(e)
        f_sparse = sparse_flops(state.get("attended", 0), cfg.head_dim, g)

        def need_idx():
            if "idx" not in state:
                raise RuntimeError(state.get("error", "no selection"))

        def fp8_body(row):
            need_idx()
            indexer_fp8(row)

        def sparse(row):
            need_idx()
            row.flops = f_sparse
            row.notes.update(sel_notes, attended_keys=state["attended"],
                             density=state["attended"] / causal_pairs(n, n) / cfg.n_kv_heads)
            self.time(row, lambda i: _kernels().sparse_attention(q, k, v, state["idx"], cfg))

        def total(row):
            kern = _kernels()
            row.flops = f_idx + f_sparse if "attended" in state else None
            if hasattr(kern, "msa_attention"):
                self.time(row, lambda i: kern.msa_attention(q, k, v, iq, ik, cfg))
            else:
                row.notes["composed"] = "msa_lab.kernels has no msa_attention: select_blocks + sparse_attention"
                self.time(row, lambda i: kern.sparse_attention(q, k, v, kern.select_blocks(iq, ik, cfg), cfg))

        if not self.args.no_fp8:
            self.run_row(Row("msa_indexer_fp8", **tag), fp8_body, self.predict("msa_indexer_fp8", f_idx))
        self.run_row(Row("msa_sparse_attn", **tag), sparse, self.predict("msa_sparse_attn", f_sparse or f_idx))
        self.run_row(Row("msa_total", **tag), total, self.predict("msa_total", f_idx + f_sparse))
        if self.args.check_rows:
            self.run_row(Row("check", **dict(tag, mode="check")), lambda row: self._check(row, inp, cfg),
                         2.0 + 20.0 * n / MEGA)
        mask_bytes = flex_mask_bytes(1, cfg.n_kv_heads, cfg.n_heads, n, n, cfg.block_size)
        table_elems = selection_table_bytes(1, cfg.n_kv_heads, n, n, cfg.block_size)
        if not self.args.flex:
            self.add(Row("flex_attention", status="skipped", **tag, error=FLEX_OPT_IN))
        elif mask_bytes > self.args.flex_max_mask_gb * 1e9 or table_elems > FLEX_MAX_TABLE_ELEMENTS:
            self.add(Row("flex_attention", status="skipped", **tag,
                         error=f"does not fit: {mask_bytes} bytes for the selection table [Hkv, Nq, n_blocks] and "
                               f"block lists (limit --flex-max-mask-gb {self.args.flex_max_mask_gb:g}), "
                               f"{table_elems} table elements (limit {FLEX_MAX_TABLE_ELEMENTS}: int32 indexing)"))
        else:
            self.run_row(Row("flex_attention", **tag), lambda row: self._flex_row(row, inp, cfg, state, f_sparse),
                         self.predict("flex_attention", f_sparse or f_idx, self.flex_compile_s))
        state.clear()
        self.free()
        self.run_row(Row("dense_sdpa", **tag), lambda row: self._dense(row, q, k, v, n, n, f_dense, "prefill"),
                     self.predict("dense_sdpa", f_dense))

    def _probe_sdpa(self, q, k, v, n_q: int, n_k: int, real: bool = False) -> dict:
        """ms of every SDPA way, or its error. Prefill: side inputs of the same heads at <= 8K keys (a 1M
        prefill takes ~37 s a call). Decode (real=True): the row's own inputs, because the ranking flips with
        length (m3, B=1, 1 token on an H100: cuDNN with queries packed per group is fastest at 8K keys and
        16x slower than cuDNN with enable_gqa at 1M)."""
        if real:
            q2, k2, v2, n_q2, n_k2 = q, k, v, n_q, n_k
        else:
            n_k2 = min(n_k, 8192)
            n_q2 = n_k2 if n_q == n_k else n_q
            B, Hq, _, D = q.shape
            gen = torch.Generator(device=self.device).manual_seed(self.args.seed + 99)
            kw = dict(device=self.device, dtype=q.dtype, gen=gen)
            q2, k2, v2 = (_rand((B, Hq, n_q2, D), **kw), _rand((B, k.shape[1], n_k2, D), **kw),
                          _rand((B, k.shape[1], n_k2, D), **kw))
        probe = {}
        for label, fn in sdpa_candidates(q2, k2, v2, n_q2, n_k2):
            try:
                t = time_calls(lambda i, fn=fn: fn(), self.device, target_s=0.1, min_reps=2, max_reps=20)
                probe[label] = round(t.ms, 4)
            except Exception as e:  # noqa: BLE001 - a way this build or shape lacks
                probe[label] = f"error: {_err_text(e, 200)}"
        return dict(n_q=n_q2, n_k=n_k2, ms=probe)

    def _dense(self, row: Row, q, k, v, n_q: int, n_k: int, flops: int, mode: str) -> None:
        """Time the fastest SDPA way that runs here; ways are ranked once per mode on small side inputs."""
        row.flops = flops
        row.bytes = k.nbytes + v.nbytes if mode != "prefill" else None  # decode: the KV cache read
        if mode not in self.sdpa_rank:
            probe = self._probe_sdpa(q, k, v, n_q, n_k, real=mode.startswith("decode"))
            ok = {lb: ms for lb, ms in probe["ms"].items() if isinstance(ms, float)}
            self.sdpa_rank[mode] = sorted(ok, key=ok.get) + [lb for lb in probe["ms"] if lb not in ok]
            row.notes["probe"] = probe
            self.free()
        ways = sdpa_candidates(q, k, v, n_q, n_k)
        tried = {}
        order = self.sdpa_rank[mode] or [lb for lb, _ in ways]
        fns = dict(ways)
        for label in order:
            try:
                self.time(row, lambda i, fn=fns[label]: fn())
                backend, _, gqa = label.partition("/")
                row.notes.update(backend=backend, gqa=gqa)
                if tried:
                    row.notes["failed_first"] = tried
                return
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001 - try the next backend
                tried[label] = _err_text(e, 300)
                self.free()
        raise RuntimeError(f"no SDPA backend ran this shape: {json.dumps(tried)[:3000]}")

    def _check(self, row: Row, inp: dict, cfg: MSAConfig) -> None:
        """MSA total's last rows (the real prefill call) vs the float32 torch path with the same selection."""
        from . import torch_path

        kern = _kernels()
        q, k, v, iq, ik = (inp[x] for x in ("q", "k", "v", "iq", "ik"))
        r = min(self.args.check_rows, q.shape[2])
        t0 = time.perf_counter()
        o, idx = kern.msa_attention(q, k, v, iq, ik, cfg, return_indices=True)
        o, idx = o[:, :, -r:].clone(), idx[:, :, -r:].clone()
        self.free()
        ref_idx = torch_path.select_blocks(iq[:, :, -r:], ik, cfg)
        overlap = selection_overlap(idx, ref_idx)
        ref = torch_path.sparse_attention(q[:, :, -r:], k, v, idx, cfg)  # same selection: isolates the attention
        diff = (o.float() - ref.float())
        rel = float(diff.norm() / ref.float().norm().clamp_min(1e-30))
        row.ms = (time.perf_counter() - t0) * 1e3
        row.notes.update(rows=r, selection_overlap=overlap, rel_err=rel, max_abs_err=float(diff.abs().max()),
                         tol=dict(selection_overlap=self.args.check_overlap, rel_err=self.args.check_rel_err))
        if overlap < self.args.check_overlap or not rel <= self.args.check_rel_err:
            raise AssertionError(f"correctness check failed on the last {r} rows: selection overlap {overlap:.4f} "
                                 f"(need >= {self.args.check_overlap}), rel err {rel:.2e} "
                                 f"(need <= {self.args.check_rel_err})")

    def _flex_row(self, row: Row, inp: dict, cfg: MSAConfig, state: dict, f_sparse: int) -> None:
        if "idx" not in state:
            raise RuntimeError(state.get("error", "no selection"))
        from torch.nn.attention.flex_attention import flex_attention

        q, k, v = inp["q"], inp["k"], inp["v"]
        n_q, n_k = q.shape[2], k.shape[2]
        if self.device.type == "cuda":
            if self._flex is None:
                # not `import torch._dynamo`: that binds `torch` as a local name of this whole method, so
                # the second Flex row (which skips this branch) failed with UnboundLocalError on `torch`
                from torch import _dynamo as dynamo

                for key in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
                    if hasattr(dynamo.config, key):  # one recompile per length and shape
                        setattr(dynamo.config, key, max(getattr(dynamo.config, key), 64))
                self._flex = torch.compile(flex_attention, dynamic=False)
            flex = self._flex
        else:
            flex, row.notes["eager"] = flex_attention, "CPU smoke run: eager flex_attention (materialises scores)"
        t0 = time.perf_counter()
        bm, table, fb = flex_block_mask(state["idx"], n_k, cfg, cfg.n_heads)
        check_block_mask(bm, n_q, n_k, cfg.n_heads, q.shape[0])  # a bad mask: this row's error, not a dead GPU
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        row.notes.update(mask_build_s=round(time.perf_counter() - t0, 3), table_bytes=table.nbytes,
                         union_tiles=fb.union_blocks, full_tiles=int(fb.full_num.sum()))
        # the tiles flex computes vs the useful work: how much the block union costs it
        useful_tiles = state["attended"] / (fb.q_block * cfg.block_size)
        row.notes["computed_vs_useful"] = fb.union_blocks / useful_tiles if useful_tiles else None
        row.flops = f_sparse
        row.notes.update(state.get("sel_notes", {}))
        scale = cfg.softmax_scale()
        try:
            self.time(row, lambda i: flex(q, k, v, block_mask=bm, scale=scale, enable_gqa=True))
            row.notes["compile_and_first_s"] = round((row.first_ms or 0) / 1e3, 2)
            self.flex_compile_s = max(1.0, (row.first_ms - row.ms) / 1e3)
            # same selection, same answer: Flex vs the MSA kernel on the last rows (recorded, not asserted)
            r = min(self.args.check_rows or 256, n_q)
            try:
                o = flex(q, k, v, block_mask=bm, scale=scale, enable_gqa=True)[:, :, -r:].float()
                ref = _kernels().sparse_attention(q, k, v, state["idx"], cfg)[:, :, -r:].float()
                row.notes["rel_err_vs_msa_last_rows"] = float((o - ref).norm() / ref.norm().clamp_min(1e-30))
            except Exception as e:  # noqa: BLE001 - the timing stands; the comparison just did not run
                row.notes["rel_err_vs_msa_last_rows"] = f"not compared: {_err_text(e, 300)}"
        finally:
            if self.device.type == "cuda":  # compiled graphs may keep the mask_mod (and its table) alive
                torch._dynamo.reset()

    def decode(self, cfg: MSAConfig, n: int, batch: int, n_new: int) -> None:
        tag = dict(mode="decode", shape=cfg.name, n=n, nq=n_new, batch=batch)
        names = ("msa_decode_indexer", "msa_decode_attn", "msa_decode", "dense_decode")
        ik_bytes = batch * cfg.index_key_heads * n * cfg.index_dim * 2
        sets = self.n_sets(ik_bytes)
        try:
            inps = [make_inputs(cfg, batch, n_new, n, device=self.device, dtype=self.dtype, seed=self.args.seed + s)
                    for s in range(sets)]
        except Exception as e:  # noqa: BLE001
            for nm in names:
                self.add(Row(nm, status="error", error="inputs: " + _err_text(e), **tag))
            self.free()
            return
        f_idx = indexer_flops(n_new, n, cfg.index_dim, cfg.n_kv_heads, batch)
        f_dense = dense_flops(n_new, n, cfg.head_dim, cfg.n_heads, batch)
        g = cfg.n_heads // cfg.n_kv_heads
        idxs: list = []

        def indexer(row):
            kern = _kernels()
            row.flops, row.bytes = f_idx, inps[0]["ik"].nbytes  # GB/s: index keys read
            self.time(row, lambda i: kern.select_blocks(inps[i % sets]["iq"], inps[i % sets]["ik"], cfg))
            row.notes.update(input_sets=sets, indexer=getattr(kern, "INDEXER", "unknown"))

        def attn(row):
            kern = _kernels()
            notes: dict = {}
            idxs.extend(self._select(x, cfg, notes) for x in inps)
            row.notes.update(notes, input_sets=sets)
            row.flops = sparse_flops(attended_keys(idxs[0], n, cfg.block_size), cfg.head_dim, g)
            self.time(row, lambda i: kern.sparse_attention(inps[i % sets]["q"], inps[i % sets]["k"],
                                                           inps[i % sets]["v"], idxs[i % sets], cfg))

        def total(row):
            kern = _kernels()
            row.notes["input_sets"] = sets
            if idxs:
                row.flops = f_idx + sparse_flops(attended_keys(idxs[0], n, cfg.block_size), cfg.head_dim, g)
            self.time(row, lambda i: kern.msa_attention(*(inps[i % sets][x] for x in ("q", "k", "v", "iq", "ik")), cfg))

        def msa_graph(row):
            kern = _kernels()
            if idxs:
                row.flops = f_idx + sparse_flops(attended_keys(idxs[0], n, cfg.block_size), cfg.head_dim, g)

            def step(x):  # the kernels straight, so nothing in the step syncs with the host
                idx = kern.select_blocks(x["iq"], x["ik"], cfg)
                return kern.sparse_attention(x["q"], x["k"], x["v"], idx, cfg)

            self._graph_rows(row, [lambda x=x: step(x) for x in inps])
            row.notes["input_sets"] = sets

        self.run_row(Row("msa_decode_indexer", **tag), indexer, 2 * self.args.target_s + 1)
        self.run_row(Row("msa_decode_attn", **tag), attn, 2 * self.args.target_s + 1)
        self.run_row(Row("msa_decode", **tag), total, 2 * self.args.target_s + 1)
        self.graph_row(Row("msa_decode_graph", **tag), msa_graph)
        idxs.clear()
        x = inps[0]
        del inps[1:]  # dense decode streams the whole cache: far beyond L2, one set is enough
        self.free()
        mode = f"decode{n_new}/{n}/{batch}"  # ranked on this row's own inputs (see _probe_sdpa)
        self.run_row(Row("dense_decode", **tag),
                     lambda row: self._dense(row, x["q"], x["k"], x["v"], n_new, n, f_dense, mode),
                     2 * self.args.target_s + 1)
        self.graph_row(Row("dense_decode_graph", **tag),
                       lambda row: self._dense_graph(row, x["q"], x["k"], x["v"], n_new, n, f_dense, mode))

    # ------------------------------------------------------------------ CUDA graphs (decode)
    def graph_row(self, row: Row, body: Callable[[Row], None]) -> Row:
        """A "graph" row next to the eager one: skipped with the reason where graphs cannot run; a
        failed capture is this row's error (the eager rows keep their numbers)."""
        reason = graphs_unsupported_reason(self.device)
        if reason:
            row.status, row.error = "skipped", reason
            return self.add(row)
        row.notes["timing"] = "CUDA graph replays of one decode step (no launch or Python overhead)"
        return self.run_row(row, body, 2 * self.args.target_s + 2)

    def _graph_rows(self, row: Row, fns: list) -> None:
        """Capture each fn (one per input set) and time graph replays, rotating the sets."""
        graphs = []
        try:
            for fn in fns:
                graphs.append(capture_graph(fn)[0])
        except Exception as e:
            raise RuntimeError(f"graph capture failed (the eager row has the numbers): {_err_text(e, 1500)}") from e
        self.time(row, lambda i: graphs[i % len(graphs)].replay())
        row.notes["graphs"] = len(graphs)

    def _dense_graph(self, row: Row, q, k, v, n_q: int, n_k: int, flops: int, mode: str) -> None:
        """The SDPA ways in the eager row's ranking (fastest first), the first that captures."""
        row.flops, row.bytes = flops, k.nbytes + v.nbytes
        ways = dict(sdpa_candidates(q, k, v, n_q, n_k))
        failed = {}
        for label in self.sdpa_rank.get(mode) or list(ways):
            try:
                self._graph_rows(row, [ways[label]])
                backend, _, gqa = label.partition("/")
                row.notes.update(backend=backend, gqa=gqa)
                if failed:
                    row.notes["failed_first"] = failed
                return
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001 - try the next way
                failed[label] = _err_text(e, 300)
                self.free()
        raise RuntimeError(f"no SDPA way captured into a CUDA graph: {json.dumps(failed)[:3000]}")

    def memory(self, cfg: MSAConfig, n: int) -> None:
        """Peak allocated while one layer's MSA prefill runs: inputs, KV + index-key cache, output, scratch."""
        def body(row):
            self.free()
            base = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
            row.notes["allocated_before_bytes"] = base  # not counted: left over from earlier rows
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            inp = make_inputs(cfg, 1, n, n, device=self.device, dtype=self.dtype, seed=self.args.seed)
            t0 = time.perf_counter()
            out = _kernels().msa_attention(*(inp[x] for x in ("q", "k", "v", "iq", "ik")), cfg)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
                row.bytes = torch.cuda.max_memory_allocated(self.device) - base
                row.notes["reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
            row.ms = (time.perf_counter() - t0) * 1e3
            row.notes.update(kv_cache_bytes=inp["k"].nbytes + inp["v"].nbytes + inp["ik"].nbytes,
                             input_bytes=sum(t.nbytes for t in inp.values()), output_bytes=out.nbytes)
            del out, inp

        f = indexer_flops(n, n, cfg.index_dim, cfg.n_kv_heads)
        self.run_row(Row("memory", "memory", shape=cfg.name, n=n, nq=n), body, self.predict("msa_total", f) / 3 + 5)

    # ------------------------------------------------------------------ plan
    def run(self) -> None:
        a = self.args
        self.ceilings()
        # longest first: a budget cut then drops short lengths, not the 1M rows the targets are read at
        for cfg in (MSAConfig.preset(s) for s in a.shapes):
            for n in sorted(a.lengths, reverse=True):
                self.prefill(cfg, n)
            for n in sorted(a.decode_lengths, reverse=True):
                for b in a.decode_batches:
                    for t in a.decode_new_tokens:
                        self.decode(cfg, n, b, t)
            if a.memory_length and cfg.name == a.memory_shape:
                self.memory(cfg, a.memory_length)


def _jsonable(x):
    """NaN/inf are not JSON: write them as strings so nothing is dropped."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="msa-lab bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: m3 only, prefill 8K and 32K, decode at 32K, memory at 32K, short repeats")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip rows predicted to end after this many seconds (recorded with the reason)")
    ap.add_argument("--out", default=None,
                    help="results JSON file, or a folder (ending in /) for <date>-<card>.json; "
                         "default data/bench/<date>-<card>.json")
    ap.add_argument("--shapes", default="m3,llama3_8b", help="presets, comma separated")
    ap.add_argument("--lengths", default=None, help=f"prefill lengths (default {DEFAULT_LENGTHS}); '' for none")
    ap.add_argument("--decode-lengths", default=None, help=f"decode KV lengths (default {DEFAULT_DECODE_LENGTHS})")
    ap.add_argument("--decode-batches", default="1,8")
    ap.add_argument("--decode-new-tokens", default="1,16")
    ap.add_argument("--memory-length", default=None, help="MSA prefill length for the memory row (default 1M; 0: skip)")
    ap.add_argument("--memory-shape", default="m3")
    ap.add_argument("--flex", action="store_true",
                    help="also time FlexAttention (opt-in: it compiles per shape and is slow; its first GPU run, "
                         "2026-11-27, crashed the CUDA context with an illegal memory access; the fixed mask "
                         "has since run on an H100 at 32K and 128K)")
    ap.add_argument("--no-flex", action="store_true", help="(default now) do not time FlexAttention")
    ap.add_argument("--no-fp8", action="store_true", help="skip the fp8 indexer rows")
    ap.add_argument("--flex-max-mask-gb", type=float, default=12.0,
                    help="largest bool selection table Flex may use (GB); longer lengths are marked 'does not fit'")
    ap.add_argument("--flex-compile-s", type=float, default=60.0, help="budget guess for Flex's first compile")
    ap.add_argument("--check-rows", type=int, default=256, help="query rows checked against torch_path (0: no check)")
    ap.add_argument("--check-overlap", type=float, default=0.98, help="min selection overlap in the check")
    ap.add_argument("--check-rel-err", type=float, default=2e-2, help="max relative error in the check")
    ap.add_argument("--target-s", type=float, default=0.5, help="time spent repeating each row (about)")
    ap.add_argument("--min-reps", type=int, default=2)
    ap.add_argument("--max-reps", type=int, default=100)
    ap.add_argument("--copy-mb", type=int, default=2048, help="copy-bandwidth buffer size")
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--tag", default=None,
                    help="suffix for the default file name, e.g. 'llama' -> <date>-<card>-llama.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-final-table", action="store_true",
                    help="do not print the tables at the end (scripts/device_run.sh prints them itself)")
    ap.add_argument("--device", default="cuda",
                    help="cuda (default). 'cpu' only smoke-tests the bench's control flow: timings mean nothing")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = build_parser()
    a = ap.parse_args(argv)
    quick = a.quick
    try:
        a.shapes = [s.strip() for s in (("m3" if quick and a.shapes == "m3,llama3_8b" else a.shapes)).split(",")
                    if s.strip()]
        for s in a.shapes:
            MSAConfig.preset(s)
        a.lengths = parse_lengths(a.lengths if a.lengths is not None else ("8K,32K" if quick else DEFAULT_LENGTHS))
        a.decode_lengths = parse_lengths(a.decode_lengths if a.decode_lengths is not None
                                         else ("32K" if quick else DEFAULT_DECODE_LENGTHS))
        a.decode_batches = [int(x) for x in a.decode_batches.split(",") if x.strip()]
        a.decode_new_tokens = [int(x) for x in a.decode_new_tokens.split(",") if x.strip()]
        mem = a.memory_length if a.memory_length is not None else ("32K" if quick else "1M")
        a.memory_length = 0 if str(mem).strip() in ("0", "") else parse_length(mem)
    except (KeyError, ValueError) as e:
        ap.error(str(e).strip("'\""))
    if any(b <= 0 for b in a.decode_batches) or any(t <= 0 for t in a.decode_new_tokens):
        ap.error("--decode-batches and --decode-new-tokens must be positive integers")
    if a.no_flex:
        a.flex = False
    if quick and a.target_s == 0.5:
        a.target_s = 0.2
    if a.budget_s is not None and a.budget_s <= 0:
        ap.error(f"--budget-s must be > 0 seconds, got {a.budget_s}")
    return a


def main(argv=None) -> int:
    """Run the benchmark; returns 0 when it ran (rows may still hold errors), 1 when it stopped early
    (e.g. a lost CUDA context; the rows so far are saved and tabled), 2 without a GPU."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("msa-lab bench: no CUDA GPU here. It times Triton kernels on an H100/H200 "
              "(scripts/device_run.sh runs it there); its pure helpers are tested by pytest tests/test_bench.py. "
              "--device cpu only smoke-tests the control flow.", file=sys.stderr)
        return 2
    bench = Bench(args, device)
    print(f"msa-lab bench -> {bench.path}  ({caption(bench.meta)})", flush=True)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    interrupted = None
    crashed = None
    try:
        bench.run()
    except (Interrupted, KeyboardInterrupt) as e:
        interrupted = f"interrupted ({type(e).__name__}: {e}) after {bench.elapsed():.0f} s"
        print(interrupted, flush=True)
    except Exception as e:  # noqa: BLE001 - e.g. DeviceLost: keep the rows measured so far, print their table
        crashed = interrupted = f"stopped by {_err_text(e, 1000)} after {bench.elapsed():.0f} s"
        print(crashed, flush=True)
        traceback.print_exc()
    finally:
        signal.signal(signal.SIGTERM, old)
    try:  # the rows are plain Python: writing them needs no GPU, even with a dead CUDA context
        bench.save(finished=interrupted is None, interrupted=interrupted)
    except Exception as e:  # noqa: BLE001 - the file from the last row's save is still there
        print(f"warning: could not write the final {bench.path}: {_err_text(e, 300)}", flush=True)
    if not args.no_final_table:
        print("\n" + render_short(load_json(bench.path)), flush=True)
    print(f"\nresults: {bench.path}", flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
