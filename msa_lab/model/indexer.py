"""The index branch at training time: differentiable block scores and their distillation target.

The indexer learns by KL distillation toward the main branch's dense attention mass per key block,
averaged over each KV group's query heads (msa_lab.reference.block_attention_mass semantics). Both
are computed for a subset of query positions only (``q_slots``), so the cost is O(S x N) instead of
O(N x N) at training lengths; the target is computed without grad in query chunks.
The KL is taken over the blocks that are not forced (free_blocks), renormalised: forced blocks are
selected whatever the indexer says, and much of the dense mass sits on the local window, which a
NoPE indexer cannot (and need not) predict by recency.

concentration_loss is the other direction, and optional (msa_lab.train --concentration-weight): it trains
the main branch to keep its dense attention inside the blocks the indexer selects. Per query head it is
KL(sparse || dense) = -log(dense mass on the selected blocks), the information MSA discards by attending to
those blocks only. The distillation alone cannot lift recall past what the best k blocks hold, and a main
branch that spreads its attention over every block leaves that ceiling low (data/train/probes/sink-2026-11-27).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import MSAConfig

_CHUNK_BYTES = 256 << 20  # scratch per query chunk of the dense target


def _pad_blocks(s: torch.Tensor, n_keys: int, cfg: MSAConfig, fill: float) -> torch.Tensor:
    """[..., Nk] -> [..., nb, block_size] (the last block padded with ``fill``)."""
    nb = cfg.num_blocks(n_keys)
    s = F.pad(s, (0, nb * cfg.block_size - n_keys), value=fill)
    return s.view(*s.shape[:-1], nb, cfg.block_size)


def index_block_logits(iq: torch.Tensor, ik: torch.Tensor, q_slots: torch.Tensor, cfg: MSAConfig) -> torch.Tensor:
    """Index score per (query, block) with autograd: [B, Hkv, S, nb] float32, -inf where the block is invisible.

    iq: [B, Hkv, S, Di] index queries of the S queries sitting at key slots ``q_slots`` (int64 [S]).
    ik: [B, Hik, Nk, Di]. Score of block b = max over visible keys j in b of iq . ik[j] * index_scale,
    exactly what select_blocks ranks (forcing aside).
    """
    n_keys = ik.shape[2]
    s = torch.matmul(iq.float(), ik.float().transpose(-1, -2)) * cfg.index_softmax_scale(iq.shape[-1])
    visible = torch.arange(n_keys, device=iq.device)[None, :] <= q_slots[:, None]  # [S, Nk]
    s = s.masked_fill(~visible, -float("inf"))
    return _pad_blocks(s, n_keys, cfg, -float("inf")).amax(-1)


@torch.no_grad()
def dense_block_mass(q: torch.Tensor, k: torch.Tensor, q_slots: torch.Tensor, cfg: MSAConfig,
                     scale: float | None = None) -> torch.Tensor:
    """Dense causal attention mass per key block, averaged over each group's heads: [B, Hkv, S, nb] float32.

    q: [B, Hq, S, D] queries at key slots ``q_slots`` (int64 [S]); k: [B, Hkv, Nk, D]. Rows sum to 1.
    Equals reference.block_attention_mass(q, k, cfg) when q_slots = arange(Nk - S, Nk).
    """
    B, Hq, S, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g, nb = Hq // Hkv, cfg.num_blocks(Nk)
    scale = cfg.softmax_scale(D) if scale is None else scale
    out = torch.empty(B, Hkv, S, nb, dtype=torch.float32, device=q.device)
    qg = q.reshape(B, Hkv, g, S, D)
    kf = k.float()[:, :, None]  # [B, Hkv, 1, Nk, D]
    step = max(1, min(S, _CHUNK_BYTES // max(1, B * Hq * Nk * 4 * 2)))
    for s0 in range(0, S, step):
        s1 = min(S, s0 + step)
        sc = torch.matmul(qg[:, :, :, s0:s1].float(), kf.transpose(-1, -2)) * scale  # [B, Hkv, g, C, Nk]
        visible = torch.arange(Nk, device=q.device)[None, :] <= q_slots[s0:s1, None]
        p = sc.masked_fill(~visible, -float("inf")).softmax(-1)
        out[:, :, s0:s1] = _pad_blocks(p, Nk, cfg, 0.0).sum(-1).mean(2)
    return out


def free_blocks(q_slots: torch.Tensor, n_keys: int, cfg: MSAConfig) -> torch.Tensor:
    """bool [S, nb]: visible blocks that are not forced (init/local) for queries at ``q_slots``.

    Only these compete for the top_k - forced slots, so only these are worth ranking.
    """
    own = (q_slots // cfg.block_size)[:, None]
    b = torch.arange(cfg.num_blocks(n_keys), device=q_slots.device)[None, :]
    forced = (b < cfg.init_blocks) | ((b > own - cfg.local_blocks) & (b <= own))
    return (b <= own) & ~forced


def selection_mask(scores: torch.Tensor, q_slots: torch.Tensor, n_keys: int, cfg: MSAConfig, k: int) -> torch.Tensor:
    """bool [B, Hkv, S, nb]: the k blocks select_blocks would keep at top_k = k, from index scores [B, Hkv, S, nb]
    (index_block_logits; -inf where invisible). The forced init/local blocks count inside the k, as there."""
    nb = scores.shape[-1]
    visible = torch.arange(nb, device=scores.device)[None, :] <= (q_slots // cfg.block_size)[:, None]  # [S, nb]
    forced = visible & ~free_blocks(q_slots, n_keys, cfg)
    s = scores.masked_fill(forced, float("inf")).masked_fill(~visible, -float("inf"))
    top = s.topk(min(k, nb), dim=-1).indices
    return torch.zeros_like(s, dtype=torch.bool).scatter_(-1, top, True) & visible


def concentration_loss(q: torch.Tensor, k: torch.Tensor, q_slots: torch.Tensor, selected: torch.Tensor,
                       cfg: MSAConfig, scale: float | None = None) -> torch.Tensor:
    """Mean over batch, query heads and queries of -log(dense attention mass on the selected blocks).

    q: [B, Hq, S, D] queries at key slots ``q_slots`` (int64 [S]); k: [B, Hkv, Nk, D]; selected: bool
    [B, Hkv, S, nb] (selection_mask), which must hold each query's own block. Differentiable in q and k.
    Equals -log of msa_lab.api.selection_recall per head; 0 where every visible block is selected.
    """
    B, Hq, S, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    scale = cfg.softmax_scale(D) if scale is None else scale
    sc = torch.matmul(q.reshape(B, Hkv, Hq // Hkv, S, D).float(), k.float()[:, :, None].transpose(-1, -2)) * scale
    visible = torch.arange(Nk, device=q.device)[None, :] <= q_slots[:, None]  # [S, Nk]
    sc = sc.masked_fill(~visible, -float("inf"))  # [B, Hkv, g, S, Nk]
    keys = selected.repeat_interleave(cfg.block_size, dim=-1)[..., :Nk][:, :, None]  # [B, Hkv, 1, S, Nk]
    return (sc.logsumexp(-1) - sc.masked_fill(~keys, -float("inf")).logsumexp(-1)).mean()


def indexer_kl(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """KL(target || softmax(logits)) over blocks, mean over rows. logits/target [B, Hkv, S, nb].

    keep: optional bool [S, nb]; both distributions are restricted to (and renormalised over) these
    blocks, and rows with nothing to keep are left out.
    """
    if keep is not None:
        logits = logits.masked_fill(~keep, -float("inf"))
        target = target * keep
        mass = target.sum(-1, keepdim=True)
        rows = keep.any(-1) & (mass > 0).all(0).all(0).squeeze(-1)  # [S]
        if not bool(rows.any()):
            return logits.new_zeros(())
        logits, target = logits[:, :, rows], target[:, :, rows] / mass[:, :, rows]
    logp = torch.log_softmax(logits, dim=-1)
    # blocks outside the distribution have target 0 and logp -inf: 0 * -inf must count as 0
    logp = torch.where(target > 0, logp, torch.zeros_like(logp))
    kl = (torch.xlogy(target, target) - target * logp).sum(-1)
    return kl.mean()
