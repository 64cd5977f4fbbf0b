"""Public MSA ops. Signatures are fixed; backends plug in behind them.

Backends:
  "triton"    the Hopper kernels in msa_lab.kernels (CUDA tensors, or any tensor under TRITON_INTERPRET=1)
  "torch"     the memory-lean chunked torch path (msa_lab.torch_path), for CPUs and long contexts
  "reference" the float64 oracle (msa_lab.reference), small shapes only
``backend=None`` picks the first that applies, in that order; ``msa_lab.attention.resolve_backend``
says which and why (``msa-lab info`` prints it). In automatic mode, shapes or dtypes the kernels do
not support (``msa_lab.kernels.unsupported_reason``) run on the torch path; a forced
``backend="triton"`` raises instead, naming what is supported.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional, Tuple

import torch

from . import checks, reference, torch_path
from .config import MSAConfig

BACKENDS = ("triton", "torch", "reference")


def _kernels():
    """msa_lab.kernels if it imports and provides the ops, else None (with the reason)."""
    try:
        mod = importlib.import_module("msa_lab.kernels")
    except Exception as e:  # noqa: BLE001 - any import failure means "no kernels", reported by resolve_backend
        return None, f"msa_lab.kernels failed to import ({type(e).__name__}: {e})"
    if not all(hasattr(mod, f) for f in ("select_blocks", "sparse_attention")):
        return None, "msa_lab.kernels provides no kernels yet"
    return mod, ""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(device: torch.device | str = "cpu", backend: Optional[str] = None) -> Tuple[str, str]:
    """(backend, reason) for tensors on ``device``."""
    device = torch.device(device)
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or None (automatic).")
        if backend == "triton":
            mod, why = _kernels()
            if mod is None:
                raise RuntimeError(f"backend='triton' was requested but {why}; use backend='torch'.")
            if device.type != "cuda" and not _interpreting():
                raise RuntimeError(
                    f"backend='triton' needs CUDA tensors (got {device}) or TRITON_INTERPRET=1 set before "
                    f"importing triton (slow; for tests)."
                )
        return backend, "forced by the caller"
    mod, why = _kernels()
    if device.type == "cuda":
        if mod is not None:
            return "triton", "CUDA tensors: Triton kernels"
        return "torch", f"CUDA tensors but {why}"
    if _interpreting():
        if mod is not None:
            return "triton", "TRITON_INTERPRET=1: Triton kernels in the CPU interpreter"
        return "torch", f"TRITON_INTERPRET=1 but {why}"
    return "torch", f"{device.type} tensors: chunked torch path (kernels need CUDA or TRITON_INTERPRET=1)"


def _pick(device, backend: Optional[str], q=None, iq=None) -> str:
    """Resolve the backend; in automatic mode, shapes the kernels don't take run on the torch path."""
    name, _ = resolve_backend(device, backend)
    if name == "triton" and backend is None:
        mod = _kernels()[0]
        if (q is not None and mod.unsupported_reason(q)) or (iq is not None and mod.unsupported_index_reason(iq)):
            return "torch"
    return name


def _impl(backend: str):
    if backend == "triton":
        return _kernels()[0]
    return torch_path if backend == "torch" else reference


def select_blocks(iq: torch.Tensor, ik: torch.Tensor, cfg: MSAConfig, *, backend: Optional[str] = None,
                  check_finite: bool = False) -> torch.Tensor:
    """Pick the top_k key blocks per (query token, KV group).

    Args:
        iq: index queries ``[B, Hkv, Nq, Di]``, one index head per KV group.
        ik: index keys ``[B, Hik, Nk, Di]`` with Hik = 1 (shared) or Hkv. The queries are the last
            Nq positions of the Nk keys (causal, bottom-right aligned).
        cfg: block_size, top_k, init_blocks, local_blocks, index_scale.
        check_finite: raise on NaN/inf inputs. Off by default (it costs a pass over ik); without
            it a NaN dot product counts as -inf.
    Returns:
        ``int32 [B, Hkv, Nq, top_k]`` block numbers, unordered, padded with -1 when fewer than
        top_k blocks are visible. Forced blocks (init + local window) are always present.
    """
    checks.check_index_inputs(iq, ik, cfg)
    if check_finite:
        checks.check_finite(iq=iq, ik=ik)
    return _impl(_pick(iq.device, backend, iq=iq)).select_blocks(iq, ik, cfg)


def sparse_attention(q, k, v, idx, cfg: MSAConfig, return_lse: bool = False, *, backend: Optional[str] = None,
                     check_indices: bool = True, check_finite: bool = False):
    """Exact causal softmax attention over each query's selected key blocks.

    Args:
        q: ``[B, Hq, Nq, D]``; query head h uses KV group ``h // (Hq // Hkv)``.
        k, v: ``[B, Hkv, Nk, D]``, Nq <= Nk.
        idx: ``int32 [B, Hkv, Nq, top_k]`` from :func:`select_blocks` (or hand-made), -1 padded.
        return_lse: also return the natural-log LSE, ``float32 [B, Hq, Nq]``.
        check_indices: validate idx (range, no future block, no duplicate): one cheap pass over
            idx plus a host sync. Turn off in hot loops once the producer is trusted.
    Returns:
        O ``[B, Hq, Nq, D]`` in q's dtype (and LSE). A row with no selected key gets 0 and -inf.
    """
    checks.check_attention_inputs(q, k, v, cfg)
    if check_indices:
        idx = checks.check_indices(idx, q, k, cfg)
    if check_finite:
        checks.check_finite(q=q, k=k, v=v)
    return _impl(_pick(q.device, backend, q=q)).sparse_attention(q, k, v, idx, cfg, return_lse=return_lse)


def msa_attention(q, k, v, iq, ik, cfg: MSAConfig, return_lse: bool = False, return_indices: bool = False, *,
                  backend: Optional[str] = None, check_finite: bool = False):
    """MSA: index branch (:func:`select_blocks`) then main branch (:func:`sparse_attention`).

    Shapes: q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]``, iq ``[B, Hkv, Nq, Di]``,
    ik ``[B, Hik, Nk, Di]``. Returns O ``[B, Hq, Nq, D]``, then LSE ``float32 [B, Hq, Nq]`` if
    return_lse, then idx ``int32 [B, Hkv, Nq, top_k]`` if return_indices.
    """
    checks.check_attention_inputs(q, k, v, cfg)
    checks.check_index_inputs(iq, ik, cfg)
    checks.check_pair(q, k, iq, ik)
    if check_finite:
        checks.check_finite(q=q, k=k, v=v, iq=iq, ik=ik)
    impl = _impl(_pick(q.device, backend, q=q, iq=iq))
    if hasattr(impl, "msa_attention") and impl is not reference and impl is not torch_path:
        return impl.msa_attention(q, k, v, iq, ik, cfg, return_lse=return_lse, return_indices=return_indices)
    idx = impl.select_blocks(iq, ik, cfg)
    out = impl.sparse_attention(q, k, v, idx, cfg, return_lse=return_lse)
    out = out if isinstance(out, tuple) else (out,)
    out = out + ((idx,) if return_indices else ())
    return out if len(out) > 1 else out[0]
