"""Shared test helpers: random MSA inputs and set comparison of selections."""
from __future__ import annotations

import torch


def make_inputs(B=1, Hq=4, Hkv=2, Nq=40, Nk=70, D=16, Di=8, Hik=1, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).to(device=device, dtype=dtype)

    return dict(q=r(B, Hq, Nq, D), k=r(B, Hkv, Nk, D), v=r(B, Hkv, Nk, D), iq=r(B, Hkv, Nq, Di), ik=r(B, Hik, Nk, Di))


def as_sets(idx: torch.Tensor) -> torch.Tensor:
    """Sort each row so selections compare as sets (-1 padding sorts first)."""
    return idx.sort(-1).values


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


TOL = {torch.float16: 3e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}  # O's relative error per dtype


def attention_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=0, shuffle=True, device="cpu"):
    """Random q/k/v and a reference selection (msa_lab.reference.select_blocks); with shuffle the slots
    are permuted so -1 padding sits anywhere in a row (and decode splits can come out empty)."""
    from msa_lab import MSAConfig
    from msa_lab import reference as R

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    q, k, v = r(B, Hq, Nq, D), r(B, Hkv, Nk, D), r(B, Hkv, Nk, D)
    cfg = MSAConfig(block_size=bs, top_k=top_k)
    idx = R.select_blocks(torch.randn(B, Hkv, Nq, 8, generator=g), torch.randn(B, 1, Nk, 8, generator=g), cfg)
    if shuffle:
        idx = idx.gather(-1, torch.rand(idx.shape, generator=g).argsort(-1))
    return q.to(device), k.to(device), v.to(device), idx.to(device), cfg


def check_attention(o, lse, q, k, v, idx, cfg):
    """O within the dtype's tolerance of the float64 reference; LSE close, -inf and O = 0 exactly on empty rows."""
    from msa_lab import reference as R

    ref_o, ref_lse = R.sparse_attention(q.double(), k.double(), v.double(), idx, cfg, return_lse=True)
    tol = TOL[q.dtype]
    assert o.shape == q.shape and o.dtype == q.dtype and lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert bool(torch.isfinite(o).all()), "NaN/inf in O: an element (or a split / partial) was not written"
    assert rel_err(o, ref_o) <= tol, rel_err(o, ref_o)
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert bool((lse[~fin] == -float("inf")).all())
    assert bool(((lse[fin] - ref_lse[fin]).abs() <= tol * (ref_lse[fin].abs() + 1)).all())
    assert bool((o[~fin] == 0).all()), "empty rows must be exactly 0"
