"""The Triton indexer compiled on a CUDA GPU (Hopper): GPU-sized shapes, 128K against the chunked torch
path, and a 1M-token prefill that must fit and select right on sampled rows.

Run on the device machine: ``pytest -q -s tests/gpu/test_indexer_gpu.py`` (-s prints timings).
Checks are tie-aware: a selection passes when it is a valid top-k of the float64 scores within a
rigorous bound on the fp32-accumulated dot's rounding (or the fp8 quantisation for fp8 runs).
"""
import time

import pytest
import torch
import triton

from msa_lab import MSAConfig, torch_path
from msa_lab import reference as R

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)"),
]

if torch.cuda.is_available():
    from msa_lab.kernels import indexer as I

POISON = 12345


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(I, "_alloc", lambda shape, dtype, device: torch.full(shape, POISON, dtype=dtype, device=device))


def inputs(B, Hkv, Hik, Nq, Nk, Di, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    iq = torch.randn(B, Hkv, Nq, Di, generator=g, device="cuda").to(dtype)
    ik = torch.randn(B, Hik, Nk, Di, generator=g, device="cuda").to(dtype)
    return iq, ik


def row_scores(iq, ik, rows, cfg):
    """Exact float64 scores of some rows, and a bound on an fp32-accumulated kernel's error.

    rows [R, 3] holds (b, h, i). Returns s [R, nb] with forced blocks at +inf, invisible ones at -inf
    and visible all -inf ones at -1e308, and err [R, nb] (gamma_{Di+1} * max over the block of
    sum |iq||ik| * index_scale, the classic bound for a dot accumulated in fp32).
    """
    Nq, Di = iq.shape[2], iq.shape[3]
    Nk = ik.shape[2]
    b, h, i = rows.unbind(-1)
    kh = h if ik.shape[1] > 1 else torch.zeros_like(h)
    q = iq[b, h, i].double()  # [R, Di]
    dots = torch.empty(len(rows), Nk, dtype=torch.float64, device=q.device)
    mag = torch.empty_like(dots)
    for bb, hh in torch.stack([b, kh], -1).unique(dim=0).tolist():
        m = (b == bb) & (kh == hh)
        keys = ik[bb, hh].double()  # [Nk, Di]
        dots[m] = q[m] @ keys.T
        mag[m] = q[m].abs() @ keys.abs().T
    scale = cfg.index_softmax_scale(Di)
    gamma = (Di + 1) * 2.0**-24 / (1 - (Di + 1) * 2.0**-24)
    pos = Nk - Nq + i
    dots = torch.nan_to_num(dots * scale, nan=-float("inf"))
    vis_key = torch.arange(Nk, device=q.device)[None, :] <= pos[:, None]
    nb, bs = cfg.num_blocks(Nk), cfg.block_size
    pad = nb * bs - Nk
    s = torch.nn.functional.pad(dots.masked_fill(~vis_key, -float("inf")), (0, pad), value=-float("inf"))
    s = s.view(-1, nb, bs).amax(-1)
    mag = torch.nan_to_num(mag, nan=0.0)  # a NaN product is out of the max exactly: no rounding to bound
    err = torch.nn.functional.pad(mag * scale * gamma, (0, pad)).view(-1, nb, bs).amax(-1)
    own = (pos // bs)[:, None]
    blk = torch.arange(nb, device=q.device)[None, :]
    visible = blk <= own
    s = torch.where(visible & (s == -float("inf")), torch.full_like(s, -1e308), s)
    s = s.masked_fill(~visible, -float("inf"))
    s = s.masked_fill(visible & ((blk < cfg.init_blocks) | (blk > own - cfg.local_blocks)), float("inf"))
    return s, err


def selected(got, nb):
    """[R, top_k] block numbers (-1 padded) -> [R, nb] selection counts."""
    count = torch.zeros(got.shape[0], nb + 1, dtype=torch.long, device=got.device)
    count.scatter_add_(-1, torch.where(got < 0, nb, got), torch.ones_like(got))  # -1 -> spare column
    return count[:, :nb]


def check_rows(idx, iq, ik, cfg, rows):
    """The selection of `rows` ([R, 3] of b, h, i) is a valid top-k within the rounding bound."""
    b, h, i = rows.unbind(-1)
    s, err = row_scores(iq, ik, rows, cfg)
    got = idx[b, h, i].long()  # [R, top_k]
    nb = s.shape[-1]
    assert bool(((got >= -1) & (got < nb)).all()), f"out of range values: {got.unique()[:10].tolist()}"
    count = selected(got, nb)
    assert int(count.max()) <= 1, "a block selected twice"
    sel = count.bool()
    visible = s > -float("inf")
    assert torch.equal(sel.sum(-1), visible.sum(-1).clamp(max=cfg.top_k)), "wrong number of blocks"
    assert not bool((sel & ~visible).any()), "invisible block selected"
    assert bool((sel | (s < float("inf"))).all()), "forced block missing"
    lo = torch.where(sel, s + err, torch.full_like(s, float("inf"))).amin(-1)
    hi = torch.where(visible & ~sel, s - err, torch.full_like(s, -float("inf"))).amax(-1)
    bad = ~(hi <= lo)
    assert not bool(bad.any()), f"{int(bad.sum())} rows are not a top-k within rounding, first {rows[bad][0].tolist()}"


def all_rows(B, Hkv, Nq, device="cuda"):
    return torch.cartesian_prod(torch.arange(B), torch.arange(Hkv), torch.arange(Nq)).to(device)


def sample_rows(B, Hkv, Nq, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.stack([torch.randint(0, B, (n,), generator=g), torch.randint(0, Hkv, (n,), generator=g),
                     torch.randint(0, Nq, (n,), generator=g)], -1)
    return torch.cat([r, torch.tensor([[B - 1, Hkv - 1, Nq - 1], [0, 0, 0]])]).cuda()


GRID = [  # B, Hkv, Hik, Nq, Nk, Di, block, top_k, dtype, key_chunks
    (1, 4, 1, 2048, 2048, 128, 128, 16, torch.bfloat16, None),  # m3-like prefill
    (2, 8, 1, 1000, 5000, 128, 128, 16, torch.float16, None),  # llama3-like chunked prefill
    (1, 4, 4, 777, 4099, 64, 64, 8, torch.bfloat16, None),  # per-group ik
    (8, 4, 1, 1, 70000, 128, 128, 16, torch.bfloat16, None),  # decode, batch 8
    (4, 4, 1, 16, 100003, 128, 128, 16, torch.bfloat16, None),  # decode, 16 tokens
    (1, 2, 1, 513, 3000, 32, 32, 8, torch.float32, None),  # fp32 (ieee dot)
    (1, 2, 1, 300, 2000, 256, 128, 8, torch.bfloat16, None),  # Di 256
    (1, 4, 1, 600, 1500, 32, 16, 8, torch.float16, 5),  # block 16, forced key split
    (2, 3, 1, 400, 900, 64, 24, 6, torch.bfloat16, 3),  # odd groups and block
    (1, 2, 2, 128, 3000, 128, 200, 4, torch.float32, None),  # block 200: two tiles per block
]


@pytest.mark.parametrize("B,Hkv,Hik,Nq,Nk,Di,bs,top_k,dtype,kc", GRID)
def test_matches_reference_gpu(B, Hkv, Hik, Nq, Nk, Di, bs, top_k, dtype, kc):
    iq, ik = inputs(B, Hkv, Hik, Nq, Nk, Di, dtype, seed=Nq)
    cfg = MSAConfig(block_size=bs, top_k=top_k)
    idx = I._select_blocks(iq, ik, cfg, key_chunks=kc)
    rows = all_rows(B, Hkv, Nq) if B * Hkv * Nq <= 8192 else sample_rows(B, Hkv, Nq, 4096)
    for r in rows.split(1024):
        check_rows(idx, iq, ik, cfg, r)
    if B * Hkv * Nq * Nk <= 2**25:  # the full score matrix against the float64 reference
        got = I._block_scores(iq, ik, cfg, key_chunks=kc).double()
        ref = R.block_scores(iq, ik, cfg)
        assert torch.equal(got == -float("inf"), ref == -float("inf"))
        r = all_rows(B, Hkv, Nq)
        bound = torch.cat([row_scores(iq, ik, c, cfg)[1] for c in r.split(1024)]).view(ref.shape)
        fin = torch.isfinite(ref)
        err = (got[fin] - ref[fin]).abs()
        assert bool((err <= bound[fin]).all()), f"block score error {float(err.max()):.3g} above the bound"


def test_nan_acts_as_minus_inf_gpu():
    """Compiled max reductions must skip NaN products (maxnum), as the contract and the interpreter do."""
    iq, ik = inputs(1, 4, 1, 300, 1000, 128, torch.bfloat16, seed=7)
    ik[0, 0, 5, 3] = float("nan")
    ik[0, 0, 256:384] = float("nan")  # a whole block
    iq[0, 2, 100] = float("nan")
    cfg = MSAConfig(block_size=128, top_k=4)
    got = I.block_scores(iq, ik, cfg).double()
    ref = R.block_scores(iq, ik, cfg)
    assert torch.equal(got == -float("inf"), ref == -float("inf"))
    assert torch.equal(got == -torch.finfo(torch.float32).max, ref == -1e308)
    fin = torch.isfinite(ref) & (ref > -1e308)
    assert float((got[fin] - ref[fin]).abs().max()) < 1e-3
    idx = I.select_blocks(iq, ik, cfg)
    rows = all_rows(1, 4, 300)
    nan_row = (rows[:, 1] == 2) & (rows[:, 2] == 100)  # ties everywhere (and a NaN bound): checked apart
    check_rows(idx, iq, ik, cfg, rows[~nan_row])
    own = (1000 - 300 + 100) // 128
    picked = idx[0, 2, 100]
    assert int((picked >= 0).sum()) == 4 and 0 in picked.tolist() and own in picked.tolist()
    assert len(set(picked.tolist())) == 4 and int(picked.max()) <= own


def test_fp8_gpu():
    iq, ik = inputs(1, 4, 1, 4096, 4096, 128, torch.bfloat16, seed=3)
    cfg = MSAConfig.preset("m3")
    a = I.select_blocks(iq, ik, cfg, fp8=True)
    b = I.select_blocks(iq, ik, cfg)
    agree = I.selection_agreement(a, b)
    print(f"\nfp8 vs bf16 selection agreement at 4K (random data): {agree:.4f}")
    assert 0.0 < agree <= 1.0 and a.shape == b.shape
    # structure: every row keeps its forced blocks and min(top_k, visible) distinct blocks
    rows = sample_rows(1, 4, 4096, 512)
    s, _ = row_scores(iq, ik, rows, cfg)
    count = selected(a[rows[:, 0], rows[:, 1], rows[:, 2]].long(), s.shape[-1])
    assert int(count.max()) <= 1 and bool((count.bool() | (s < float("inf"))).all())
    assert torch.equal(count.sum(-1), (s > -float("inf")).sum(-1).clamp(max=cfg.top_k))


def _time(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def test_128k_matches_torch_path():
    """m3 shapes at Nq = Nk = 128K against the chunked float32 torch path; rows that differ must be ties."""
    N = 131072
    cfg = MSAConfig.preset("m3")
    iq, ik = inputs(1, 4, 1, N, N, 128, torch.bfloat16, seed=11)
    I.select_blocks(iq, ik, cfg)  # autotune (its timing buffers) before measuring memory
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    idx = I.select_blocks(iq, ik, cfg)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    out_bytes = idx.numel() * 4
    # one key chunk here (plenty of query tiles): the output is the only buffer, plus a 1-element scale
    assert extra <= out_bytes + (1 << 20), f"indexer used {extra / 2**20:.1f} MiB beyond its output"
    ref = torch_path.select_blocks(iq, ik, cfg)
    differ = (idx.sort(-1).values != ref.sort(-1).values).any(-1)
    rows = differ.nonzero()
    print(f"\n128K: {rows.shape[0]} of {differ.numel()} rows differ from the torch path (checked as ties)")
    for r in torch.cat([rows, sample_rows(1, 4, N, 256)]).split(256):
        check_rows(idx, iq, ik, cfg, r)
    sec = _time(lambda: I.select_blocks(iq, ik, cfg))
    flops = 2 * 4 * 128 * N * (N + 1) / 2
    print(f"128K m3 select_blocks: {sec * 1e3:.1f} ms, {flops / sec / 1e12:.0f} TFLOP/s (causal QK)")


def test_1m_prefill_fits_and_is_right():
    """The 1M prefill (Nq = Nk = 2**20, m3 index shapes) runs with O(Nq x top_k) extra memory."""
    N = 1 << 20
    cfg = MSAConfig.preset("m3")
    iq, ik = inputs(1, 4, 1, N, N, 128, torch.bfloat16, seed=13)
    I.select_blocks(iq, ik, cfg)  # autotune first if no smaller run did (same key from 4K queries up)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    idx = I.select_blocks(iq, ik, cfg)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= idx.numel() * 4 + (1 << 20), f"indexer used {extra / 2**30:.2f} GiB beyond its output"
    check_rows(idx, iq, ik, cfg, sample_rows(1, 4, N, 192, seed=1))
    sec = _time(lambda: I.select_blocks(iq, ik, cfg), reps=2)
    flops = 2 * 4 * 128 * N * (N + 1) / 2
    print(f"\n1M m3 select_blocks: {sec * 1e3:.0f} ms, "
          f"{flops / sec / 1e12:.0f} TFLOP/s, {extra / 2**20:.0f} MiB extra")


@pytest.mark.parametrize("B,Nk", [(1, 1 << 20), (8, 1 << 17)])
def test_decode_streams_ik(B, Nk):
    """Decode (4 new tokens): time against the floor of reading ik once."""
    cfg = MSAConfig.preset("m3")
    iq, ik = inputs(B, 4, 1, 4, Nk, 128, torch.bfloat16, seed=17)
    idx = I.select_blocks(iq, ik, cfg)
    check_rows(idx, iq, ik, cfg, all_rows(B, 4, 4))
    sec = _time(lambda: I.select_blocks(iq, ik, cfg), reps=20)
    gpu = triton.testing.do_bench(lambda: I.select_blocks(iq, ik, cfg)) * 1e-3
    gbs = ik.numel() * ik.element_size() / gpu / 1e9
    print(f"\ndecode B={B} Nk={Nk}: {sec * 1e6:.0f} us wall (host launch included), {gpu * 1e6:.0f} us on the GPU, "
          f"ik streamed at {gbs:.0f} GB/s")
