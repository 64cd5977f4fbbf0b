"""Triton kernels for MSA on Hopper, importable as ``msa_lab.kernels`` (see pyproject's package-dir).

Ops (called by msa_lab.attention with backend="triton"; same contract as msa_lab.reference):
  select_blocks(iq, ik, cfg) -> int32 idx [B, Hkv, Nq, top_k]       kernels/indexer.py
  sparse_attention(q, k, v, idx, cfg, return_lse=False)             prefill or decode kernel
  msa_attention(q, k, v, iq, ik, cfg, return_lse=False, return_indices=False)

Supported: head dims SUPPORTED_HEAD_DIMS, dtypes SUPPORTED_DTYPES; CUDA tensors, or any device under
TRITON_INTERPRET=1 (slow; tests). q/k/v may have any strides for B, H and N (a transposed
[B, N, H, D] view costs no copy); a last dim that is not contiguous is copied once with a warning.

Index entries are NOT checked here: msa_lab.sparse_attention validates idx (range, no future blocks,
no duplicates) before calling. An unchecked bad idx passed straight to these functions is undefined
behaviour (out-of-bounds reads, wrong results), not an error.
"""
from __future__ import annotations

import os

from ._common import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS
from .sparse_attention import sparse_attention_prefill
from .sparse_decode import MAX_DECODE_TOKENS, sparse_attention_decode
from . import sparse_attention_kv_outer as _kv_outer  # module kept reachable under its own name

# Prefill schedule (MSA_LAB_PREFILL_SCHEDULE = auto | per_token | kv_outer; default auto). Measured on
# one H100, m3 shapes, same call (data/bench/2026-11-27-nvidia-h100-80gb-hbm3-{flex,kvouter}.json):
# sparse attention at 128K per-token 72.8 ms vs KV-outer 79.1 ms; at 512K 441 ms vs 321 ms. So auto
# takes KV-outer from KV_OUTER_MIN_TOKENS query tokens in one call (between the two measured points).
PREFILL_SCHEDULES = ("auto", "per_token", "kv_outer")
KV_OUTER_MIN_TOKENS = 262_144


def prefill_schedule(n_queries: int) -> str:
    """"per_token" or "kv_outer" for a prefill call of n_queries tokens (MSA_LAB_PREFILL_SCHEDULE)."""
    want = os.environ.get("MSA_LAB_PREFILL_SCHEDULE", "auto") or "auto"
    if want not in PREFILL_SCHEDULES:
        raise ValueError(f"MSA_LAB_PREFILL_SCHEDULE={want!r} is not one of {PREFILL_SCHEDULES}; unset it for 'auto'.")
    if want == "auto":
        return "kv_outer" if n_queries >= KV_OUTER_MIN_TOKENS else "per_token"
    return want

from .indexer import SUPPORTED_INDEX_DIMS, block_scores, select_blocks, selection_agreement


def sparse_attention(q, k, v, idx, cfg, return_lse: bool = False):
    """Exact causal softmax attention over each query's selected key blocks.

    q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]`` (Nq <= Nk, query i at key position Nk - Nq + i),
    idx ``int32 [B, Hkv, Nq, top_k]`` (validated by the caller, -1 padded). Returns O ``[B, Hq, Nq, D]``
    in q's dtype, plus LSE ``float32 [B, Hq, Nq]`` (natural log) if return_lse; empty rows: 0 and -inf.
    Nq <= 16 runs the split-over-blocks decode kernel, longer chunks a prefill kernel (prefill_schedule).
    """
    if q.shape[2] <= MAX_DECODE_TOKENS:
        return sparse_attention_decode(q, k, v, idx, cfg, return_lse=return_lse)
    if prefill_schedule(q.shape[2]) == "kv_outer":
        return _kv_outer.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=return_lse)
    return sparse_attention_prefill(q, k, v, idx, cfg, return_lse=return_lse)


def msa_attention(q, k, v, iq, ik, cfg, return_lse: bool = False, return_indices: bool = False):
    """Index branch (select_blocks) then main branch (sparse_attention). Shapes as in msa_lab.msa_attention:
    returns O, then LSE if return_lse, then idx ``int32 [B, Hkv, Nq, top_k]`` if return_indices."""
    idx = select_blocks(iq, ik, cfg)
    out = sparse_attention(q, k, v, idx, cfg, return_lse=return_lse)
    out = out if isinstance(out, tuple) else (out,)
    out = out + ((idx,) if return_indices else ())
    return out if len(out) > 1 else out[0]


def unsupported_reason(q, k=None):
    """None if these kernels take tensors like q (and k), else a sentence saying why not.

    Lets a dispatcher fall back to the torch path instead of failing (e.g. head dim 16)."""
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (kernels support {', '.join(str(d) for d in SUPPORTED_DTYPES)})"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head dim {q.shape[-1]} (kernels support {', '.join(map(str, SUPPORTED_HEAD_DIMS))})"
    return None


def unsupported_index_reason(iq):
    """None if the indexer takes index tensors like iq, else a sentence saying why not."""
    if iq.dtype not in SUPPORTED_DTYPES:
        return f"index dtype {iq.dtype} (kernels support {', '.join(str(d) for d in SUPPORTED_DTYPES)})"
    if iq.shape[-1] not in SUPPORTED_INDEX_DIMS:
        return f"index dim {iq.shape[-1]} (the indexer supports {', '.join(map(str, SUPPORTED_INDEX_DIMS))})"
    return None


__all__ = [
    "select_blocks", "block_scores", "sparse_attention", "msa_attention", "sparse_attention_prefill",
    "sparse_attention_decode", "unsupported_reason", "SUPPORTED_HEAD_DIMS", "SUPPORTED_DTYPES",
    "SUPPORTED_INDEX_DIMS", "selection_agreement", "unsupported_index_reason",
]
