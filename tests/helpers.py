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
