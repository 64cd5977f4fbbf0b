"""The MSA contract as plain torch. This is the oracle every kernel is tested against.

Readability beats speed here: everything is computed in float64 with full [Nq, Nk] matrices, so
use it only at small shapes. ``msa_lab.attention`` has the fast paths.

Conventions (the contract, see README "The MSA contract"):
  q [B, Hq, Nq, D]   k, v [B, Hkv, Nk, D]   iq [B, Hkv, Nq, Di]   ik [B, Hik, Nk, Di], Hik in {1, Hkv}
  query i sits at position p_i = Nk - Nq + i and sees keys j <= p_i  (causal, bottom-right aligned)
  key j lies in block j // block_size
"""
from __future__ import annotations

import torch

from .config import MSAConfig


def query_positions(n_q: int, n_k: int, device=None) -> torch.Tensor:
    """[Nq] absolute position of each query (bottom-right aligned)."""
    return torch.arange(n_k - n_q, n_k, device=device)


def causal_mask(n_q: int, n_k: int, device=None) -> torch.Tensor:
    """[Nq, Nk] bool, True where query i may see key j."""
    return torch.arange(n_k, device=device)[None, :] <= query_positions(n_q, n_k, device)[:, None]


def _expand_index_keys(ik: torch.Tensor, n_kv: int) -> torch.Tensor:
    return ik.expand(ik.shape[0], n_kv, *ik.shape[2:]) if ik.shape[1] == 1 else ik


def block_scores(iq: torch.Tensor, ik: torch.Tensor, cfg: MSAConfig) -> torch.Tensor:
    """Index score per (query, block): [B, Hkv, Nq, n_blocks] float64.

    score[b] = max over visible keys j of block b of iq . ik[j] * index_scale; -inf where the block
    has no visible key. No forcing here.
    """
    B, Hkv, Nq, Di = iq.shape
    Nk = ik.shape[2]
    bs = cfg.block_size
    nb = cfg.num_blocks(Nk)
    ik = _expand_index_keys(ik, Hkv)
    s = torch.einsum("bhid,bhjd->bhij", iq.double(), ik.double()) * cfg.index_softmax_scale(Di)
    # A NaN dot product counts as -inf. Visibility comes from positions, never from scores.
    s = torch.nan_to_num(s, nan=-float("inf"), posinf=float("inf"), neginf=-float("inf"))
    s = s.masked_fill(~causal_mask(Nq, Nk, iq.device), float("nan"))  # marks "not visible"
    pad = nb * bs - Nk
    s = torch.nn.functional.pad(s, (0, pad), value=float("nan")).view(B, Hkv, Nq, nb, bs)
    visible = ~torch.isnan(s)
    # max over visible keys only: invisible keys are NaN placeholders, replaced by -inf for the max,
    # but a visible key whose score is -inf must still make its block visible.
    best = torch.where(visible, s, torch.full_like(s, -float("inf"))).amax(-1)
    any_visible = visible.any(-1)
    # A visible block must outrank every invisible one even when all its scores are -inf
    # (kernels use -FLT_MAX for the same purpose).
    best = torch.where(any_visible & (best == -float("inf")), torch.full_like(best, -1e308), best)
    return best.masked_fill(~any_visible, -float("inf"))


def forced_blocks(n_q: int, n_k: int, cfg: MSAConfig, device=None) -> torch.Tensor:
    """[Nq, n_blocks] bool: the init blocks and the local window, where visible."""
    nb = cfg.num_blocks(n_k)
    own = (query_positions(n_q, n_k, device) // cfg.block_size)[:, None]  # [Nq, 1]
    b = torch.arange(nb, device=device)[None, :]
    visible = b <= own
    init = b < cfg.init_blocks
    local = (b > own - cfg.local_blocks) & (b <= own)
    return visible & (init | local)


def select_blocks(iq: torch.Tensor, ik: torch.Tensor, cfg: MSAConfig) -> torch.Tensor:
    """Selected blocks: int32 [B, Hkv, Nq, top_k], padded with -1, order unspecified."""
    Nq, Nk = iq.shape[2], ik.shape[2]
    s = block_scores(iq, ik, cfg)
    s = s.masked_fill(forced_blocks(Nq, Nk, cfg, iq.device), float("inf"))
    k = min(cfg.top_k, s.shape[-1])
    val, idx = s.sort(dim=-1, descending=True, stable=True)  # exact ties: the lower block wins
    val, idx = val[..., :k], idx[..., :k]
    idx = idx.masked_fill(val == -float("inf"), -1).to(torch.int32)
    if k < cfg.top_k:
        idx = torch.nn.functional.pad(idx, (0, cfg.top_k - k), value=-1)
    return idx


def selection_to_key_mask(idx: torch.Tensor, n_k: int, cfg: MSAConfig) -> torch.Tensor:
    """Selected blocks -> [B, Hkv, Nq, Nk] bool mask of the keys each query attends to (causal)."""
    B, Hkv, Nq, K = idx.shape
    nb = cfg.num_blocks(n_k)
    sel = torch.zeros(B, Hkv, Nq, nb + 1, dtype=torch.bool, device=idx.device)
    sel.scatter_(-1, torch.where(idx < 0, nb, idx.long()), True)  # -1 padding goes to a spare column
    keys = sel[..., :nb].repeat_interleave(cfg.block_size, dim=-1)[..., :n_k]
    return keys & causal_mask(Nq, n_k, idx.device)


def sparse_attention(q, k, v, idx, cfg: MSAConfig, return_lse: bool = False):
    """Exact softmax attention over the selected blocks. O [B, Hq, Nq, D] in q.dtype, LSE fp32 [B, Hq, Nq].

    A query with no selected visible key gets O = 0 and LSE = -inf.
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    mask = selection_to_key_mask(idx, Nk, cfg).repeat_interleave(g, dim=1)  # [B, Hq, Nq, Nk]
    kk = k.double().repeat_interleave(g, dim=1)
    vv = v.double().repeat_interleave(g, dim=1)
    s = torch.einsum("bhid,bhjd->bhij", q.double(), kk) * cfg.softmax_scale(D)
    s = s.masked_fill(~mask, -float("inf"))
    lse = torch.logsumexp(s, dim=-1)  # -inf on empty rows
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    o = torch.einsum("bhij,bhjd->bhid", p, vv).to(q.dtype)
    return (o, lse.float()) if return_lse else o


def msa_attention(q, k, v, iq, ik, cfg: MSAConfig, return_lse=False, return_indices=False):
    idx = select_blocks(iq, ik, cfg)
    out = sparse_attention(q, k, v, idx, cfg, return_lse=return_lse)
    out = out if isinstance(out, tuple) else (out,)
    out = out + ((idx,) if return_indices else ())
    return out if len(out) > 1 else out[0]


def dense_causal_attention(q, k, v, scale=None, return_lse=False):
    """Dense GQA causal attention (bottom-right aligned) in float64: the 'top_k covers all' limit."""
    B, Hq, Nq, D = q.shape
    g = Hq // k.shape[1]
    Nk = k.shape[2]
    s = torch.einsum("bhid,bhjd->bhij", q.double(), k.double().repeat_interleave(g, 1))
    s = (s * (scale or D**-0.5)).masked_fill(~causal_mask(Nq, Nk, q.device), -float("inf"))
    lse = torch.logsumexp(s, -1)
    o = torch.einsum("bhij,bhjd->bhid", s.softmax(-1), v.double().repeat_interleave(g, 1)).to(q.dtype)
    return (o, lse.float()) if return_lse else o


def block_attention_mass(q, k, cfg: MSAConfig) -> torch.Tensor:
    """Dense causal attention mass per key block, averaged over each group's query heads.

    [B, Hkv, Nq, n_blocks] float32, rows sum to 1. This is the indexer's distillation target and
    the "ground truth" of indexer recall.
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    s = torch.einsum("bhid,bhjd->bhij", q.double(), k.double().repeat_interleave(g, 1)) * cfg.softmax_scale(D)
    p = s.masked_fill(~causal_mask(Nq, Nk, q.device), -float("inf")).softmax(-1)
    nb = cfg.num_blocks(Nk)
    p = torch.nn.functional.pad(p, (0, nb * cfg.block_size - Nk)).view(B, Hq, Nq, nb, cfg.block_size).sum(-1)
    return p.view(B, Hkv, g, Nq, nb).mean(2).float()
