"""Synthetic index queries/keys for the mask explorer, and block selection for sampled query rows.

Two ideas keep the explorer interactive at 1M tokens:
  * never select for all Nq queries: :func:`select_blocks_sampled` scores only S sampled query
    rows against the keys each can see, and matches ``msa_lab.reference.select_blocks`` on them;
  * generate the data cheaply and once: index keys come in fixed, seeded chunks, so the keys of a
    shorter sequence are a prefix of a longer one's and a length change only generates new chunks;
    index queries are seeded per position, so only the sampled rows are ever made.

Data kinds:
  "random"     iq, ik ~ N(0, 1): selection beyond the forced blocks is noise.
  "structured" random plus planted needles: in each needle block a few index keys point along a
               direction u_n, and every index query of the needle's KV group has a component along
               u_n, so the indexer should pick the needle block once it is visible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import MSAConfig

DATA_KINDS = ("random", "structured")
_CHUNK = 1 << 15  # index keys generated per seeded chunk
_KEY_CHUNK = 1 << 14  # keys scored per step in select_blocks_sampled (bounds the [S, chunk] scratch)


# --------------------------------------------------------------------------- sampled selection
def sample_positions(n_tokens: int, rows: int) -> np.ndarray:
    """``rows`` evenly spaced query positions in [0, n_tokens), int64 [S], S <= rows.

    The first and the last position are always included; S < rows only when n_tokens < rows.
    """
    if not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise ValueError(f"n_tokens must be an int >= 1, got {n_tokens!r}")
    if not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"rows must be an int >= 1, got {rows!r}")
    if rows == 1:
        return np.array([n_tokens - 1], dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n_tokens - 1, rows)).astype(np.int64))


def _check_rows(iq_rows: torch.Tensor, ik: torch.Tensor, positions) -> torch.Tensor:
    if iq_rows.dim() != 4 or ik.dim() != 4:
        raise ValueError(
            f"iq_rows must be [B, Hkv, S, Di] and ik [B, Hik, Nk, Di]; got {tuple(iq_rows.shape)} and {tuple(ik.shape)}"
        )
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.int64).reshape(-1)
    if pos.numel() != iq_rows.shape[2]:
        raise ValueError(f"{pos.numel()} positions for {iq_rows.shape[2]} query rows; pass one position per row.")
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= ik.shape[2]):
        raise ValueError(
            f"positions must lie in [0, Nk={ik.shape[2]}) (a query at position p sees keys 0..p); "
            f"got values in [{int(pos.min())}, {int(pos.max())}]."
        )
    if ik.shape[1] not in (1, iq_rows.shape[1]) or ik.shape[0] != iq_rows.shape[0] or ik.shape[3] != iq_rows.shape[3]:
        raise ValueError(
            f"ik {tuple(ik.shape)} does not match iq_rows {tuple(iq_rows.shape)} (need same B, Di; Hik 1 or Hkv)."
        )
    return pos


def block_scores_sampled(iq_rows: torch.Tensor, ik: torch.Tensor, positions, cfg: MSAConfig) -> torch.Tensor:
    """Index scores of sampled query rows: float32 [B, Hkv, S, n_blocks].

    iq_rows ``[B, Hkv, S, Di]`` are the index queries at absolute ``positions`` [S] (any order);
    ik ``[B, Hik, Nk, Di]``. Score of block b = max over keys j <= p of block b of
    iq . ik[j] * index_scale; a NaN dot product counts as -inf; -inf where no key of the block is
    visible and -FLT_MAX where some is but all its scores are -inf (visible beats invisible).
    Only keys up to max(positions) are touched, and each key chunk only by the rows that see it.
    """
    pos = _check_rows(iq_rows, ik, positions)
    B, Hkv, S, Di = iq_rows.shape
    Nk, bs = ik.shape[2], cfg.block_size
    nb = cfg.num_blocks(Nk)
    scale = cfg.index_softmax_scale(Di)
    out = torch.full((B, Hkv, S, nb), -float("inf"), dtype=torch.float32)
    if S == 0:
        return out
    order = torch.argsort(pos)
    pos_sorted = pos[order]
    q = iq_rows[:, :, order].float() * scale  # scaling q first: one pass over S rows, not S x Nk scores
    fmax = torch.finfo(torch.float32).max
    n_vis = int(pos_sorted[-1]) + 1
    step = max(bs, _KEY_CHUNK // bs * bs)  # whole blocks per step
    for c0 in range(0, n_vis, step):
        c1 = min(n_vis, c0 + step)
        r0 = int(torch.searchsorted(pos_sorted, c0))  # rows before r0 see nothing of this chunk
        r1 = int(torch.searchsorted(pos_sorted, c1 - 1))  # rows from r1 on see all of it
        best = _chunk_block_max(q[:, :, r0:], ik[:, :, c0:c1].float(), c0, pos_sorted[r0:r1], bs, clean=False)
        if torch.isnan(best).any():  # amax propagates NaN: redo this chunk with NaN scores as -inf
            best = _chunk_block_max(q[:, :, r0:], ik[:, :, c0:c1].float(), c0, pos_sorted[r0:r1], bs, clean=True)
        rows = pos_sorted[r0:]
        b0 = c0 // bs
        visible = (torch.arange(b0, b0 + best.shape[-1])[None, :] * bs) <= rows[:, None]  # [S', nbc]
        best = torch.where(visible & (best == -float("inf")), torch.full_like(best, -fmax), best)
        best = best.masked_fill(~visible, -float("inf"))
        out[:, :, order[r0:], b0:b0 + best.shape[-1]] = best
    return out


def _chunk_block_max(q: torch.Tensor, kc: torch.Tensor, c0: int, partial: torch.Tensor, bs: int,
                     clean: bool) -> torch.Tensor:
    """Block maxima of q [B, H, S', Di] against key chunk kc [B, Hik, C, Di] starting at key c0.

    ``partial`` [P] are the positions of the first P rows, which see only part of the chunk (the
    other rows see all of it, so only these P rows are masked). Returns [B, H, S', ceil(C / bs)].
    """
    s = torch.matmul(q, kc.transpose(-1, -2))  # [B, H, S', C]
    if clean:
        s = torch.nan_to_num(s, nan=-float("inf"), posinf=float("inf"), neginf=-float("inf"))
    C = s.shape[-1]
    if partial.numel():
        keys = torch.arange(c0, c0 + C)
        s[:, :, : partial.numel()].masked_fill_(keys[None, :] > partial[:, None], -float("inf"))
    nbc = -(-C // bs)
    if nbc * bs != C:  # only the chunk holding the last visible key is ragged
        s = torch.nn.functional.pad(s, (0, nbc * bs - C), value=-float("inf"))
    return s.view(*s.shape[:-1], nbc, bs).amax(-1)


def forced_block_mask(positions, n_blocks: int, cfg: MSAConfig) -> np.ndarray:
    """bool [S, n_blocks]: init blocks and the local window of each query position, where visible."""
    own = (np.asarray(positions, dtype=np.int64) // cfg.block_size)[:, None]
    b = np.arange(n_blocks)[None, :]
    return (b <= own) & ((b < cfg.init_blocks) | (b > own - cfg.local_blocks))


def select_from_scores(scores: torch.Tensor, positions, cfg: MSAConfig) -> torch.Tensor:
    """top_k selection from :func:`block_scores_sampled`: int32 [B, Hkv, S, top_k], -1 padded.

    Separate from the scoring so the explorer can change top_k / init / local without rescoring.
    """
    nb = scores.shape[-1]
    forced = torch.from_numpy(forced_block_mask(positions, nb, cfg))
    s = scores.masked_fill(forced, float("inf"))
    k = min(cfg.top_k, nb)
    val, idx = s.topk(k, dim=-1)
    idx = idx.masked_fill(val == -float("inf"), -1).to(torch.int32)
    if k < cfg.top_k:
        idx = torch.nn.functional.pad(idx, (0, cfg.top_k - k), value=-1)
    return idx


def select_blocks_sampled(iq_rows: torch.Tensor, ik: torch.Tensor, positions, cfg: MSAConfig) -> torch.Tensor:
    """``msa_lab.reference.select_blocks`` for the query rows at ``positions`` only.

    iq_rows ``[B, Hkv, S, Di]``, ik ``[B, Hik, Nk, Di]``, positions [S] -> int32 [B, Hkv, S, top_k].
    Row r equals the reference's row for the query at positions[r] (same set of blocks).
    """
    return select_from_scores(block_scores_sampled(iq_rows, ik, positions, cfg), positions, cfg)


def needle_recall(idx: torch.Tensor, positions, needle_blocks: Sequence[int], cfg: MSAConfig) -> Tuple[int, int]:
    """(found, wanted): over rows of idx ``[S, top_k]`` and needle blocks, how often a needle block
    that the query can see, and that is not forced anyway, was selected."""
    idx = np.asarray(idx)
    nb = int(max(needle_blocks, default=-1)) + 1
    if nb == 0:
        return 0, 0
    forced = forced_block_mask(positions, nb, cfg)
    own = np.asarray(positions, dtype=np.int64) // cfg.block_size
    found = wanted = 0
    for b in needle_blocks:
        want = (own >= b) & ~forced[:, b]
        wanted += int(want.sum())
        found += int(((idx == b).any(-1) & want).sum())
    return found, wanted


# --------------------------------------------------------------------------- synthetic data
def tiny_tensors(n_tokens: int = 16, n_heads: int = 4, n_kv_heads: int = 2, head_dim: int = 32, index_dim: int = 16,
                 seed: int = 0):
    """Small N(0, 1) float32 inputs for worked examples: (q, k, v, iq, ik).

    q ``[1, Hq, N, D]``, k and v ``[1, Hkv, N, D]``, iq ``[1, Hkv, N, Di]``, ik ``[1, 1, N, Di]``.
    The default dims are ones every backend supports (the Triton kernels need D in 32/64/128).
    """
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    q = r(1, n_heads, n_tokens, head_dim)
    k, v = r(1, n_kv_heads, n_tokens, head_dim), r(1, n_kv_heads, n_tokens, head_dim)
    return q, k, v, r(1, n_kv_heads, n_tokens, index_dim), r(1, 1, n_tokens, index_dim)



@dataclass(frozen=True)
class Needles:
    """Planted needles of one structured data set."""

    blocks: Tuple[Tuple[int, ...], ...]  # per KV group: the needle blocks its index queries look for
    directions: np.ndarray  # [n_needles, Di] unit vectors, in the order of the flattened blocks


class IndexDemo:
    """Seeded synthetic index data for the explorer; caches what control changes can reuse.

    ``index_keys(n, kind, block_size)`` -> ik ``[1, 1, n, Di]`` float32 (one shared index-key head).
    ``index_queries(positions, group, ...)`` -> iq rows ``[1, 1, S, Di]`` of one KV group.
    """

    def __init__(self, n_groups: int, index_dim: int = 16, seed: int = 0, needles_per_group: int = 2,
                 needle_tokens: int = 4, key_strength: float = 16.0, query_pull: float = 4.0):
        for name, v in (("n_groups", n_groups), ("index_dim", index_dim), ("needles_per_group", needles_per_group),
                        ("needle_tokens", needle_tokens)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"IndexDemo {name} must be an int >= 1, got {v!r}")
        self.n_groups, self.index_dim, self.seed = n_groups, index_dim, seed
        self.needles_per_group, self.needle_tokens = needles_per_group, needle_tokens
        # A needle key scores key_strength * query_pull * index_scale, while the pull adds only
        # query_pull-sized noise to random keys: a strong key and a gentle pull keep needles on top.
        self.key_strength, self.query_pull = key_strength, query_pull
        self._keys = np.empty((0, index_dim), dtype=np.float32)  # prefix generated so far
        self._structured: Dict[Tuple[int, int], Tuple[np.ndarray, Needles]] = {}

    # ---- keys
    def _random_keys(self, n: int) -> np.ndarray:
        have = self._keys.shape[0]
        if have < n:
            first, last = have // _CHUNK, -(-n // _CHUNK)
            new = [np.random.default_rng([self.seed, 1, c]).standard_normal((_CHUNK, self.index_dim), dtype=np.float32)
                   for c in range(first, last)]
            self._keys = np.concatenate([self._keys[: first * _CHUNK]] + new)
        return self._keys[:n]

    def needles(self, n: int, block_size: int) -> Needles:
        """Needle blocks per group for a sequence of n tokens: in the first 3/4, never block 0."""
        nb = -(-n // block_size)
        candidates = np.arange(1, max(1, (3 * nb) // 4))
        rng = np.random.default_rng([self.seed, 3, n, block_size])
        count = min(self.n_groups * self.needles_per_group, candidates.size, self.index_dim)
        chosen = np.sort(rng.choice(candidates, size=count, replace=False)) if count else np.array([], dtype=np.int64)
        # orthonormal directions (count <= Di), so one needle's key does not score for another's query
        basis, _ = np.linalg.qr(rng.standard_normal((self.index_dim, self.index_dim)))
        per_group = tuple(tuple(int(b) for b in chosen[g::self.n_groups]) for g in range(self.n_groups))
        order = [i for g in range(self.n_groups) for i in range(g, count, self.n_groups)]
        return Needles(blocks=per_group, directions=basis.T[order].astype(np.float32))

    def index_keys(self, n: int, kind: str = "random", block_size: int = 128) -> torch.Tensor:
        """ik ``[1, 1, n, Di]`` float32 (shares memory with the cache: do not modify in place)."""
        _check_kind(kind)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1 (tokens), got {n!r}")
        if kind == "random":
            return torch.from_numpy(self._random_keys(n))[None, None]
        key = (n, block_size)
        if key not in self._structured:
            keys = self._random_keys(n).copy()
            nd = self.needles(n, block_size)
            rng = np.random.default_rng([self.seed, 4, n, block_size])
            flat = [b for g in range(self.n_groups) for b in nd.blocks[g]]
            for b, u in zip(flat, nd.directions):
                lo, hi = b * block_size, min(n, (b + 1) * block_size)
                rows = rng.choice(np.arange(lo, hi), size=min(self.needle_tokens, hi - lo), replace=False)
                keys[rows] = self.key_strength * u
            self._structured = {key: (keys, nd)}  # keep one: a 1M-token copy is 64 MB at Di=16
        return torch.from_numpy(self._structured[key][0])[None, None]

    # ---- queries
    def index_queries(self, positions, group: int, kind: str = "random", n: Optional[int] = None,
                      block_size: int = 128) -> torch.Tensor:
        """iq rows ``[1, 1, S, Di]`` of KV group ``group`` at ``positions`` (seeded per position).

        Structured data needs the sequence length ``n`` and ``block_size`` (they place the needles).
        """
        _check_kind(kind)
        if not 0 <= group < self.n_groups:
            raise ValueError(f"group must be in [0, {self.n_groups}), got {group!r}")
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        rows = np.stack([np.random.default_rng([self.seed, 2, group, int(p)]).standard_normal(self.index_dim)
                         for p in pos]).astype(np.float32) if pos.size else np.empty((0, self.index_dim), np.float32)
        if kind == "structured":
            if n is None:
                raise ValueError("structured index queries need n (the sequence length) to place the needles.")
            nd = self.needles(n, block_size)
            start = sum(len(nd.blocks[g]) for g in range(group))
            pull = nd.directions[start:start + len(nd.blocks[group])].sum(0)
            rows = rows + self.query_pull * pull
        return torch.from_numpy(rows)[None, None]


def _check_kind(kind: str) -> None:
    if kind not in DATA_KINDS:
        raise ValueError(f"data kind must be one of {DATA_KINDS}, got {kind!r}")

