"""Attention cost model: FLOPs, bytes and cache memory per token, dense vs MSA. Stdlib only.

Everything is per token and per attention layer (multiply by the layer count yourself).

FLOPs (a multiply-add is 2 FLOPs; softmax, top-k and block-max are not counted):
  dense   4 * D * Hq * (visible keys)                 QK^T and PV over every visible key
  index   2 * Di * Hkv * (visible keys)               QK only: one index head per KV group scores
                                                      every visible index key (it is exp-free)
  sparse  4 * D * Hq * (attended keys)                QK^T and PV over the selected blocks
  msa     index + sparse
A query at position p sees p + 1 keys. How many it attends depends on ``keys``:
  "budget" (default, the MSA paper's count): min(p + 1, top_k * block_size), i.e. every selected
           block counts whole. This is what a block kernel executes (it computes the own block's
           full tile and masks it), and it gives the paper's 28.4x for M3 at 1M tokens.
  "exact": visible keys among the selected blocks: the own block only counts keys 0..p of it,
           so min(p + 1, (top_k - 1) * block_size + p % block_size + 1). This assumes the own
           block is selected, which the local window guarantees (local_blocks >= 1).
Prefill figures are exact means over positions 0..N-1 (closed forms, any N costs the same);
decode figures are for one new token that sees a context of N keys (position N - 1).

Bytes read per token (``kv_bytes``/``index_bytes`` = bytes per element, 2 for bf16):
  decode  dense reads the whole K and V cache: 2 * Hkv * D * N * kv_bytes;
          MSA reads every index key (Hik * Di * N * index_bytes) plus K and V of the attended keys
          of each group (2 * Hkv * D * attended * kv_bytes).
  prefill a simple model: dense K/V and the index keys are read once per tile of ``q_tile`` queries
          (flash-attention reuse), so their reads are divided by q_tile; the sparse gather is not
          shared (each token has its own selection), so it costs what decode costs. Queries,
          outputs and on-chip caching are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional

from .config import MSAConfig

KEY_COUNTS = ("budget", "exact")
MODES = ("prefill", "decode")


@dataclass(frozen=True)
class CostPoint:
    """Attention cost of one token in one layer at context length ``n``."""

    n: int  # context length (prefill: sequence length; decode: keys the new token sees)
    mode: str  # "prefill" (mean over positions 0..n-1) or "decode" (the token at position n-1)
    visible_keys: float  # keys a token sees (mean for prefill)
    attended_keys: float  # keys MSA attends per token (mean for prefill), see ``keys``
    dense_flops: float
    index_flops: float
    sparse_flops: float
    msa_flops: float  # index + sparse
    ratio: float  # dense / msa: how many times fewer FLOPs MSA needs
    dense_bytes: float
    msa_bytes: float

    @property
    def density(self) -> float:
        """Attended keys / visible keys."""
        return self.attended_keys / self.visible_keys


@dataclass(frozen=True)
class CacheMemory:
    """Bytes cached per sequence of ``n`` tokens in one layer."""

    n: int
    kv_bytes: int  # K and V: 2 * Hkv * D * n * bytes per element
    index_bytes: int  # index keys: Hik * Di * n * bytes per element

    @property
    def total_bytes(self) -> int:
        return self.kv_bytes + self.index_bytes


@dataclass(frozen=True)
class RequestCost:
    """Price of one request in the currency of the prices you passed."""

    input_cost: float  # uncached prompt tokens
    cached_cost: float  # prompt tokens served from the prompt cache
    output_cost: float
    total: float


# --------------------------------------------------------------------------- key counts
# S(n) = sum over positions p = 0..n-1 of a per-query key count; range sums are S(hi) - S(lo).
def _sum_visible(n: int) -> int:
    return n * (n + 1) // 2


def _sum_budget(n: int, budget: int) -> int:
    if n <= budget:
        return _sum_visible(n)
    return _sum_visible(budget) + (n - budget) * budget


def _sum_exact(n: int, cfg: MSAConfig) -> int:
    bs, budget = cfg.block_size, cfg.top_k * cfg.block_size
    if n <= budget:  # every visible block fits in top_k: all visible keys are attended
        return _sum_visible(n)
    # positions budget..n-1 attend (top_k - 1) full blocks plus p % bs + 1 keys of their own block;
    # budget is a multiple of bs, so p % bs runs through whole cycles 0..bs-1 and then 0..r-1.
    m = n - budget
    cycles, r = divmod(m, bs)
    own = cycles * (bs * (bs + 1) // 2) + r * (r + 1) // 2
    return _sum_visible(budget) + m * (cfg.top_k - 1) * bs + own


def _sum_attended(n: int, cfg: MSAConfig, keys: str) -> int:
    return _sum_budget(n, cfg.top_k * cfg.block_size) if keys == "budget" else _sum_exact(n, cfg)


def attended_keys(position: int, cfg: MSAConfig, keys: str = "budget") -> int:
    """Keys MSA attends for the query at ``position`` (0-based), see the module docstring."""
    _check_keys(keys)
    _check_int("position", position, minimum=0)
    return _sum_attended(position + 1, cfg, keys) - _sum_attended(position, cfg, keys)


# --------------------------------------------------------------------------- cost
def token_cost(cfg: MSAConfig, n: int, mode: str = "prefill", *, keys: str = "budget",
               kv_bytes: int = 2, index_bytes: int = 2, q_tile: int = 128) -> CostPoint:
    """Cost per token of one layer at context length ``n`` (see the module docstring)."""
    _check_shapes(cfg)
    _check_int("n", n, minimum=1)
    _check_keys(keys)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n = int(n)  # numpy ints would overflow in the n * (n + 1) sums
    for name, v in (("kv_bytes", kv_bytes), ("index_bytes", index_bytes), ("q_tile", q_tile)):
        _check_int(name, v, minimum=1)
    if mode == "prefill":
        visible = _sum_visible(n) / n
        attended = _sum_attended(n, cfg, keys) / n
    else:  # the new token sits at position n - 1
        visible = float(n)
        attended = float(_sum_attended(n, cfg, keys) - _sum_attended(n - 1, cfg, keys))
    d, hq, hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    dense = 4.0 * d * hq * visible
    index = 2.0 * cfg.index_dim * hkv * visible
    sparse = 4.0 * d * hq * attended
    kv_row = 2.0 * hkv * d * kv_bytes  # K and V of one key position, all groups
    ik_row = float(cfg.index_key_heads * cfg.index_dim * index_bytes)
    reuse = q_tile if mode == "prefill" else 1
    dense_bytes = kv_row * visible / reuse
    msa_bytes = ik_row * visible / reuse + kv_row * attended
    return CostPoint(
        n=n, mode=mode, visible_keys=visible, attended_keys=attended, dense_flops=dense,
        index_flops=index, sparse_flops=sparse, msa_flops=index + sparse, ratio=dense / (index + sparse),
        dense_bytes=dense_bytes, msa_bytes=msa_bytes,
    )


def cost_curve(cfg: MSAConfig, lengths: Iterable[int], mode: str = "prefill", **kwargs) -> List[CostPoint]:
    """:func:`token_cost` at each context length; closed forms, so long curves are cheap."""
    return [token_cost(cfg, n, mode, **kwargs) for n in lengths]


def flop_ceiling(cfg: MSAConfig) -> float:
    """Limit of dense / MSA FLOPs as n -> inf: the index branch alone, 4*D*Hq / (2*Di*Hkv)."""
    _check_shapes(cfg)
    return 4.0 * cfg.head_dim * cfg.n_heads / (2.0 * cfg.index_dim * cfg.n_kv_heads)


def log_lengths(lo: int = 1024, hi: int = 1 << 20, points: int = 200) -> List[int]:
    """``points`` distinct integer lengths spaced evenly on a log axis from lo to hi."""
    _check_int("lo", lo, minimum=1)
    _check_int("hi", hi, minimum=lo)
    _check_int("points", points, minimum=2)
    ratio = (hi / lo) ** (1.0 / (points - 1))
    return sorted({min(hi, round(lo * ratio**i)) for i in range(points)} | {hi})


# --------------------------------------------------------------------------- memory and price
def cache_memory(cfg: MSAConfig, n: int, *, kv_bytes: int = 2, index_bytes: int = 2) -> CacheMemory:
    """K/V cache and index-key cache of one layer for a sequence of ``n`` tokens."""
    _check_shapes(cfg)
    _check_int("n", n, minimum=0)
    _check_int("kv_bytes", kv_bytes, minimum=1)
    _check_int("index_bytes", index_bytes, minimum=1)
    return CacheMemory(
        n=n,
        kv_bytes=2 * cfg.n_kv_heads * cfg.head_dim * n * kv_bytes,
        index_bytes=cfg.index_key_heads * cfg.index_dim * n * index_bytes,
    )


def request_cost(prompt_tokens: int, output_tokens: int, price_in_per_mtok: float, price_out_per_mtok: float,
                 cached_tokens: int = 0, price_cached_per_mtok: Optional[float] = None) -> RequestCost:
    """Price of a request from your prices per million tokens (no vendor prices are built in).

    ``cached_tokens`` of the prompt are billed at ``price_cached_per_mtok`` (required when
    cached_tokens > 0), the rest at ``price_in_per_mtok``.
    """
    _check_int("prompt_tokens", prompt_tokens, minimum=0)
    _check_int("output_tokens", output_tokens, minimum=0)
    _check_int("cached_tokens", cached_tokens, minimum=0)
    if cached_tokens > prompt_tokens:
        raise ValueError(
            f"cached_tokens={cached_tokens} exceeds prompt_tokens={prompt_tokens}; "
            f"cached tokens are part of the prompt."
        )
    if cached_tokens and price_cached_per_mtok is None:
        raise ValueError("cached_tokens > 0 needs price_cached_per_mtok (your price per million cached tokens).")
    prices = {"price_in_per_mtok": price_in_per_mtok, "price_out_per_mtok": price_out_per_mtok,
              "price_cached_per_mtok": 0.0 if price_cached_per_mtok is None else price_cached_per_mtok}
    for name, v in prices.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 <= v < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0 (price per million tokens), got {v!r}")
    inp = (prompt_tokens - cached_tokens) * price_in_per_mtok / 1e6
    cached = cached_tokens * prices["price_cached_per_mtok"] / 1e6
    out = output_tokens * price_out_per_mtok / 1e6
    return RequestCost(input_cost=inp, cached_cost=cached, output_cost=out, total=inp + cached + out)


def request_flops(cfg: MSAConfig, prompt_tokens: int, output_tokens: int, *, keys: str = "budget") -> dict:
    """Total attention FLOPs of one layer for prefilling the prompt and decoding the output.

    Returns ``{"dense": ..., "msa": ..., "ratio": ...}``; token t of the whole request sits at
    position t, so decode steps continue the prefill's sums.
    """
    _check_shapes(cfg)
    _check_int("prompt_tokens", prompt_tokens, minimum=0)
    _check_int("output_tokens", output_tokens, minimum=0)
    _check_keys(keys)
    n = prompt_tokens + output_tokens
    if n == 0:
        raise ValueError("prompt_tokens + output_tokens is 0: a request needs at least one token.")
    visible, attended = _sum_visible(n), _sum_attended(n, cfg, keys)
    dense = 4.0 * cfg.head_dim * cfg.n_heads * visible
    msa = 2.0 * cfg.index_dim * cfg.n_kv_heads * visible + 4.0 * cfg.head_dim * cfg.n_heads * attended
    return {"dense": dense, "msa": msa, "ratio": dense / msa}


# --------------------------------------------------------------------------- README table
README_LENGTHS = ((128 << 10, "128K"), (512 << 10, "512K"), (1 << 20, "1M"))


def readme_table(cfg: Optional[MSAConfig] = None, *, kv_bytes: int = 2, index_bytes: int = 2) -> str:
    """Markdown table: prefill attention FLOPs per token (dense vs MSA), ratio, cache size.

    Per layer; the cache is K/V plus index keys at ``kv_bytes``/``index_bytes`` per element.
    """
    if cfg is None:
        from .config import M3 as cfg  # noqa: N811 - the default is the M3 preset
    ceiling = flop_ceiling(cfg)
    rows = [
        f"Prefill attention cost per token and layer, `{cfg.name}` preset (Hq={cfg.n_heads}, Hkv={cfg.n_kv_heads}, "
        f"D={cfg.head_dim}, Di={cfg.index_dim}, block {cfg.block_size}, top-{cfg.top_k}); ceiling {ceiling:.0f}x.",
        "",
        "| context | dense FLOPs/token | MSA FLOPs/token | dense / MSA | KV + index cache (GiB) |",
        "|---|---|---|---|---|",
    ]
    for n, label in README_LENGTHS:
        c = token_cost(cfg, n, "prefill")
        m = cache_memory(cfg, n, kv_bytes=kv_bytes, index_bytes=index_bytes)
        gib = 1 << 30
        rows.append(
            f"| {label} | {c.dense_flops / 1e9:.2f} G | {c.msa_flops / 1e9:.3f} G | {c.ratio:.1f}x | "
            f"{m.total_bytes / gib:.3g} ({m.kv_bytes / gib:.3g} + {m.index_bytes / gib:.3g}) |"
        )
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- checks
def _check_shapes(cfg: MSAConfig) -> None:
    if not isinstance(cfg, MSAConfig):
        raise TypeError(f"cfg must be an msa_lab.MSAConfig, got {type(cfg).__name__}; e.g. MSAConfig.preset('m3').")
    shapes = ("n_heads", "n_kv_heads", "head_dim", "index_dim", "index_key_heads")
    missing = [f for f in shapes if getattr(cfg, f) is None]
    if missing:
        raise ValueError(
            f"the cost model needs the attention shapes but config {cfg.name!r} leaves {', '.join(missing)} unset; "
            f"use a preset (MSAConfig.preset('m3')) or set them with cfg.replace(...)."
        )


def _is_intlike(v) -> bool:
    return hasattr(v, "__index__") and not isinstance(v, bool)


def _check_int(name: str, v, minimum: int) -> None:
    if not _is_intlike(v) or int(v) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")


def _check_keys(keys: str) -> None:
    if keys not in KEY_COUNTS:
        raise ValueError(f"keys must be one of {KEY_COUNTS} (see msa_lab.cost), got {keys!r}")
