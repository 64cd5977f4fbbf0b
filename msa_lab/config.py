"""MSAConfig: the sparsity pattern and (optionally) the attention shapes of one MSA layer.

Head counts and dims may be left as ``None``: the public ops then take them from the tensors.
When they are set (every preset sets them), the ops check the tensors against them, so a
preset used with the wrong tensors fails loudly instead of computing something else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class MSAConfig:
    # --- sparsity pattern (the MSA contract) ---
    block_size: int = 128  # keys per block
    top_k: int = 16  # blocks kept per (query token, KV group), forced ones included
    init_blocks: int = 1  # first blocks always kept ("global tokens")
    local_blocks: int = 1  # blocks ending at the query's own block, always kept
    scale: Optional[float] = None  # main-branch softmax scale; None -> head_dim ** -0.5
    index_scale: Optional[float] = None  # index score scale; None -> index_dim ** -0.5
    # --- shapes (None: taken from the tensors) ---
    n_heads: Optional[int] = None  # Hq
    n_kv_heads: Optional[int] = None  # Hkv == number of index-query heads
    head_dim: Optional[int] = None  # D
    index_dim: Optional[int] = None  # Di
    index_key_heads: Optional[int] = None  # Hik: 1 (shared, as in M3's cache) or Hkv
    name: str = "custom"

    def __post_init__(self) -> None:
        for f in ("block_size", "top_k"):
            _positive_int(f, getattr(self, f))
        for f in ("init_blocks", "local_blocks"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"MSAConfig.{f} must be an int >= 0, got {v!r}")
        for f in ("n_heads", "n_kv_heads", "head_dim", "index_dim", "index_key_heads"):
            v = getattr(self, f)
            if v is not None:
                _positive_int(f, v)
        for f in ("scale", "index_scale"):
            v = getattr(self, f)
            if v is not None and not (isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf")):
                raise ValueError(f"MSAConfig.{f} must be a finite float > 0 or None (default), got {v!r}")
        if self.top_k < self.init_blocks + self.local_blocks:
            raise ValueError(
                f"MSAConfig.top_k={self.top_k} is smaller than init_blocks + local_blocks = "
                f"{self.init_blocks} + {self.local_blocks}: forced blocks count toward top_k, so raise "
                f"top_k to at least {self.init_blocks + self.local_blocks} or force fewer blocks."
            )
        if self.n_heads is not None and self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"MSAConfig.n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}: "
                f"GQA needs every KV group to own the same number of query heads."
            )
        if (
            self.index_key_heads is not None
            and self.n_kv_heads is not None
            and self.index_key_heads not in (1, self.n_kv_heads)
        ):
            raise ValueError(
                f"MSAConfig.index_key_heads={self.index_key_heads} must be 1 (one shared index-key head) "
                f"or n_kv_heads={self.n_kv_heads} (one per KV group)."
            )

    # ------------------------------------------------------------------ helpers
    @property
    def group_size(self) -> int:
        self._need("n_heads", "n_kv_heads")
        return self.n_heads // self.n_kv_heads

    def softmax_scale(self, head_dim: Optional[int] = None) -> float:
        d = head_dim if head_dim is not None else self.head_dim
        return self.scale if self.scale is not None else float(d) ** -0.5

    def index_softmax_scale(self, index_dim: Optional[int] = None) -> float:
        d = index_dim if index_dim is not None else self.index_dim
        return self.index_scale if self.index_scale is not None else float(d) ** -0.5

    def num_blocks(self, n_keys: int) -> int:
        return -(-n_keys // self.block_size)

    def replace(self, **changes) -> "MSAConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def _need(self, *fields: str) -> None:
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(
                f"MSAConfig {self.name!r} leaves {', '.join(missing)} unset; this needs them. "
                f"Use a preset (msa_lab.PRESETS) or pass them, e.g. MSAConfig(n_heads=..., n_kv_heads=...)."
            )

    @classmethod
    def preset(cls, name: str, **overrides) -> "MSAConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown MSA preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return PRESETS[name].replace(**overrides)


def _positive_int(field: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"MSAConfig.{field} must be a positive int, got {v!r}")


# MiniMax M3's attention: 64 query heads in 4 KV groups, one index head per group and a single
# index-key head shared by all groups (that is what its KV cache stores).
M3 = MSAConfig(
    name="m3", n_heads=64, n_kv_heads=4, head_dim=128, index_dim=128, index_key_heads=1,
    block_size=128, top_k=16, init_blocks=1, local_blocks=1,
)
# Llama-3-8B's attention shape with MSA bolted on (index branch shaped like M3's).
LLAMA3_8B = MSAConfig(
    name="llama3_8b", n_heads=32, n_kv_heads=8, head_dim=128, index_dim=128, index_key_heads=1,
    block_size=128, top_k=16, init_blocks=1, local_blocks=1,
)
# The small model trained by this project (msa-tiny): 8 query heads in 2 groups, head dim 32,
# smaller blocks so that short training contexts already have many blocks to choose from.
TINY = MSAConfig(
    name="tiny", n_heads=8, n_kv_heads=2, head_dim=32, index_dim=32, index_key_heads=1,
    block_size=64, top_k=8, init_blocks=1, local_blocks=1,
)

PRESETS = {c.name: c for c in (M3, LLAMA3_8B, TINY)}
