"""KV-outer prefill kernel (kernels/sparse_attention_kv_outer.py) against the float64 reference.

Runs in the Triton interpreter here (small shapes); on a GPU box the same tests compile the kernels.
"""
import importlib
import os

import torch

if not torch.cuda.is_available():  # on a GPU box the same tests compile real kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import msa_lab.kernels.sparse_attention_kv_outer as KO  # noqa: E402
from msa_lab import MSAConfig  # noqa: E402
from msa_lab import reference as R  # noqa: E402
from tests.helpers import TOL, attention_case, check_attention, rel_err  # noqa: E402

SA = importlib.import_module("msa_lab.kernels.sparse_attention")  # the package's sparse_attention is the op
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU box, the interpreter here


def _nan(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Outputs and the workspace start as NaN: an unwritten output element, or a partial the combine
    reads without it having been written, fails the comparison."""
    monkeypatch.setattr(KO, "_alloc", _nan)
    monkeypatch.setattr(SA, "_alloc", _nan)



def make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=0):
    return attention_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed, device=DEV)


check = check_attention


GRID = [  # B, Hq, Hkv, Nq, Nk, D, block, top_k, dtype, rows_per_tile, tokens_per_chunk
    (1, 2, 2, 45, 45, 32, 16, 3, torch.float16, 16, None),  # group 1 (16 tokens a tile), Nk % block != 0
    (2, 4, 2, 30, 77, 64, 16, 4, torch.bfloat16, 16, 11),  # group 2, Nq < Nk, batch 2, three chunks
    (1, 8, 2, 37, 37, 32, 32, 8, torch.float16, 16, None),  # group 4, top_k above the number of blocks
    (1, 16, 1, 24, 100, 128, 32, 3, torch.bfloat16, 128, None),  # group 16 (M3's), D 128, 8 tokens a tile
    (1, 16, 2, 20, 300, 64, 128, 2, torch.float16, 32, 7),  # M3's block: two key tiles; 2 tokens a tile
    (1, 4, 2, 33, 50, 32, 24, 3, torch.float32, 16, None),  # block not a power of two, fp32
    (1, 4, 2, 5, 70, 64, 16, 3, torch.bfloat16, 16, None),  # decode-sized chunk
    (2, 16, 1, 1, 40, 32, 16, 3, torch.float16, 128, None),  # a single new token, group 16
    (1, 48, 2, 9, 40, 32, 16, 2, torch.float16, 16, None),  # group 24: padded to 32 rows > rows_per_tile
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bs,top_k,dtype,rows,chunk", GRID)
def test_matches_reference(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, rows, chunk):
    q, k, v, idx, cfg = make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=Nq + Nk)
    kw = dict(rows_per_tile=rows, tokens_per_chunk=chunk)
    o, lse = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=True, **kw)
    check(o, lse, q, k, v, idx, cfg)
    o2 = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, **kw)  # without LSE: the same O
    assert torch.equal(o2, o)


def test_empty_and_padded_rows():
    q, k, v, idx, cfg = make_case(1, 4, 2, 20, 60, 32, 16, 4, torch.float16, seed=3)
    idx[0, 0, 3] = -1  # group 0, token 3: nothing selected
    idx[0, 1, 7, 1:] = -1  # group 1, token 7: a single block
    idx[0, 1, 7, 0] = 0
    idx[0, :, 12:16] = -1  # a run of tokens with nothing selected in either group
    o, lse = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=True, rows_per_tile=16, tokens_per_chunk=8)
    check(o, lse, q, k, v, idx, cfg)
    assert bool((o[0, :2, 3] == 0).all()) and bool((lse[0, :2, 3] == -float("inf")).all())
    assert bool(torch.isfinite(lse[0, 2:, 3]).all())  # group 1's heads at token 3 are unaffected
    assert bool((lse[0, :, 12:16] == -float("inf")).all())


def test_tiling_and_chunking_do_not_change_the_result():
    q, k, v, idx, cfg = make_case(1, 8, 2, 40, 90, 32, 16, 4, torch.float16, seed=11)
    outs = []
    for rows, chunk in ((16, None), (16, 1), (32, 13), (128, None)):
        o, lse = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=True, rows_per_tile=rows,
                                              tokens_per_chunk=chunk)
        check(o, lse, q, k, v, idx, cfg)
        outs.append((o, lse))
    for o, lse in outs[1:]:  # each row's math is the same whatever tile or chunk holds it
        assert rel_err(o, outs[0][0]) <= 1e-3 and torch.allclose(lse, outs[0][1], atol=1e-5, rtol=0)


def test_fp32_workspace_is_as_accurate_as_the_gather_kernel():
    """bf16 partials add one bf16 rounding per slot (within the 1e-2 contract); an fp32 workspace removes it."""
    q, k, v, idx, cfg = make_case(1, 16, 1, 24, 100, 128, 32, 3, torch.bfloat16, seed=7)
    ref = R.sparse_attention(q.double(), k.double(), v.double(), idx, cfg)
    gather = rel_err(SA.sparse_attention_prefill(q, k, v, idx, cfg), ref)
    o32 = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, partial_dtype=torch.float32)
    o16 = KO.sparse_attention_kv_outer(q, k, v, idx, cfg)
    assert rel_err(o32, ref) <= 1.1 * gather + 1e-4, (rel_err(o32, ref), gather)
    assert rel_err(o16, ref) <= TOL[torch.bfloat16]


def test_strided_views_need_no_copy():
    B, N, H, D = 1, 30, 2, 32
    base = torch.randn(B, N, 3 * H, D, dtype=torch.float16, device=DEV)  # [B, N, H, D] layout, q|k|v packed
    q, k, v = (base[:, :, i * H:(i + 1) * H].transpose(1, 2) for i in range(3))
    cfg = MSAConfig(block_size=16, top_k=2)
    idx = R.select_blocks(torch.randn(B, H, N, 8, device=DEV), torch.randn(B, 1, N, 8, device=DEV), cfg)
    o, lse = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=True, rows_per_tile=16)
    check(o, lse, q, k, v, idx, cfg)


def test_invert_selection_lists_every_entry_once_by_block():
    g = torch.Generator().manual_seed(1)
    B, Hkv, C, K, nb, T = 2, 3, 9, 4, 5, 2
    idx = torch.randint(-1, nb, (B, Hkv, C, K), generator=g, dtype=torch.int32)
    perm, tiles = KO.invert_selection(idx, nb, T)
    flat = idx.flatten()
    assert perm.dtype == tiles.dtype == torch.int32 and sorted(perm.tolist()) == list(range(flat.numel()))
    seg, lo, cnt = tiles.long().unbind(1)
    real = cnt > 0
    n_real = int(real.sum())
    assert bool(real[:n_real].all()) and not bool(real[n_real:].any()), "real tiles first, then padding"
    assert bool((cnt <= T).all())
    seen = []
    for s, a, n in zip(seg[real].tolist(), lo[real].tolist(), cnt[real].tolist()):
        for e in perm[a:a + n].tolist():
            bg, blk = divmod(s, nb)
            assert e // (C * K) == bg and int(flat[e]) == blk  # the entry belongs to this (b, group, block)
            seen.append(e)
    valid = (flat >= 0).nonzero().flatten().tolist()
    assert sorted(seen) == valid  # every valid entry exactly once, no -1 entry
    segs = (torch.arange(B * Hkv).view(B, Hkv, 1, 1) * nb + idx.long())[idx >= 0]
    counts = torch.bincount(segs, minlength=B * Hkv * nb)
    assert n_real == int(((counts + T - 1) // T).sum())  # tiles are full except the last of each block
    assert tiles.shape[0] == -(-flat.numel() // T) + min(flat.numel(), B * Hkv * nb)  # the grid's upper bound


def test_chunk_length_keeps_the_workspace_in_budget(monkeypatch):
    # m3 at 1M with bf16 partials and the 2 GiB default: ~8K tokens a chunk
    c = KO.chunk_tokens(1, 64, 128, 16, 2**20, 2, KO.DEFAULT_PARTIAL_BYTES)
    per_token = 16 * 64 * (128 * 2 + 4)
    assert c * per_token <= 2**31 < (c + 1) * per_token and 8000 < c < 8192
    assert KO.chunk_tokens(1, 64, 128, 16, 100, 2, KO.DEFAULT_PARTIAL_BYTES) == 100  # never longer than Nq
    with pytest.raises(ValueError, match="raise max_partial_bytes"):
        KO.chunk_tokens(1, 64, 128, 16, 100, 2, 1000)
    # a small budget really splits the call into chunks whose workspace fits it
    sizes = []
    def recording_alloc(shape, dtype, device):
        sizes.append((shape, dtype))
        return _nan(shape, dtype, device)

    monkeypatch.setattr(KO, "_alloc", recording_alloc)
    calls = []
    real_invert = KO.invert_selection
    monkeypatch.setattr(KO, "invert_selection", lambda idx, *a: calls.append(idx.shape[2]) or real_invert(idx, *a))
    q, k, v, idx, cfg = make_case(1, 4, 2, 23, 50, 32, 16, 3, torch.float16, seed=2)
    budget = 5 * 3 * 4 * (32 * 2 + 4)  # five tokens' worth
    o, lse = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=True, rows_per_tile=16,
                                          max_partial_bytes=budget)
    check(o, lse, q, k, v, idx, cfg)
    assert calls == [5, 5, 5, 5, 3]
    work = sum(torch.Size(s).numel() * torch.empty(0, dtype=d).element_size() for s, d in sizes[2:])
    assert work <= budget


def test_refuses_unsupported_inputs_clearly():
    q, k, v, idx, cfg = make_case(1, 2, 2, 4, 16, 32, 16, 2, torch.float16)
    with pytest.raises(ValueError, match="head dims 32, 64, 128"):
        KO.sparse_attention_kv_outer(q[..., :16], k[..., :16], v[..., :16], idx, cfg)
    with pytest.raises(ValueError, match="power of two >= 16"):
        KO.sparse_attention_kv_outer(q, k, v, idx, cfg, rows_per_tile=24)
    with pytest.raises(ValueError, match="tokens_per_chunk=3 must be in"):
        KO.sparse_attention_kv_outer(q, k, v, idx, cfg, tokens_per_chunk=3, max_partial_bytes=2 * 2 * (32 * 2 + 4))
    with pytest.raises(ValueError, match="partial_dtype"):
        KO.sparse_attention_kv_outer(q, k, v, idx, cfg, partial_dtype=torch.int8)
    big = torch.zeros(1, 130, 4, 32, dtype=torch.float16, device=DEV)  # group 130 > 128
    with pytest.raises(ValueError, match="use sparse_attention_prefill"):
        KO.sparse_attention_kv_outer(big, k[:, :1], v[:, :1], idx[:, :1], cfg)


@settings(max_examples=8, deadline=None)
@given(
    group=st.sampled_from([1, 2, 4, 16]), hkv=st.integers(1, 2), d=st.sampled_from([32, 64]),
    bs=st.sampled_from([16, 24, 32]), top_k=st.integers(2, 5), nk=st.integers(1, 70), frac=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]), rows=st.sampled_from([16, 64]),
    chunk=st.one_of(st.none(), st.integers(1, 9)), seed=st.integers(0, 2**16),
)
def test_property_random_shapes(group, hkv, d, bs, top_k, nk, frac, dtype, rows, chunk, seed):
    nq = max(1, round(frac * nk))
    q, k, v, idx, cfg = make_case(1, group * hkv, hkv, nq, nk, d, bs, top_k, dtype, seed=seed)
    o, lse = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=True, rows_per_tile=rows,
                                          tokens_per_chunk=chunk)
    check(o, lse, q, k, v, idx, cfg)


@pytest.mark.gpu
def test_gpu_m3_like_shape_matches_the_gather_kernel():
    """Compiled kernels (Triton 3.6 on the H100): one KV group of M3 (16 heads, D 128, block 128, top-16)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    Nq, Nk = 512, 8192
    q, k, v = r(1, 16, Nq, 128), r(1, 1, Nk, 128), r(1, 1, Nk, 128)
    cfg = MSAConfig(block_size=128, top_k=16)
    iq, ik = r(1, 1, Nq, 32).float(), r(1, 1, Nk, 32).float()
    idx = R.select_blocks(iq, ik, cfg)
    o, lse = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=True, tokens_per_chunk=200)
    check(o, lse, q, k, v, idx, cfg)
    o_g, lse_g = SA.sparse_attention_prefill(q, k, v, idx, cfg, return_lse=True)
    assert rel_err(o, o_g) <= 1e-2 and torch.allclose(lse, lse_g, atol=1e-2, rtol=0)


def test_prefill_schedule_rule(monkeypatch):
    """auto takes KV-outer from KV_OUTER_MIN_TOKENS query tokens; the variable forces either; typos are refused."""
    K = importlib.import_module("msa_lab.kernels")
    monkeypatch.delenv("MSA_LAB_PREFILL_SCHEDULE", raising=False)
    assert K.prefill_schedule(K.KV_OUTER_MIN_TOKENS - 1) == "per_token"
    assert K.prefill_schedule(K.KV_OUTER_MIN_TOKENS) == "kv_outer"
    monkeypatch.setenv("MSA_LAB_PREFILL_SCHEDULE", "per_token")
    assert K.prefill_schedule(10 ** 7) == "per_token"
    monkeypatch.setenv("MSA_LAB_PREFILL_SCHEDULE", "kv_outer")
    assert K.prefill_schedule(17) == "kv_outer"
    monkeypatch.setenv("MSA_LAB_PREFILL_SCHEDULE", "kvouter")
    with pytest.raises(ValueError, match="auto"):
        K.prefill_schedule(17)


def test_sparse_attention_op_routes_by_schedule(monkeypatch):
    """The package op calls the kernel the schedule names (checked by recording the call, small shapes)."""
    K = importlib.import_module("msa_lab.kernels")
    calls = []
    monkeypatch.setattr(K._kv_outer, "sparse_attention_kv_outer", lambda *a, **kw: calls.append("kv_outer"))
    monkeypatch.setattr(K, "sparse_attention_prefill", lambda *a, **kw: calls.append("per_token"))
    monkeypatch.setattr(K, "KV_OUTER_MIN_TOKENS", 32)
    monkeypatch.delenv("MSA_LAB_PREFILL_SCHEDULE", raising=False)
    q = torch.zeros(1, 2, 20, 32)
    K.sparse_attention(q, None, None, None, None)
    K.sparse_attention(torch.zeros(1, 2, 40, 32), None, None, None, None)
    assert calls == ["per_token", "kv_outer"]
