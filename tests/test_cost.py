"""Cost model: the paper's 28.4x, the ceiling, closed forms vs brute force, memory, prices."""
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from msa_lab import LLAMA3_8B, M3, TINY, MSAConfig, cost, reference


def test_m3_prefill_at_1m_tokens_matches_the_paper():
    c = cost.token_cost(M3, 2**20, "prefill")
    assert round(c.ratio, 1) == 28.4
    assert c.ratio == c.dense_flops / (c.index_flops + c.sparse_flops)


def test_ceiling_is_the_index_branch_alone():
    for cfg in (M3, LLAMA3_8B, TINY):
        ceiling = cost.flop_ceiling(cfg)
        assert ceiling == 4 * cfg.head_dim * cfg.n_heads / (2 * cfg.index_dim * cfg.n_kv_heads)
        ratios = [p.ratio for p in cost.cost_curve(cfg, [2**k for k in range(6, 31)])]
        assert max(ratios) < ceiling
        assert ratios[-1] > 0.99 * ceiling  # 1G tokens: the sparse part is negligible
    assert cost.flop_ceiling(M3) == 32


@pytest.mark.parametrize("mode", ["prefill", "decode"])
@pytest.mark.parametrize("keys", ["budget", "exact"])
def test_ratio_never_decreases_with_length(mode, keys):
    pts = cost.cost_curve(M3, cost.log_lengths(16, 1 << 22, 200), mode, keys=keys)
    ratios = np.array([p.ratio for p in pts])
    assert np.all(np.diff(ratios) >= -1e-12)
    assert ratios[0] < 1 < ratios[-1]  # short contexts: all blocks selected, the index branch is pure overhead


def test_decode_matches_hand_formulas_and_beats_prefill():
    n, budget = 300_000, M3.top_k * M3.block_size
    d = cost.token_cost(M3, n, "decode")
    assert d.dense_flops == 4 * 128 * 64 * n
    assert d.index_flops == 2 * 128 * 4 * n
    assert d.sparse_flops == 4 * 128 * 64 * budget
    assert d.dense_bytes == 2 * 4 * 128 * n * 2  # the whole K/V cache
    assert d.msa_bytes == 1 * 128 * n * 2 + 2 * 4 * 128 * budget * 2
    p = cost.token_cost(M3, n, "prefill")
    assert d.ratio > p.ratio  # a decode token sees n keys, a prefill token n/2 on average
    assert d.dense_bytes == cost.cache_memory(M3, n).kv_bytes


@pytest.mark.parametrize("cfg", [
    MSAConfig(block_size=16, top_k=4, n_heads=4, n_kv_heads=2, head_dim=8, index_dim=8, index_key_heads=1),
    MSAConfig(block_size=8, top_k=3, init_blocks=2, local_blocks=1, n_heads=2, n_kv_heads=1, head_dim=4,
              index_dim=2, index_key_heads=1),
])
@pytest.mark.parametrize("n", [1, 7, 16, 63, 64, 65, 250])
def test_prefill_means_match_brute_force(cfg, n):
    p = np.arange(n)
    budget = np.minimum(p + 1, cfg.top_k * cfg.block_size)
    c = cost.token_cost(cfg, n, "prefill")
    assert c.visible_keys == pytest.approx((p + 1).mean(), rel=1e-12)
    assert c.attended_keys == pytest.approx(budget.mean(), rel=1e-12)
    assert c.dense_flops == pytest.approx(4 * cfg.head_dim * cfg.n_heads * (p + 1).mean(), rel=1e-12)
    assert c.index_flops == pytest.approx(2 * cfg.index_dim * cfg.n_kv_heads * (p + 1).mean(), rel=1e-12)


@pytest.mark.parametrize("cfg", [
    MSAConfig(block_size=16, top_k=4),
    MSAConfig(block_size=8, top_k=5, init_blocks=2, local_blocks=2),
    MSAConfig(block_size=5, top_k=3, init_blocks=0, local_blocks=1),
])
def test_exact_count_equals_the_real_selection(cfg):
    """'exact' = keys the reference really attends, whatever the scores (given local_blocks >= 1)."""
    n = 211
    g = torch.Generator().manual_seed(1)
    iq, ik = torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 1, n, 4, generator=g)
    idx = reference.select_blocks(iq, ik, cfg)
    attended = reference.selection_to_key_mask(idx, n, cfg).sum(-1)[0]  # [Hkv, Nq]
    want = [cost.attended_keys(p, cfg, "exact") for p in range(n)]
    for h in range(2):
        assert attended[h].tolist() == want
    full = cfg.replace(n_heads=2, n_kv_heads=2, head_dim=4, index_dim=4, index_key_heads=1)
    assert cost.token_cost(full, n, keys="exact").attended_keys == pytest.approx(sum(want) / n, rel=1e-12)
    assert cost.token_cost(full, n, "decode", keys="exact").attended_keys == want[-1]


def test_exact_count_gives_a_slightly_higher_ratio_than_the_papers():
    budget, exact = (cost.token_cost(M3, 2**20, keys=k) for k in ("budget", "exact"))
    assert exact.ratio > budget.ratio
    # past the first top_k blocks, the own block counts 64.5 keys on average instead of 128
    n, budget_keys = 2**20, 16 * 128
    assert budget.attended_keys - exact.attended_keys == pytest.approx((128 - 64.5) * (n - budget_keys) / n, rel=1e-12)


def test_curves_are_cheap():
    lengths = cost.log_lengths(1024, 1 << 20, 200)
    assert len(lengths) == 200 and lengths[0] == 1024 and lengths[-1] == 1 << 20
    t = time.perf_counter()
    for keys in ("budget", "exact"):
        cost.cost_curve(M3, lengths, keys=keys)
        cost.cost_curve(M3, lengths, "decode", keys=keys)
    assert time.perf_counter() - t < 2.0  # closed forms: milliseconds; a loop over positions takes minutes


def test_cache_memory_by_hand():
    m = cost.cache_memory(M3, 2**20)
    assert m.kv_bytes == 2 * 4 * 128 * 2**20 * 2 == 2 * 2**30  # K and V, 4 heads, bf16
    assert m.index_bytes == 1 * 128 * 2**20 * 2 == 2**28  # one shared index-key head
    assert m.total_bytes == m.kv_bytes + m.index_bytes
    l8 = cost.cache_memory(LLAMA3_8B, 1000, kv_bytes=1, index_bytes=4)
    assert (l8.kv_bytes, l8.index_bytes) == (2 * 8 * 128 * 1000, 128 * 1000 * 4)
    per_group = cost.cache_memory(M3.replace(index_key_heads=4), 10)
    assert per_group.index_bytes == 4 * 128 * 10 * 2


def test_request_cost_by_hand():
    r = cost.request_cost(1_000_000, 2_000, 3.0, 15.0, cached_tokens=400_000, price_cached_per_mtok=0.3)
    assert r.input_cost == pytest.approx(0.6 * 3.0)
    assert r.cached_cost == pytest.approx(0.4 * 0.3)
    assert r.output_cost == pytest.approx(0.002 * 15.0)
    assert r.total == pytest.approx(r.input_cost + r.cached_cost + r.output_cost)
    with pytest.raises(ValueError, match="price_cached_per_mtok"):
        cost.request_cost(10, 1, 1.0, 1.0, cached_tokens=5)
    with pytest.raises(ValueError, match="exceeds prompt_tokens"):
        cost.request_cost(10, 1, 1.0, 1.0, cached_tokens=11, price_cached_per_mtok=0.1)
    with pytest.raises(ValueError, match="price_in_per_mtok"):
        cost.request_cost(10, 1, -1.0, 1.0)


def test_request_flops_is_prefill_plus_decode_steps():
    n, t = 5000, 300
    r = cost.request_flops(TINY, n, t)
    pre = cost.token_cost(TINY, n, "prefill")
    steps = [cost.token_cost(TINY, m, "decode") for m in range(n + 1, n + t + 1)]
    assert r["dense"] == pytest.approx(n * pre.dense_flops + sum(s.dense_flops for s in steps), rel=1e-12)
    assert r["msa"] == pytest.approx(n * pre.msa_flops + sum(s.msa_flops for s in steps), rel=1e-12)


def test_readme_table_rows_come_from_the_model():
    table = cost.readme_table()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "context" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["128K", "512K", "1M"]
    for (n, _), row in zip(cost.README_LENGTHS, rows):
        c, m = cost.token_cost(M3, n), cost.cache_memory(M3, n)
        assert f"{c.ratio:.1f}x" in row
        assert f"{m.total_bytes / 2**30:.3g}" in row
    assert "| 28.4x |" in rows[-1]


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="preset"):
        cost.token_cost(MSAConfig(), 1024)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        cost.token_cost(M3, 0)
    with pytest.raises(ValueError, match="n must be an int"):
        cost.token_cost(M3, 1024.0)
    with pytest.raises(ValueError, match="keys must be one of"):
        cost.token_cost(M3, 1024, keys="whole")
    with pytest.raises(ValueError, match="mode must be one of"):
        cost.token_cost(M3, 1024, "train")
    assert cost.token_cost(M3, np.int64(2**20)).ratio == cost.token_cost(M3, 2**20).ratio
    assert not math.isnan(cost.token_cost(M3, 1).ratio)


def test_cost_module_imports_only_stdlib():
    src = open(cost.__file__).read()
    imports = [line.split()[1] for line in src.splitlines() if line.startswith(("import ", "from "))]
    assert set(imports) <= {"__future__", "dataclasses", "typing", ".config"}, imports
    code = "import sys, msa_lab.cost; print([m for m in ('plotly', 'ipywidgets', 'msa_lab.viz') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
