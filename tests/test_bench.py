"""The benchmark's pure helpers on CPU: FLOP counting, selections, the FlexAttention mask, SDPA ways,
results JSON, derived targets and tables, plus one end-to-end run of the control flow (no timings
are asserted; they mean nothing here)."""
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from msa_lab import MSAConfig, reference, torch_path
from msa_lab import bench as B

ROOT = Path(__file__).resolve().parent.parent
CFG = MSAConfig(block_size=16, top_k=4, init_blocks=1, local_blocks=1, n_heads=4, n_kv_heads=2, head_dim=16,
                index_dim=8, index_key_heads=1)


def _idx(n_q, n_k, cfg=CFG, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    iq = torch.randn(batch, cfg.n_kv_heads, n_q, cfg.index_dim, generator=g)
    ik = torch.randn(batch, cfg.index_key_heads, n_k, cfg.index_dim, generator=g)
    return reference.select_blocks(iq, ik, cfg)


# ------------------------------------------------------------------ units
def test_lengths_parse_and_print():
    assert [B.parse_length(t) for t in ("8K", "1m", "4096", " 32k ")] == [8192, 1 << 20, 4096, 32768]
    assert B.parse_lengths("8K,,128K") == [8192, 131072] and B.parse_lengths("") == []
    for n in (8192, 1 << 20, 3000, 512 * 1024):
        assert B.parse_length(B.fmt_length(n)) == n
    for bad in ("8G", "-1", "0", "1.5K", "many"):
        with pytest.raises(ValueError, match="bad length"):
            B.parse_length(bad)
    assert B.slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


# ------------------------------------------------------------------ FLOP counting
@pytest.mark.parametrize("n_q,n_k", [(1, 1), (5, 5), (1, 37), (16, 300), (64, 64), (40, 70)])
def test_causal_pairs_counts_the_causal_mask(n_q, n_k):
    assert B.causal_pairs(n_q, n_k) == int(reference.causal_mask(n_q, n_k).sum())


def test_causal_pairs_rejects_more_queries_than_keys():
    with pytest.raises(ValueError, match="n_q <= n_k"):
        B.causal_pairs(10, 5)


def test_dense_flops_is_the_causal_half_of_full_attention():
    n, d, h = 4096, 128, 64
    f = B.dense_flops(n, n, d, h)
    assert f == 4 * d * h * int(reference.causal_mask(64, 64).sum()) * (n * (n + 1)) // (64 * 65)
    assert f == 2 * n * (n + 1) * d * h  # exact: 2 N^2 D H plus the diagonal
    assert abs(f / (2 * n * n * d * h) - 1) == pytest.approx(1 / n)
    # decode: one token sees every key, QK and PV each 2*D per key and head, per batch row
    assert B.dense_flops(1, 1000, d, h, batch=8) == 8 * 4 * d * h * 1000


def test_indexer_flops_count_visible_pairs_per_group():
    n_q, n_k, di, hkv = 40, 70, 8, 3
    assert B.indexer_flops(n_q, n_k, di, hkv, batch=2) == 2 * 2 * di * hkv * int(reference.causal_mask(n_q, n_k).sum())


@pytest.mark.parametrize("n_q,n_k,chunk", [(64, 64, 7), (40, 70, 1000), (3, 200, 2), (96, 130, 32)])
def test_attended_keys_matches_the_reference_key_mask(n_q, n_k, chunk):
    idx = _idx(n_q, n_k, batch=2)
    want = int(reference.selection_to_key_mask(idx, n_k, CFG).sum())
    assert B.attended_keys(idx, n_k, CFG.block_size, chunk=chunk) == want
    # sparse FLOPs: each group's attended keys serve its g query heads, 4*D per (head, key)
    g = CFG.n_heads // CFG.n_kv_heads
    mask_per_head = reference.selection_to_key_mask(idx, n_k, CFG).repeat_interleave(g, dim=1)
    assert B.sparse_flops(want, CFG.head_dim, g) == 4 * CFG.head_dim * int(mask_per_head.sum())


def test_attended_keys_ignores_padding_and_counts_partial_blocks():
    # Nk = 20 with blocks of 16: block 1 holds keys 16..19; query 0 sits at 18, query 1 at 19
    idx = torch.tensor([[[[1, -1, -1, -1], [1, 0, -1, -1]]]], dtype=torch.int32)
    assert B.attended_keys(idx, 20, 16) == 3 + (4 + 16)


# ------------------------------------------------------------------ selections
def test_selection_overlap_compares_sets():
    a = torch.tensor([[[[3, 1, -1], [0, 2, 5]]]])
    assert B.selection_overlap(a, a.flip(-1)) == 1.0
    b = torch.tensor([[[[1, 7, -1], [5, -1, 9]]]])
    assert B.selection_overlap(a, b) == pytest.approx(2 / 5)  # {1} of {3, 1} and {5} of {0, 2, 5}
    assert B.selection_overlap(torch.full((1, 1, 2, 3), -1), b) == 1.0
    with pytest.raises(ValueError, match="differ"):
        B.selection_overlap(a, b[:, :, :1])


def test_selection_overlap_chunks_agree_with_python_sets():
    a, b = _idx(50, 90, seed=1), _idx(50, 90, seed=2)
    hit = tot = 0
    for ra, rb in zip(a.reshape(-1, a.shape[-1]).tolist(), b.reshape(-1, b.shape[-1]).tolist()):
        sa, sb = {x for x in ra if x >= 0}, {x for x in rb if x >= 0}
        hit, tot = hit + len(sa & sb), tot + len(sa)
    assert 0 < hit < tot
    assert B.selection_overlap(a, b, chunk=7) == pytest.approx(hit / tot)


def test_selection_table_expands_to_the_reference_key_mask():
    n_q, n_k = 40, 70
    idx = _idx(n_q, n_k, batch=2)
    table = B.selection_table(idx, CFG.num_blocks(n_k), chunk=9)
    assert table.shape == (2, CFG.n_kv_heads, n_q, CFG.num_blocks(n_k)) and table.dtype == torch.bool
    keys = table.repeat_interleave(CFG.block_size, -1)[..., :n_k] & reference.causal_mask(n_q, n_k)
    assert torch.equal(keys, reference.selection_to_key_mask(idx, n_k, CFG))
    assert B.selection_table_bytes(2, CFG.n_kv_heads, n_q, n_k, CFG.block_size) == table.numel()
    with pytest.raises(ValueError, match="n_blocks"):
        B.selection_table(idx, 2)


# ------------------------------------------------------------------ FlexAttention mask
def _effective_mask(fb: B.FlexBlocks, mask_mod, n_q, n_k, cfg):
    """Token mask flex computes from the block lists: mask_mod on partial tiles, all on full ones."""
    Bt, H = fb.kv_num.shape[:2]
    out = torch.zeros(Bt, H, n_q, n_k, dtype=torch.bool)
    g = cfg.n_heads // H
    for b in range(Bt):
        for h in range(H):
            for qb in range(fb.kv_num.shape[2]):
                rows = slice(qb * fb.q_block, min(n_q, (qb + 1) * fb.q_block))
                for lists, full in ((fb.kv_idx, False), (fb.full_idx, True)):
                    num = (fb.full_num if full else fb.kv_num)[b, h, qb]
                    for kb in lists[b, h, qb, :num].tolist():
                        cols = slice(kb * cfg.block_size, min(n_k, (kb + 1) * cfg.block_size))
                        if full:
                            assert not out[b, h, rows, cols].any(), "a tile is listed twice"
                            out[b, h, rows, cols] = True
                        else:
                            qi = torch.arange(rows.start, rows.stop)[:, None]
                            ki = torch.arange(cols.start, cols.stop)[None, :]
                            out[b, h, rows, cols] = mask_mod(torch.tensor(b), torch.tensor(h * g), qi, ki)
    return out


@pytest.mark.parametrize("n_q,n_k,q_block", [(96, 96, 32), (40, 70, 16), (96, 130, 32), (33, 33, 128)])
def test_flex_blocks_and_mask_mod_give_exactly_the_selection(n_q, n_k, q_block):
    idx = _idx(n_q, n_k, batch=2)
    g = CFG.n_heads // CFG.n_kv_heads
    table = B.selection_table(idx, CFG.num_blocks(n_k))
    fb = B.flex_blocks(idx, n_k, CFG.block_size, q_block)
    mm = B.flex_mask_mod(table, g, CFG.block_size, n_k - n_q)
    want = reference.selection_to_key_mask(idx, n_k, CFG)
    assert torch.equal(_effective_mask(fb, mm, n_q, n_k, CFG), want)
    # torch's layout: full width (one entry per KV block), every entry a valid block
    assert fb.kv_idx.shape[-1] == fb.full_idx.shape[-1] == CFG.num_blocks(n_k)
    assert int(fb.kv_idx.min()) >= 0 and int(fb.kv_idx.max()) < CFG.num_blocks(n_k)
    assert fb.union_blocks == int(fb.kv_num.sum() + fb.full_num.sum())


def test_flex_full_tiles_are_the_fully_selected_visible_ones():
    # every query selects every visible block (top_k covers all): below the diagonal all tiles are full
    cfg = CFG.replace(top_k=8)
    n = 128
    idx = _idx(n, n, cfg)
    fb = B.flex_blocks(idx, n, cfg.block_size, q_block=32)
    # query block qb (rows 32qb..32qb+31) sees key blocks < 2qb fully; blocks 2qb and 2qb+1 partly
    for qb in range(4):
        assert sorted(fb.full_idx[0, 0, qb, :fb.full_num[0, 0, qb]].tolist()) == list(range(2 * qb))
        assert sorted(fb.kv_idx[0, 0, qb, :fb.kv_num[0, 0, qb]].tolist()) == [2 * qb, 2 * qb + 1]


def test_flex_block_mask_repeats_lists_per_query_head():
    n_q, n_k = 64, 64
    idx = _idx(n_q, n_k)
    bm, table, fb = B.flex_block_mask(idx, n_k, CFG, CFG.n_heads, q_block=32)
    g = CFG.n_heads // CFG.n_kv_heads
    assert torch.equal(bm.kv_num_blocks, fb.kv_num.repeat_interleave(g, 1))
    assert torch.equal(bm.full_kv_indices, fb.full_idx.repeat_interleave(g, 1))
    assert bm.BLOCK_SIZE == (32, CFG.block_size)
    with pytest.raises(ValueError, match="multiple"):
        B.flex_block_mask(idx, n_k, CFG, 3)


def _gqa_idx(n_q, n_k, batch=2, seed=0):
    return _idx(n_q, n_k, batch=batch, seed=seed)


@pytest.mark.parametrize("n_q,n_k,q_block", [(96, 96, 32), (64, 128, 16), (32, 32, 32)])
def test_flex_block_mask_is_what_create_block_mask_builds(n_q, n_k, q_block):
    """Block-aligned lengths: the four lists equal torch's own, for batch 2, Hkv 2, GQA group 2."""
    from torch.nn.attention.flex_attention import create_block_mask

    idx = _gqa_idx(n_q, n_k)
    bm, _, _ = B.flex_block_mask(idx, n_k, CFG, CFG.n_heads, q_block=q_block)
    ref = create_block_mask(bm.mask_mod, 2, CFG.n_heads, n_q, n_k, device="cpu", BLOCK_SIZE=(q_block, CFG.block_size))
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(bm, name), getattr(ref, name)), name
    B.check_block_mask(bm, n_q, n_k, CFG.n_heads, 2)


@pytest.mark.parametrize("n_q,n_k,q_block", [(50, 50, 32), (40, 70, 16), (20, 100, 16), (33, 33, 128)])
def test_flex_block_mask_on_unaligned_lengths_covers_the_same_blocks_as_torch(n_q, n_k, q_block):
    """Lengths that are not multiples of 128 (or of the blocks): create_block_mask evaluates the mask_mod
    on the padding (so its table reads must stay in range: clamped) and may call a block partial where
    we call it full (its padded rows); the tiles computed are the same, and torch's dense view works
    (it takes kv_indices.shape[-1] as the number of KV blocks, which the old cut-down lists broke)."""
    from torch.nn.attention.flex_attention import create_block_mask

    idx = _gqa_idx(n_q, n_k)
    bm, table, _ = B.flex_block_mask(idx, n_k, CFG, CFG.n_heads, q_block=q_block)
    ref = create_block_mask(bm.mask_mod, 2, CFG.n_heads, n_q, n_k, device="cpu", BLOCK_SIZE=(q_block, CFG.block_size))
    assert torch.equal(bm.to_dense(), ref.to_dense())
    B.check_block_mask(bm, n_q, n_k, CFG.n_heads, 2)
    # the mask_mod reads in range on every padded position, and keys past Nk stay masked
    qs = torch.arange(-(-n_q // q_block) * q_block)[:, None]
    ks = torch.arange(CFG.num_blocks(n_k) * CFG.block_size)[None, :]
    g = CFG.n_heads // CFG.n_kv_heads
    for h in range(CFG.n_heads):
        m = bm.mask_mod(torch.tensor(1), torch.tensor(h), qs, ks)
        want = reference.selection_to_key_mask(idx, n_k, CFG)[1, h // g]
        assert torch.equal(m[:n_q, :n_k], want)


def test_flex_mask_mod_maps_query_heads_to_their_group():
    n = 64
    idx = _gqa_idx(n, n)
    idx[:, 1] = idx[:, 1].flip(-2)  # make the two groups' selections differ
    table = B.selection_table(idx, CFG.num_blocks(n))
    mm = B.flex_mask_mod(table, 2, CFG.block_size, 0)
    qs, ks = torch.arange(n)[:, None], torch.arange(n)[None, :]
    for h in range(4):  # heads 0, 1 -> group 0; heads 2, 3 -> group 1 (h // g, not h % Hkv)
        want = table[0, h // 2].repeat_interleave(CFG.block_size, -1)[:, :n] & (ks <= qs)
        assert torch.equal(mm(torch.tensor(0), torch.tensor(h), qs, ks), want)


def _corrupt(bm, **lists):
    from torch.nn.attention.flex_attention import BlockMask

    parts = dict(kv_num_blocks=bm.kv_num_blocks, kv_indices=bm.kv_indices, full_kv_num_blocks=bm.full_kv_num_blocks,
                 full_kv_indices=bm.full_kv_indices)
    parts.update(lists)
    return BlockMask.from_kv_blocks(parts["kv_num_blocks"], parts["kv_indices"], parts["full_kv_num_blocks"],
                                    parts["full_kv_indices"], BLOCK_SIZE=bm.BLOCK_SIZE, mask_mod=bm.mask_mod,
                                    seq_lengths=bm.seq_lengths, compute_q_blocks=False)


def test_check_block_mask_names_what_is_wrong():
    n = 96
    bm, _, _ = B.flex_block_mask(_gqa_idx(n, n), n, CFG, CFG.n_heads, q_block=32)
    B.check_block_mask(bm, n, n, CFG.n_heads, 2)
    narrow = bm.kv_indices[..., :3].contiguous()  # like the crashed run's lists: cut short of the 6 KV blocks
    with pytest.raises(ValueError, match="KV blocks"):
        B.check_block_mask(_corrupt(bm, kv_indices=narrow), n, n, CFG.n_heads, 2)
    bad = bm.kv_indices.clone()
    bad[0, 0, 0, -1] = CFG.num_blocks(n)
    with pytest.raises(ValueError, match="outside"):
        B.check_block_mask(_corrupt(bm, kv_indices=bad), n, n, CFG.n_heads, 2)
    with pytest.raises(ValueError, match="int32"):
        B.check_block_mask(_corrupt(bm, kv_indices=bm.kv_indices.long()), n, n, CFG.n_heads, 2)
    with pytest.raises(ValueError, match="contiguous"):
        B.check_block_mask(_corrupt(bm, kv_indices=bm.kv_indices.transpose(0, 1)), n, n, CFG.n_heads, 2)
    with pytest.raises(ValueError, match="both as partial and as full"):
        B.check_block_mask(_corrupt(bm, full_kv_num_blocks=bm.kv_num_blocks, full_kv_indices=bm.kv_indices),
                           n, n, CFG.n_heads, 2)
    with pytest.raises(ValueError, match="seq_lengths"):
        B.check_block_mask(bm, n, n + 1, CFG.n_heads, 2)


def test_flex_refuses_tables_past_int32_indexing_without_allocating():
    m3 = MSAConfig.preset("m3")
    n = 512 * 1024  # 4 groups x 512K rows x 4096 blocks = 2**33 table elements
    idx = torch.full((1, 1, 1, m3.top_k), -1, dtype=torch.int32).expand(1, m3.n_kv_heads, n, m3.top_k)
    with pytest.raises(ValueError, match="does not fit.*int32"):
        B.flex_block_mask(idx, n, m3, m3.n_heads)
    assert B.selection_table_bytes(1, m3.n_kv_heads, 128 * 1024, 128 * 1024, 128) <= B.FLEX_MAX_TABLE_ELEMENTS
    with pytest.raises(ValueError, match="outside"):
        B.flex_blocks(torch.tensor([[[[0, 5]]]], dtype=torch.int32), 64, 16)  # block 5 of 4


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("n_q,n_k", [(64, 64), (48, 80)])
def test_eager_flex_attention_with_the_mask_matches_reference_sparse_attention(n_q, n_k):
    from torch.nn.attention.flex_attention import flex_attention

    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, CFG.n_heads, n_q, CFG.head_dim, generator=g)
    k = torch.randn(1, CFG.n_kv_heads, n_k, CFG.head_dim, generator=g)
    v = torch.randn(1, CFG.n_kv_heads, n_k, CFG.head_dim, generator=g)
    idx = _idx(n_q, n_k)
    bm, _, _ = B.flex_block_mask(idx, n_k, CFG, CFG.n_heads, q_block=16)
    out = flex_attention(q, k, v, block_mask=bm, scale=CFG.softmax_scale(), enable_gqa=True)
    want = reference.sparse_attention(q, k, v, idx, CFG)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ SDPA ways
@pytest.mark.parametrize("n_q,n_k", [(48, 48), (1, 70), (4, 70)])
def test_every_sdpa_way_that_runs_is_causal_gqa_attention(n_q, n_k):
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, n_q, 16, generator=g)
    k, v = torch.randn(2, 2, n_k, 16, generator=g), torch.randn(2, 2, n_k, 16, generator=g)
    want = reference.dense_causal_attention(q, k, v)
    ran = []
    for label, fn in B.sdpa_candidates(q, k, v, n_q, n_k):
        try:
            out = fn()
        except RuntimeError as e:  # a backend this CPU build lacks
            assert "kernel" in str(e).lower() or "support" in str(e).lower(), (label, e)
            continue
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{label}: {m}")
        ran.append(label.split("/")[1])
    # both GQA strategies of this mode ran at least once (the CPU has a flash-style kernel)
    assert len(set(ran)) == 2, ran


# ------------------------------------------------------------------ results
def _row(name, mode="prefill", **kw):
    return B.asdict(B.Row(name, mode, **kw).finish())


def _results(rows, device="NVIDIA H100 80GB HBM3"):
    return dict(schema=B.SCHEMA, date="2025-01-02", device=dict(name=device, slug=B.slugify(device)),
                versions=dict(torch="2.11.0", triton="3.6.0", cuda="12.8"), run=dict(finished=True),
                rows=rows, targets=B.derive_targets(rows))


def _sample_rows(n_top=B.MEGA):
    rows = [_row("copy", "device", ms=1.0, bytes=3_000_000_000), _row("matmul", "device", ms=2.0, flops=2 * 8192 ** 3)]
    for n, dense_ms in ((8192, 1.0), (n_top, 40_000.0)):
        t = dict(shape="m3", n=n, nq=n)
        rows += [_row("dense_sdpa", ms=dense_ms, flops=B.dense_flops(n, n, 128, 64), **t),
                 _row("msa_indexer", ms=dense_ms / 40, flops=B.indexer_flops(n, n, 128, 4), **t),
                 _row("msa_sparse_attn", ms=dense_ms / 100, flops=10 ** 12, **t),
                 _row("msa_total", ms=dense_ms / 25, **t)]
    rows.append(_row("flex_attention", ms=0.5, shape="m3", n=8192, nq=8192))
    rows.append(_row("flex_attention", status="skipped", shape="m3", n=n_top, nq=n_top,
                     error="does not fit: 34359738368 bytes for the bool selection table"))
    for b, (dn, ms) in ((1, (10.0, 1.0)), (8, (60.0, 10.0))):
        t = dict(mode="decode", shape="m3", n=n_top, nq=1, batch=b)
        rows += [_row("dense_decode", ms=dn, **t), _row("msa_decode", ms=ms, **t),
                 _row("msa_decode_indexer", ms=1.0, bytes=b * 256 * 10 ** 6, **t)]
    rows.append(_row("check", "check", shape="m3", n=8192, nq=8192, ms=5.0))
    rows.append(_row("check", "check", shape="m3", n=n_top, nq=n_top, status="error",
                     error="AssertionError: correctness check failed on the last 256 rows"))
    rows.append(_row("memory", "memory", shape="m3", n=n_top, nq=n_top, ms=5.0, bytes=61_000_000_000))
    rows.append(_row("dense_sdpa", status="error", shape="llama3_8b", n=8192, nq=8192, error="out of memory: boom"))
    return rows


def test_row_units():
    r = B.Row("x", "prefill", ms=1000.0, flops=2 * 10 ** 12, bytes=10 ** 9).finish()
    assert r.tflops == pytest.approx(2.0) and r.gbps == pytest.approx(1.0)
    assert B.Row("x", "prefill", ms=2.0, status="error", flops=10).finish().tflops is None


def test_derive_targets_reads_the_1m_rows():
    t = B.derive_targets(_sample_rows())
    assert t["prefill_speedup"]["value"] == pytest.approx(25.0) and t["prefill_speedup"]["met"] is True
    assert t["prefill_speedup"]["n"] == B.MEGA and t["prefill_speedup"]["at_target_length"]
    dense = B.dense_flops(B.MEGA, B.MEGA, 128, 64) / 40_000.0
    assert t["sparse_vs_dense_tflops"]["value"] == pytest.approx(10 ** 12 / 400.0 / dense)
    index_rate = B.indexer_flops(B.MEGA, B.MEGA, 128, 4) / 1000.0
    assert t["indexer_vs_dense_tflops"]["value"] == pytest.approx(index_rate / dense)
    assert t["msa_vs_flex"]["value"] == pytest.approx(0.5 / 0.01) and t["msa_vs_flex"]["n"] == 8192
    assert not t["msa_vs_flex"]["at_target_length"]
    assert t["decode_speedup_b1"]["value"] == pytest.approx(10.0) and t["decode_speedup_b1"]["met"] is True
    assert t["decode_speedup_b8"]["value"] == pytest.approx(6.0) and t["decode_speedup_b8"]["met"] is False
    # batch 8 indexer: 2048 MB in 1 ms = 2048 GB/s against 3000 GB/s of copy
    assert t["index_key_bw_vs_copy"]["value"] == pytest.approx(2048 / 3000)
    assert t["memory_peak_gb"]["value"] == pytest.approx(61.0) and t["memory_peak_gb"]["met"] is True


def test_derive_targets_falls_back_to_the_largest_length_and_says_so():
    rows = [r for r in _sample_rows(n_top=512 * 1024)]
    t = B.derive_targets(rows)
    assert t["prefill_speedup"]["n"] == 512 * 1024 and t["prefill_speedup"]["at_target_length"] is False
    assert B.derive_targets([])["prefill_speedup"]["value"] is None


def test_json_round_trip_and_schema_errors(tmp_path):
    d = _results(_sample_rows())
    path = B.write_json(d, tmp_path / "sub" / "r.json")
    assert B.load_json(path) == json.loads(json.dumps(d))
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # written through a temp file, renamed
    for breakage, match in ((lambda x: x.pop("device"), "device"), (lambda x: x.update(schema="other"), "schema"),
                            (lambda x: x["rows"][0].update(status="fine"), "status"),
                            (lambda x: x["rows"][2].update(ms=None), "no ms"),
                            (lambda x: x["rows"][-1].update(error=None), "reason")):
        bad = json.loads(json.dumps(d))
        breakage(bad)
        with pytest.raises(ValueError, match=match):
            B.write_json(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_jsonable_keeps_non_finite_numbers_as_text():
    assert B._jsonable({"a": [float("inf"), 1.5, float("nan")]}) == {"a": ["inf", 1.5, "nan"]}


def test_markdown_table_names_card_versions_rows_and_gaps():
    md = B.render_markdown(_results(_sample_rows()))
    assert "NVIDIA H100 80GB HBM3" in md and "torch 2.11.0" in md and "triton 3.6.0" in md and "CUDA 12.8" in md
    lines = md.splitlines()
    one_m = next(line for line in lines if line.startswith("| m3 | 1M |"))
    assert "40,000" in one_m and "25x" in one_m and "does not fit" in one_m and one_m.endswith("| FAIL |")
    assert next(line for line in lines if line.startswith("| m3 | 8K |")).endswith("| pass |")
    assert any(line.startswith("| m3 | 1M | 8 | 1 |") and "6x" in line for line in lines)
    assert "61.0 GB" in md
    assert any("decode, batch 8" in line and "| no |" in line for line in lines)
    assert any("out of memory: boom" in line and "dense_sdpa llama3_8b 8K" in line for line in lines)
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({line.count("|") for line in rows}) == 1, block


def test_merge_refuses_other_cards_and_recomputes_targets():
    rows = _sample_rows()
    a = _results([r for r in rows if r["name"] != "memory"])
    b = _results([r for r in rows if r["name"] == "memory"])
    assert a["targets"]["memory_peak_gb"]["value"] is None
    merged = B.merge_results([a, b])
    assert len(merged["rows"]) == len(rows) and merged["targets"]["memory_peak_gb"]["value"] == pytest.approx(61.0)
    with pytest.raises(ValueError, match="differ in device"):
        B.merge_results([a, _results(rows, device="NVIDIA H200")])


def test_bench_table_script(tmp_path):
    d = _results(_sample_rows())
    p1 = B.write_json(d, tmp_path / "a.json")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_table.py"), str(p1), "--rows"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| m3 | 1M |" in out.stdout and "| msa_decode_indexer | m3 | 1M | 8 |" in out.stdout
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "x"}))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_table.py"), str(tmp_path / "bad.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "schema" in out.stderr


# ------------------------------------------------------------------ CLI and control flow
def test_args_quick_defaults_and_errors(capsys):
    a = B.parse_args(["--quick"])
    assert a.shapes == ["m3"] and a.lengths == [8192, 32768] and a.decode_lengths == [32768]
    assert a.memory_length == 32768 and a.target_s < 0.5
    full = B.parse_args([])
    assert full.lengths == [8192, 32768, 131072, 524288, 1 << 20] and full.shapes == ["m3", "llama3_8b"]
    assert full.memory_length == 1 << 20 and B.parse_args(["--memory-length", "0"]).memory_length == 0
    for bad in (["--lengths", "8G"], ["--shapes", "gpt9"], ["--budget-s", "0"], ["--decode-batches", "0"]):
        with pytest.raises(SystemExit) as e:
            B.parse_args(bad)
        assert e.value.code == 2
    assert "bad length" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_main_without_gpu_says_where_to_run(capsys):
    assert B.main(["--quick"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_time_calls_rotates_inputs_and_excludes_warmup():
    seen = []
    t = B.time_calls(seen.append, torch.device("cpu"), min_reps=3)
    assert seen == [0, 1, 2, 3] and len(t.runs_ms) == 3 and t.first_ms >= 0


def _fake_kernels(fail_sparse=False):
    """torch_path dressed as msa_lab.kernels (with the fp8 flag), so the run is fast on CPU."""
    def select_blocks(iq, ik, cfg, *, fp8=False):
        return torch_path.select_blocks(iq, ik, cfg)

    def sparse_attention(q, k, v, idx, cfg, return_lse=False):
        if fail_sparse:
            raise RuntimeError("injected kernel failure")
        return torch_path.sparse_attention(q, k, v, idx, cfg, return_lse=return_lse)

    def msa_attention(q, k, v, iq, ik, cfg, return_lse=False, return_indices=False):
        idx = select_blocks(iq, ik, cfg)
        o = sparse_attention(q, k, v, idx, cfg)
        return (o, idx) if return_indices else o

    return types.SimpleNamespace(select_blocks=select_blocks, sparse_attention=sparse_attention,
                                 msa_attention=msa_attention, INDEXER="fake (torch_path)")


SMOKE = ["--device", "cpu", "--shapes", "tiny", "--lengths", "128", "--decode-lengths", "256", "--decode-batches", "2",
         "--decode-new-tokens", "1,3", "--memory-length", "0", "--copy-mb", "1", "--matmul-n", "64",
         "--target-s", "0.001", "--check-rows", "16", "--flex-max-mask-gb", "0"]


def test_cpu_smoke_run_records_every_row_and_its_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(B, "_kernels", lambda: _fake_kernels(fail_sparse=True))
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out), "--flex"]) == 0
    d = B.load_json(out)
    status = {(r["name"], r.get("nq")): r["status"] for r in d["rows"]}
    assert status[("msa_sparse_attn", 128)] == "error" and status[("msa_total", 128)] == "error"
    assert status[("msa_indexer", 128)] == "ok" and status[("dense_sdpa", 128)] == "ok"
    dense = next(r for r in d["rows"] if r["name"] == "dense_sdpa")
    assert dense["notes"]["backend"] + "/" + dense["notes"]["gqa"] in dense["notes"]["probe"]["ms"]
    assert status[("flex_attention", 128)] == "skipped"  # --flex-max-mask-gb 0: the table never fits
    flex = next(r for r in d["rows"] if r["name"] == "flex_attention")
    assert flex["error"].startswith("does not fit: ")
    assert {r["name"] for r in d["rows"] if r["mode"] == "decode"} == {
        "msa_decode_indexer", "msa_decode_attn", "msa_decode", "dense_decode", "msa_decode_graph", "dense_decode_graph"}
    graph = [r for r in d["rows"] if r["name"].endswith("_graph")]
    assert graph and all(r["status"] == "skipped" and "CUDA graphs need a CUDA device" in r["error"] for r in graph)
    assert len([r for r in d["rows"] if r["name"] == "dense_decode"]) == 2  # 1 and 3 new tokens
    assert "injected kernel failure" in next(r for r in d["rows"] if r["name"] == "msa_sparse_attn")["error"]
    assert d["run"]["finished"] and d["run"]["n_error"] >= 2
    assert "| tiny | 128 |" in capsys.readouterr().out  # the short table comes last


def test_dense_decode_is_ranked_on_each_rows_own_inputs(tmp_path, monkeypatch):
    """The fastest SDPA way for decode changes with the cache length (an 8K-key probe picked a way that is
    16x slower at 1M on an H100), so every decode length and batch is ranked on the row's own inputs."""
    monkeypatch.setattr(B, "_kernels", _fake_kernels)
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out), "--lengths", "", "--decode-lengths", "256,320",
                           "--decode-batches", "1,2", "--decode-new-tokens", "1"]) == 0
    dense = [r for r in B.load_json(out)["rows"] if r["name"] == "dense_decode"]
    assert len(dense) == 4
    for r in dense:
        probe = r["notes"]["probe"]
        assert (probe["n_k"], probe["n_q"]) == (r["n"], r["nq"])
        assert r["notes"]["backend"] + "/" + r["notes"]["gqa"] in probe["ms"]


def test_cpu_smoke_run_budget_skips_with_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_kernels", _fake_kernels)
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out), "--budget-s", "1e-6"]) == 0
    rows = B.load_json(out)["rows"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert skipped and all(r["error"].startswith(("time budget", "does not fit", "not run: FlexAttention is opt-in",
                                                  "CUDA graphs need")) for r in skipped)
    assert any(r["name"] == "dense_sdpa" and r["error"].startswith("time budget") for r in skipped)


def test_cpu_smoke_run_check_passes_on_the_same_math(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_kernels", _fake_kernels)
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out), "--decode-lengths", ""]) == 0
    check = next(r for r in B.load_json(out)["rows"] if r["name"] == "check")
    assert check["status"] == "ok", check["error"]
    assert check["notes"]["selection_overlap"] == 1.0 and math.isfinite(check["notes"]["rel_err"])


def test_flex_is_opt_in_and_help_says_why(tmp_path, monkeypatch):
    help_text = " ".join(B.build_parser().format_help().split())
    assert "--flex" in help_text and "illegal memory access" in help_text
    assert B.parse_args([]).flex is False and B.parse_args(["--flex"]).flex is True
    assert B.parse_args(["--flex", "--no-flex"]).flex is False
    monkeypatch.setattr(B, "_kernels", _fake_kernels)
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out), "--decode-lengths", ""]) == 0
    flex = next(r for r in B.load_json(out)["rows"] if r["name"] == "flex_attention")
    assert flex["status"] == "skipped" and "--flex" in flex["error"]


def test_lost_cuda_context_keeps_the_rows_and_prints_the_table(tmp_path, monkeypatch, capsys):
    """An illegal memory access surfaces at the next synchronize (Bench.free after a row): the run stops,
    the row is recorded with the reason, and the table is still printed from the file."""
    state = {"boom": False}
    fake = _fake_kernels()

    def msa_attention(*a, **kw):
        state["boom"] = True  # the row "corrupts" the GPU; its call itself returns
        return _fake_kernels().msa_attention(*a, **kw)

    fake.msa_attention = msa_attention
    monkeypatch.setattr(B, "_kernels", lambda: fake)
    real_free = B.Bench.free

    def free(self):
        if state["boom"]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        real_free(self)

    monkeypatch.setattr(B.Bench, "free", free)
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out)]) == 1
    d = B.load_json(out)
    rows = {r["name"]: r for r in d["rows"]}
    assert rows["msa_indexer"]["status"] == "ok" and rows["msa_sparse_attn"]["status"] == "ok"
    assert rows["msa_total"]["status"] == "error" and "CUDA context lost" in rows["msa_total"]["error"]
    assert "dense_sdpa" not in rows  # nothing ran on a dead context
    assert not d["run"]["finished"] and "DeviceLost" in d["run"]["interrupted"]
    printed = capsys.readouterr().out
    assert "| tiny | 128 |" in printed and "CUDA context lost" in printed


class _FakeGraph:
    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        return self.fn()


def test_decode_graph_rows_time_replays_next_to_the_eager_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_kernels", _fake_kernels)
    monkeypatch.setattr(B, "graphs_unsupported_reason", lambda device: None)
    captured = []

    def capture(fn, warmup=2):
        captured.append(fn)
        return _FakeGraph(fn), fn()

    monkeypatch.setattr(B, "capture_graph", capture)
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out), "--lengths", "", "--decode-new-tokens", "1"]) == 0
    d = B.load_json(out)
    rows = {r["name"]: r for r in d["rows"]}
    for name in ("msa_decode_graph", "dense_decode_graph", "msa_decode", "dense_decode"):
        assert rows[name]["status"] == "ok" and rows[name]["ms"] > 0, rows[name]
    assert rows["msa_decode_graph"]["notes"]["graphs"] == rows["msa_decode_graph"]["notes"]["input_sets"]
    assert rows["dense_decode_graph"]["notes"]["backend"] == rows["dense_decode"]["notes"]["backend"]
    assert rows["msa_decode_graph"]["flops"] == rows["msa_decode"]["flops"]
    assert len(captured) == rows["msa_decode_graph"]["notes"]["graphs"] + 1
    line = next(x for x in B.render_markdown(d).splitlines() if x.startswith("| tiny | 256 | 2 | 1 |"))
    assert line.count("|") == 13 and "| - |" not in line[line.index("| 1 |") + 4:]


def test_failed_graph_capture_is_recorded_and_the_eager_numbers_stay(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_kernels", _fake_kernels)
    monkeypatch.setattr(B, "graphs_unsupported_reason", lambda device: None)

    def capture(fn, warmup=2):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(B, "capture_graph", capture)
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out), "--lengths", "", "--decode-new-tokens", "1"]) == 0
    rows = {r["name"]: r for r in B.load_json(out)["rows"]}
    assert rows["msa_decode"]["status"] == "ok" and rows["dense_decode"]["status"] == "ok"
    for name in ("msa_decode_graph", "dense_decode_graph"):
        assert rows[name]["status"] == "error" and "not permitted when stream is capturing" in rows[name]["error"]
    assert "graph capture failed" in rows["msa_decode_graph"]["error"]


def test_merged_runs_drop_rows_measured_elsewhere_from_not_measured(tmp_path):
    rows = _sample_rows()
    skipped = _row("msa_total", status="skipped", shape="m3", n=8192, nq=8192, error="time budget: no time")
    a = _results([r for r in rows if r["name"] != "msa_total"] + [skipped])
    b = _results([r for r in rows if r["name"] == "msa_total"])
    assert "msa_total m3 8K" in B.render_markdown(a)
    p1, p2 = B.write_json(a, tmp_path / "a.json"), B.write_json(b, tmp_path / "b.json")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_table.py"), str(p1), str(p2),
                          "--merged-out", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "msa_total m3 8K" not in out.stdout and "time budget" not in out.stdout
    assert "dense_sdpa llama3_8b 8K" in out.stdout  # failed everywhere: still listed
    assert B.load_json(tmp_path / "m.json")["rows"][-1]["name"] == "msa_total"


def test_autotune_off_is_recorded_and_captioned(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_kernels", _fake_kernels)
    monkeypatch.setenv("MSA_LAB_AUTOTUNE", "0")
    out = tmp_path / "r.json"
    assert B.main(SMOKE + ["--out", str(out), "--lengths", "", "--decode-new-tokens", "1"]) == 0
    d = B.load_json(out)
    assert d["env"]["MSA_LAB_AUTOTUNE"] == "0" and "MSA_LAB_AUTOTUNE=0" in B.caption(d)
    tuned = _results(_sample_rows())
    assert "MSA_LAB_AUTOTUNE" not in B.caption(tuned)
    decode_off = _results([r for r in _sample_rows() if r["mode"] == "decode"])
    decode_off["env"] = {"MSA_LAB_AUTOTUNE": "0"}
    prefill_on = _results([r for r in _sample_rows() if r["mode"] != "decode"])
    merged = B.merge_results([prefill_on, decode_off])
    assert "MSA_LAB_AUTOTUNE=0 (one kernel config) for the decode rows" in B.caption(merged)
    assert "MSA_LAB_AUTOTUNE" not in B.caption(B.merge_results([prefill_on, prefill_on]))
