"""Memory-lean MSA in plain torch: the CPU path for long contexts (64K+ tokens).

Same contract as ``reference.py``, computed in float32 and in query chunks:
  - selection scores one query chunk against the keys it can see, so memory is
    O(chunk x Nk) instead of O(Nq x Nk);
  - attention walks the top_k slots with an online softmax, gathering one key block per slot,
    so memory is O(chunk x block_size x D) and work is O(Nq x top_k x block_size).
"""
from __future__ import annotations

import torch

from .config import MSAConfig

_BUDGET_BYTES = 256 << 20  # per-chunk scratch; keeps a 64K-token CPU prefill well inside a laptop's RAM


def _chunk_len(per_query_bytes: int, n_q: int) -> int:
    return max(1, min(n_q, _BUDGET_BYTES // max(per_query_bytes, 1)))


def select_blocks(iq: torch.Tensor, ik: torch.Tensor, cfg: MSAConfig) -> torch.Tensor:
    """int32 [B, Hkv, Nq, top_k], -1 padded. See reference.select_blocks."""
    B, Hkv, Nq, Di = iq.shape
    Nk = ik.shape[2]
    bs, nb = cfg.block_size, cfg.num_blocks(Nk)
    k_top = min(cfg.top_k, nb)
    scale = cfg.index_softmax_scale(Di)
    ikf = ik.float()
    out = torch.full((B, Hkv, Nq, cfg.top_k), -1, dtype=torch.int32, device=iq.device)
    step = _chunk_len(B * Hkv * nb * bs * 4 * 2, Nq)
    for s0 in range(0, Nq, step):
        s1 = min(Nq, s0 + step)
        pos = torch.arange(Nk - Nq + s0, Nk - Nq + s1, device=iq.device)  # [C]
        n_vis = int(pos[-1]) + 1  # keys any query of this chunk can see
        nb_vis = -(-n_vis // bs)
        # the score chunk is the big tensor of a long CPU prefill (chunk x visible keys), so every pass
        # over it is done in place and only where needed: measured 398 s for a 64K prefill before
        sc = torch.matmul(iq[:, :, s0:s1].float(), ikf[:, :, :n_vis].transpose(-1, -2))  # [B,Hkv|1.., C, n_vis]
        if sc.shape[1] != Hkv:
            sc = sc.expand(B, Hkv, s1 - s0, n_vis).contiguous()
        sc.mul_(scale).nan_to_num_(nan=-float("inf"), posinf=float("inf"), neginf=-float("inf"))
        d0 = int(pos[0])  # keys before the chunk's first query are visible to every query in it
        key = torch.arange(d0, n_vis, device=iq.device)
        sc[..., d0:].masked_fill_(key[None, :] > pos[:, None], -float("inf"))
        full = (n_vis // bs) * bs
        best = sc[..., :full].unflatten(-1, (full // bs, bs)).amax(-1)  # [B, Hkv, C, full blocks]
        if full < n_vis:  # the last, partial block
            best = torch.cat([best, sc[..., full:].amax(-1, keepdim=True)], dim=-1)
        own = (pos // bs)[:, None]
        b = torch.arange(nb_vis, device=iq.device)[None, :]
        visible = b <= own
        forced = visible & ((b < cfg.init_blocks) | (b > own - cfg.local_blocks))
        fmax = torch.finfo(best.dtype).max  # best may be bf16 under autocast
        # visible blocks with all -inf scores must still beat invisible ones
        best = torch.where(visible & (best == -float("inf")), torch.full_like(best, -fmax), best)
        best = best.masked_fill(~visible, -float("inf")).masked_fill(forced, float("inf"))
        kk = min(k_top, nb_vis)
        # a stable sort breaks exact ties toward the lower block, so a chunked call selects exactly
        # what the full call does (topk's tie order depends on the row length)
        val, idx = best.sort(dim=-1, descending=True, stable=True)
        val, idx = val[..., :kk], idx[..., :kk]
        out[:, :, s0:s1, :kk] = idx.masked_fill(val == -float("inf"), -1).to(torch.int32)
    return out


def sparse_attention(q, k, v, idx, cfg: MSAConfig, return_lse: bool = False):
    """O [B, Hq, Nq, D] in q.dtype (and LSE fp32 [B, Hq, Nq]). See reference.sparse_attention."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g, bs, K = Hq // Hkv, cfg.block_size, idx.shape[-1]
    scale = cfg.softmax_scale(D)
    # gather key rows straight from k/v (no padded copy of the cache: decode stays O(top_k * block))
    qg = q.view(B, Hkv, g, Nq, D)
    o = torch.empty(B, Hkv, g, Nq, D, dtype=q.dtype, device=q.device)
    lse_out = torch.empty(B, Hkv, g, Nq, dtype=torch.float32, device=q.device)
    bi = torch.arange(B, device=q.device).view(B, 1, 1)
    hi = torch.arange(Hkv, device=q.device).view(1, Hkv, 1)
    step = _chunk_len(B * Hkv * (g + 2 * D // max(g, 1) + 2) * bs * D * 4, Nq)
    for s0 in range(0, Nq, step):
        s1 = min(Nq, s0 + step)
        C = s1 - s0
        pos = torch.arange(Nk - Nq + s0, Nk - Nq + s1, device=q.device)  # [C]
        qc = qg[:, :, :, s0:s1].float() * scale  # [B, Hkv, g, C, D]
        m = torch.full((B, Hkv, g, C), -float("inf"), device=q.device)
        l = torch.zeros(B, Hkv, g, C, device=q.device)
        acc = torch.zeros(B, Hkv, g, C, D, device=q.device)
        for t in range(K):
            blk = idx[:, :, s0:s1, t].long()  # [B, Hkv, C]
            valid = blk >= 0
            blk = blk.clamp(min=0)
            key = blk[..., None] * bs + torch.arange(bs, device=q.device)  # [B, Hkv, C, bs]
            ok = (key <= pos[None, None, :, None]) & valid[..., None]  # also drops keys past Nk
            key = key.clamp(max=Nk - 1)
            kt = k[bi[..., None], hi[..., None], key].float()  # [B, Hkv, C, bs, D]
            vt = v[bi[..., None], hi[..., None], key].float()
            s = torch.einsum("bhgcd,bhcjd->bhgcj", qc, kt)
            s = s.masked_fill(~ok[:, :, None], -float("inf"))
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - safe[..., None])
            corr = torch.exp(m - safe)
            l = l * corr + p.sum(-1)
            acc = acc * corr[..., None] + torch.einsum("bhgcj,bhcjd->bhgcd", p, vt)
            m = m_new
        empty = l == 0
        o[:, :, :, s0:s1] = (acc / torch.where(empty, torch.ones_like(l), l)[..., None]).to(q.dtype)
        lse_out[:, :, :, s0:s1] = torch.where(empty, torch.full_like(m, -float("inf")), m + torch.log(l))
    o = o.view(B, Hq, Nq, D)
    return (o, lse_out.view(B, Hq, Nq)) if return_lse else o
