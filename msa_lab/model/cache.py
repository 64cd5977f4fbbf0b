"""Inference state: per-layer KV cache plus the index-key cache, and the prefill memory estimate.

The caches are preallocated for the expected length (prompt + new tokens) and grow by doubling if
a caller goes past it, so a planned prefill never copies its cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch

from .config import ModelConfig

_OPS_SCRATCH_BYTES = 2 * (256 << 20)  # the torch path's per-chunk budget (selection + attention), see torch_path.py
_DENSE_SCRATCH_BYTES = 256 << 20  # layers.dense_attention's per-query-chunk budget


class PrefillTooLarge(MemoryError):
    """A prefill whose estimated memory exceeds what is available (raised before anything is allocated)."""


class LayerCache:
    """k, v [B, Hkv, capacity, D] and ik [B, Hik, capacity, Di] (MSA only); the first ``length`` slots are used."""

    def __init__(self, cfg: ModelConfig, batch: int, capacity: int, device, dtype):
        self.length = 0
        self.k = torch.empty(batch, cfg.n_kv_heads, capacity, cfg.head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.ik = (torch.empty(batch, cfg.index_key_heads, capacity, cfg.index_dim, device=device, dtype=dtype)
                   if cfg.sparse else None)
        self.conv_tail: Optional[torch.Tensor] = None  # [B, token_conv - 1, d]: the last inputs of TokenConv

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self.capacity)
        for name in ("k", "v", "ik"):
            t = getattr(self, name)
            if t is not None:
                new = t.new_empty(*t.shape[:2], cap, t.shape[3])
                new[:, :, : self.length] = t[:, :, : self.length]
                setattr(self, name, new)

    def append(self, k, v, ik=None):
        """Write this chunk's keys ([B, H, C, d]) and return views of the whole prefix [B, H, length, d]."""
        n0, n1 = self.length, self.length + k.shape[2]
        if n1 > self.capacity:
            self._grow(n1)
        self.k[:, :, n0:n1] = k
        self.v[:, :, n0:n1] = v
        if self.ik is not None:
            self.ik[:, :, n0:n1] = ik
        self.length = n1
        ikv = self.ik[:, :, :n1] if self.ik is not None else None
        return self.k[:, :, :n1], self.v[:, :, :n1], ikv

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.ik) if t is not None)


class KVCache:
    """All layers' caches; ``length`` = tokens already in the model."""

    def __init__(self, cfg: ModelConfig, batch: int, capacity: int, device=None, dtype=torch.float32):
        self.cfg = cfg
        self.length = 0
        self.layers: List[LayerCache] = [LayerCache(cfg, batch, capacity, device, dtype) for _ in range(cfg.n_layers)]

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers)


def cache_bytes_per_token(cfg: ModelConfig, dtype_bytes: int) -> int:
    per_layer = 2 * cfg.n_kv_heads * cfg.head_dim + (cfg.index_key_heads * cfg.index_dim if cfg.sparse else 0)
    return cfg.n_layers * per_layer * dtype_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a prefill of n_tokens (+ room for new tokens) in chunks of chunk_size is expected to need."""

    n_tokens: int
    chunk_size: int
    cache_bytes: int  # KV + index-key caches, all layers
    activation_bytes: int  # one chunk's activations and attention scratch (freed between chunks)
    weight_bytes: int
    budget_bytes: Optional[int] = None
    budget_source: str = ""

    @property
    def total_bytes(self) -> int:
        return self.cache_bytes + self.activation_bytes + self.weight_bytes

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.total_bytes <= self.budget_bytes

    def describe(self) -> str:
        b = f" of {_gib(self.budget_bytes)} available ({self.budget_source})" if self.budget_bytes is not None else ""
        return (f"{self.n_tokens:,} tokens in chunks of {self.chunk_size:,}: ~{_gib(self.total_bytes)}{b} "
                f"(caches {_gib(self.cache_bytes)}, activations per chunk {_gib(self.activation_bytes)}, "
                f"weights {_gib(self.weight_bytes)})")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def activation_bytes(cfg: ModelConfig, chunk: int, n_keys: int, batch: int = 1) -> int:
    """One chunk's peak scratch (float32): hidden states + MLP + attention scratch at n_keys keys."""
    hidden = batch * chunk * (8 * cfg.d_model + 3 * cfg.d_ff + 2 * cfg.n_heads * cfg.head_dim) * 4
    if cfg.sparse:
        # selection scores [C, Nk] per group and the gathered blocks, each capped by the torch path's budget
        scores = batch * cfg.n_kv_heads * chunk * n_keys * 4 * 2
        gathered = batch * cfg.n_heads * chunk * cfg.top_k * cfg.block_size * 4 * 2
        attn = min(scores + gathered, _OPS_SCRATCH_BYTES) + batch * cfg.n_kv_heads * chunk * cfg.top_k * 4
    else:
        attn = min(batch * cfg.n_heads * chunk * n_keys * 4 * 2 + chunk * n_keys, _DENSE_SCRATCH_BYTES)
    return hidden + attn


def estimate_prefill(cfg: ModelConfig, n_tokens: int, chunk_size: int, *, extra_tokens: int = 0, batch: int = 1,
                     dtype_bytes: int = 4, weight_bytes: int = 0, budget_bytes: Optional[int] = None,
                     budget_source: str = "") -> MemoryEstimate:
    total = n_tokens + extra_tokens
    return MemoryEstimate(
        n_tokens=n_tokens, chunk_size=chunk_size,
        cache_bytes=batch * total * cache_bytes_per_token(cfg, dtype_bytes),
        activation_bytes=activation_bytes(cfg, min(chunk_size, n_tokens), total, batch),
        weight_bytes=weight_bytes, budget_bytes=budget_bytes, budget_source=budget_source,
    )


def available_memory(device: torch.device, max_memory_bytes: Optional[int] = None):
    """(bytes, source): the caller's cap, else free CUDA memory, else the OS's MemAvailable; (None, why) if unknown."""
    if max_memory_bytes is not None:
        if not isinstance(max_memory_bytes, int) or max_memory_bytes <= 0:
            raise ValueError(f"max_memory_bytes must be a positive int, got {max_memory_bytes!r}")
        return max_memory_bytes, "max_memory_bytes"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory on {torch.cuda.get_device_name(device)}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    return None, f"unknown on this OS ({os.name}); pass max_memory_bytes to check"


def check_prefill(est: MemoryEstimate, cfg: ModelConfig, *, extra_tokens: int = 0, batch: int = 1,
                  dtype_bytes: int = 4) -> None:
    """Raise PrefillTooLarge with the estimate and a chunk size or length that would fit."""
    if est.fits:
        return
    budget = est.budget_bytes
    hint = ""
    chunk = est.chunk_size
    while chunk > 16:
        chunk //= 2
        smaller = estimate_prefill(cfg, est.n_tokens, chunk, extra_tokens=extra_tokens, batch=batch,
                                   dtype_bytes=dtype_bytes, weight_bytes=est.weight_bytes, budget_bytes=budget)
        if smaller.fits:
            hint = f"use chunk_size={chunk} (needs ~{_gib(smaller.total_bytes)})"
            break
    if not hint:
        per_tok = batch * cache_bytes_per_token(cfg, dtype_bytes)
        fixed = est.weight_bytes + activation_bytes(cfg, 16, est.n_tokens + extra_tokens, batch)
        n_fit = max(0, (budget - fixed) // per_tok - extra_tokens)
        hint = (f"the caches alone need {_gib(est.cache_bytes)}; at most ~{n_fit:,} tokens fit "
                f"(shorten the input, or use a machine with more memory)")
    raise PrefillTooLarge(f"prefill refused before starting: {est.describe()}. To fit, {hint}.")
