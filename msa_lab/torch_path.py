"""Memory-lean MSA in plain torch: the CPU path for long contexts (64K+ tokens).

Same contract as ``reference.py``, computed in float32 and in query chunks:
  - selection scores one query chunk against the keys it can see, one key tile at a time, keeping
    only the block maxima, so memory is O(chunk x Nk / block_size) instead of O(Nq x Nk);
  - attention takes tiles of consecutive queries, which mostly select the same blocks: it gathers
    the union of a tile's blocks once and masks each query to its own, so K/V rows are copied once
    per tile instead of once per (query, slot); memory is O(chunk x top_k x block_size).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import MSAConfig

_BUDGET_BYTES = 256 << 20  # per-chunk scratch; keeps a 64K-token CPU prefill well inside a laptop's RAM
# Scores per key tile of the selection (8 MiB float32): the tile is written by the matmul and read
# back by the block max while still in cache; a whole [chunk x Nk] score matrix went through RAM
# several times (measured 4x slower at 32K keys on a 2-core EPYC).
_KEY_TILE_SCORES = 2 << 20
_SELECT_QUERIES = 512  # queries per selection chunk: more only grows the [chunk, blocks] scratch
# Queries per attention tile. 32 consecutive queries of msa-tiny select ~28 distinct blocks (vs 8 per
# query), so scoring the union costs ~3.5x the flops of exact gathering but one copy of K/V per tile.
_ATTN_TILE = 32
_ATTN_QUERIES = 256  # queries per attention chunk (8 tiles): keeps its scratch in cache
_LOG2E, _LN2 = 1.4426950408889634, 0.6931471805599453


def _chunk_len(per_query_bytes: int, n_q: int) -> int:
    return max(1, min(n_q, _BUDGET_BYTES // max(per_query_bytes, 1)))


# ----------------------------------------------------------------------------- selection
def select_blocks(iq: torch.Tensor, ik: torch.Tensor, cfg: MSAConfig) -> torch.Tensor:
    """int32 [B, Hkv, Nq, top_k], -1 padded. See reference.select_blocks."""
    B, Hkv, Nq, Di = iq.shape
    Nk = ik.shape[2]
    nb = cfg.num_blocks(Nk)
    k_top = min(cfg.top_k, nb)
    out = torch.full((B, Hkv, Nq, cfg.top_k), -1, dtype=torch.int32, device=iq.device)
    # per query: its block maxima plus the masks and tie ranks of _top_blocks (int64), per group
    step = min(_SELECT_QUERIES, _chunk_len(B * Hkv * nb * 16, Nq))
    # autocast would run the score matmul in bf16 even into a float32 out=; this path is float32
    with torch.autocast(iq.device.type, enabled=False):
        for s0 in range(0, Nq, step):
            s1 = min(Nq, s0 + step)
            pos = torch.arange(Nk - Nq + s0, Nk - Nq + s1, device=iq.device)  # [C]
            best = _block_scores(iq[:, :, s0:s1], ik, pos, cfg)  # [B, Hkv, C, blocks visible to the chunk]
            kk = min(k_top, best.shape[-1])
            out[:, :, s0:s1, :kk] = _top_blocks(best, pos, cfg, kk)
    return out


def _block_scores(iq: torch.Tensor, ik: torch.Tensor, pos: torch.Tensor, cfg: MSAConfig) -> torch.Tensor:
    """Index score per (query, block) for the queries at ``pos``: float32 [B, Hkv, C, nb_vis].

    Max over the block's visible keys of iq . ik * index_scale, a NaN dot product counting as -inf;
    -inf where no key is visible (blocks are not forced here).
    """
    B, Hkv, C, Di = iq.shape
    Hik, bs = ik.shape[1], cfg.block_size
    n_vis = int(pos[-1]) + 1  # keys any query of this chunk can see
    per_ik = Hkv // Hik  # index-query heads scored against one index-key head in a single matmul
    # block-major, so the max over a tile's key rows writes whole rows
    best = torch.empty(B, Hik, -(-n_vis // bs), per_ik * C, device=iq.device)
    for b in range(B):
        for j in range(Hik):
            rows = iq[b, j * per_ik:(j + 1) * per_ik].reshape(per_ik * C, Di).float()
            keys = ik[b, j, :n_vis]
            _block_max_into(best[b, j], rows, keys, pos, bs, clean=False)
            if torch.isnan(best[b, j]).any():  # amax propagates NaN: redo with NaN scores as -inf
                _block_max_into(best[b, j], rows, keys, pos, bs, clean=True)
    # scaling after the max is exact (x -> x * scale rounds monotonically, so it commutes with max)
    # and costs a pass over blocks instead of keys
    best.mul_(cfg.index_softmax_scale(Di))
    return best.view(B, Hik, -1, per_ik, C).permute(0, 1, 3, 4, 2).reshape(B, Hkv, C, -1)


def _block_max_into(dst: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor, pos: torch.Tensor, bs: int,
                    clean: bool) -> None:
    """dst [nb_vis, R] = max over each block's keys of keys . rows, for R = heads x C query rows.

    Keys before the block of the first query are visible to every row and go tile by tile, unmasked;
    the rest (the diagonal, about C keys) are masked causally. clean: NaN scores count as -inf.
    """
    R = rows.shape[0]
    n_vis = keys.shape[0]
    d0 = int(pos[0]) // bs * bs
    rows_t = rows.t()
    tile = max(bs, _KEY_TILE_SCORES // R // bs * bs)
    buf = torch.empty(min(tile, d0), R, device=rows.device)
    for k0 in range(0, d0, tile):
        k1 = min(d0, k0 + tile)
        sc = torch.mm(keys[k0:k1].float(), rows_t, out=buf[:k1 - k0])
        if clean:
            sc.nan_to_num_(nan=-float("inf"), posinf=float("inf"), neginf=-float("inf"))
        torch.amax(sc.view(-1, bs, R), 1, out=dst[k0 // bs:k1 // bs])
    sc = torch.mm(keys[d0:].float(), rows_t)  # [n_vis - d0, R]
    if clean:
        sc.nan_to_num_(nan=-float("inf"), posinf=float("inf"), neginf=-float("inf"))
    key = torch.arange(d0, n_vis, device=rows.device)
    sc.masked_fill_(key[:, None] > pos.repeat(R // pos.numel())[None, :], -float("inf"))
    sc = F.pad(sc, (0, 0, 0, -(n_vis - d0) % bs), value=-float("inf"))  # the last block may be partial
    torch.amax(sc.view(-1, bs, R), 1, out=dst[d0 // bs:])


def _top_blocks(best: torch.Tensor, pos: torch.Tensor, cfg: MSAConfig, kk: int) -> torch.Tensor:
    """Force, rank and pick kk blocks per row of best [B, Hkv, C, nb_vis] (overwritten): int32, -1 padded."""
    own = (pos // cfg.block_size)[:, None]
    b = torch.arange(best.shape[-1], device=best.device)[None, :]
    visible = b <= own
    forced = visible & ((b < cfg.init_blocks) | (b > own - cfg.local_blocks))
    # visible blocks with all -inf scores must still beat invisible ones
    best.masked_fill_(visible & (best == -float("inf")), -torch.finfo(best.dtype).max)
    best.masked_fill_(~visible, -float("inf")).masked_fill_(forced, float("inf"))
    blocks = _topk_lower_on_ties(best, kk)
    val = best.gather(-1, blocks)
    # listed as a stable descending sort lists them (score, then lower block): the order of the full sort
    val, order = val.sort(dim=-1, descending=True, stable=True)
    return blocks.gather(-1, order).masked_fill(val == -float("inf"), -1).to(torch.int32)


def _topk_lower_on_ties(x: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [..., k] ascending: the k largest of each row, exact ties going to the lower index.

    These are the first k of a stable descending sort (the reference's choice), at the cost of a
    top-k instead of a sort of every block. topk alone would not do: which of several tied values it
    keeps depends on the row length, so a chunked call could select other blocks than a full one.
    """
    kth = x.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)  # the k-th largest value
    above = x > kth
    tied = x == kth
    need = k - above.sum(-1, keepdim=True)  # >= 1 and <= the number of ties
    take = above | (tied & (tied.cumsum(-1) <= need))  # exactly k per row
    return take.nonzero()[:, -1].view(*x.shape[:-1], k)


# ----------------------------------------------------------------------------- attention
def sparse_attention(q, k, v, idx, cfg: MSAConfig, return_lse: bool = False):
    """O [B, Hq, Nq, D] in q.dtype (and LSE fp32 [B, Hq, Nq]). See reference.sparse_attention."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g, bs, K = Hq // Hkv, cfg.block_size, idx.shape[-1]
    scale = cfg.softmax_scale(D)
    qg = q.view(B, Hkv, g, Nq, D)
    o = torch.empty(B, Hkv, g, Nq, D, dtype=q.dtype, device=q.device)
    lse_out = torch.empty(B, Hkv, g, Nq, dtype=torch.float32, device=q.device)
    # per query, at worst: its K blocks of K and V gathered alone, and scores + probabilities over a
    # tile's union (at most tile x K blocks)
    union = min(_ATTN_TILE * K, cfg.num_blocks(Nk)) * bs
    step = _chunk_len(2 * K * bs * D * 4 + g * union * 4 * 2 + union, Nq)
    step = min(step, _ATTN_QUERIES)
    tile = min(_ATTN_TILE, step)
    step = step // tile * tile
    with torch.autocast(q.device.type, enabled=False):  # float32 whatever the caller's autocast
        for b in range(B):
            for h in range(Hkv):
                for s0 in range(0, Nq, step):
                    s1 = min(Nq, s0 + step)
                    pos = torch.arange(Nk - Nq + s0, Nk - Nq + s1, device=q.device)  # [C]
                    qc = qg[b, h, :, s0:s1].float() * (scale * _LOG2E)  # [g, C, D], scores in log2 units
                    o[b, h, :, s0:s1], lse_out[b, h, :, s0:s1] = _attend(qc, k[b, h], v[b, h], idx[b, h, s0:s1],
                                                                         pos, bs, tile)
    o = o.view(B, Hq, Nq, D)
    return (o, lse_out.view(B, Hq, Nq)) if return_lse else o


def _attend(qc, kh, vh, sel, pos, bs: int, tile: int):
    """Softmax attention of qc [g, C, D] (scaled) over its selected blocks: (O [g, C, D], LSE [g, C]).

    kh, vh [Nk, D] one group's keys and values; sel [C, K] the queries' blocks (-1 = none); pos [C].
    """
    g, C, D = qc.shape
    n_t = -(-C // tile)
    pad = n_t * tile - C
    sel = F.pad(sel.long(), (0, 0, 0, pad), value=-1).view(n_t, tile * sel.shape[-1])
    pos = F.pad(pos, (0, pad), value=-1).view(n_t, tile)  # padding rows see no key
    blocks, member = _tile_unions(sel, tile, sentinel=-(-kh.shape[0] // bs))
    u = blocks.shape[-1]
    key = blocks[..., None] * bs + torch.arange(bs, device=qc.device)  # [n_t, u, bs]
    allowed = member[..., None] & (key[:, None] <= pos[:, :, None, None])  # [n_t, tile, u, bs], causal
    key = key.view(n_t, u * bs).clamp(max=kh.shape[0] - 1)  # past-the-end keys are masked, never read
    kt, vt = kh[key].float(), vh[key].float()  # [n_t, u * bs, D]
    qt = F.pad(qc, (0, 0, 0, pad)).view(g, n_t, tile, D).transpose(0, 1).reshape(n_t, g * tile, D)
    s = torch.bmm(qt, kt.transpose(1, 2)).view(n_t, g, tile, u, bs)
    s.masked_fill_(~allowed[:, None], -float("inf"))
    s = s.view(n_t, g, tile, u * bs)
    m = s.amax(-1, keepdim=True)
    # exp2: torch's CPU exp runs at ~1.3 G/s, and ~0.3 G/s on -inf (the masked keys, most of a union);
    # exp2 at ~4 G/s on either, as accurate
    s.sub_(m.masked_fill(torch.isinf(m), 0.0)).exp2_()
    l = s.sum(-1)  # [n_t, g, tile]
    o = torch.bmm(s.view(n_t, g * tile, u * bs), vt).view(n_t, g, tile, D)
    empty = l == 0  # no selected visible key: O = 0, LSE = -inf
    o = o / l.masked_fill(empty, 1.0)[..., None]
    if tile > 1 and not bool(torch.isfinite(o).all()) and not bool(torch.isfinite(vt).all()):
        # a key outside a query's blocks still enters its output as 0 * v, which is NaN for a non-finite
        # v: gather per query instead, so non-finite values reach only the rows that select them
        return _attend(qc, kh, vh, sel.view(n_t * tile, -1)[:C], pos.view(-1)[:C], bs, 1)
    lse = ((m.squeeze(-1) + torch.log2(l)) * _LN2).masked_fill(empty, -float("inf"))
    o = o.transpose(0, 1).reshape(g, n_t * tile, D)[:, :C]
    return o, lse.transpose(0, 1).reshape(g, n_t * tile)[:, :C]


def _tile_unions(sel: torch.Tensor, tile: int, sentinel: int):
    """Distinct blocks of each tile and which query selects which.

    sel [n_t, tile * K] (-1 = none) -> blocks [n_t, u] ascending, padded with ``sentinel`` (a block
    past the last key), and member bool [n_t, tile, u].
    """
    n_t = sel.shape[0]
    srt = sel.sort(-1).values
    first = srt >= 0
    first[:, 1:] &= srt[:, 1:] != srt[:, :-1]
    u = max(1, int(first.sum(-1).max()))
    rank = torch.where(first, first.cumsum(-1) - 1, u)  # repeats and -1 go to a spare column
    blocks = torch.full((n_t, u + 1), sentinel, dtype=sel.dtype, device=sel.device)
    blocks = blocks.scatter_(1, rank, srt)[:, :u].contiguous()
    slot = torch.searchsorted(blocks, sel).masked_fill_(sel < 0, u)  # where each selection sits in the union
    member = torch.zeros(n_t, tile, u + 1, dtype=torch.bool, device=sel.device)
    return blocks, member.scatter_(2, slot.view(n_t, tile, -1), True)[..., :u]
