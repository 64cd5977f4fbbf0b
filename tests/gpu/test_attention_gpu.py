"""MSA attention kernels on a real GPU (H100): the CPU grid at larger shapes, and M3 at 128K tokens.

Run on the device machine: ``python -m pytest tests/gpu -m gpu -s`` (-s shows the timings). Small and
medium shapes compare with the float64 reference; the 128K-token cases compare with msa_lab.torch_path
(float32 math, chunked) on the GPU, on a few query chunks of the full prefill.
"""
import importlib

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)"),
]

from msa_lab import M3, MSAConfig, torch_path  # noqa: E402
from msa_lab import reference as R  # noqa: E402

TOL = {torch.float16: 3e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}


def _kernels():
    K = importlib.import_module("msa_lab.kernels")
    return K, importlib.import_module("msa_lab.kernels.sparse_attention"), importlib.import_module("msa_lab.kernels.sparse_decode")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    if not torch.cuda.is_available():
        return
    _, SA, SD = _kernels()
    nan = lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device)  # noqa: E731
    monkeypatch.setattr(SA, "_alloc", nan)
    monkeypatch.setattr(SD, "_alloc", nan)


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def assert_close(o, lse, ref_o, ref_lse, dtype):
    tol = TOL[dtype]
    assert bool(torch.isfinite(o).all()), "NaN/inf in O: an element was not written"
    err = rel_err(o, ref_o)
    assert err <= tol, err
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    lse_err = ((lse[fin] - ref_lse[fin]).abs() / (ref_lse[fin].abs() + 1)).max()
    assert float(lse_err) <= tol, float(lse_err)
    assert bool((o[~fin] == 0).all())


def make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda").to(dtype)  # noqa: E731
    q, k, v = r(B, Hq, Nq, D), r(B, Hkv, Nk, D), r(B, Hkv, Nk, D)
    cfg = MSAConfig(block_size=bs, top_k=top_k)
    iq = torch.randn(B, Hkv, Nq, 16, generator=g, device="cuda")
    idx = torch_path.select_blocks(iq, torch.randn(B, 1, Nk, 16, generator=g, device="cuda"), cfg)
    idx = idx.gather(-1, torch.rand(idx.shape, generator=g, device="cuda").argsort(-1))  # -1 anywhere
    return q, k, v, idx, cfg


GRID = [  # B, Hq, Hkv, Nq, Nk, D, block, top_k, dtype
    (2, 2, 2, 700, 700, 32, 16, 6, torch.float16),
    (2, 8, 4, 500, 1500, 64, 32, 8, torch.bfloat16),
    (1, 16, 4, 600, 600, 64, 64, 16, torch.float16),  # top_k above the number of blocks early on
    (1, 64, 4, 1000, 1999, 128, 128, 16, torch.bfloat16),  # M3 heads
    (1, 32, 8, 333, 1000, 128, 128, 4, torch.float16),  # Llama-3-8B heads
    (1, 8, 2, 400, 1000, 32, 64, 8, torch.bfloat16),  # msa-tiny
    (1, 16, 1, 300, 800, 128, 48, 5, torch.float32),  # block not a power of two
    (1, 80, 1, 100, 300, 64, 32, 3, torch.float16),  # heads split over programs
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bs,top_k,dtype", GRID)
def test_prefill_matches_reference(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype):
    K, SA, _ = _kernels()
    q, k, v, idx, cfg = make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=Nq)
    o, lse = SA.sparse_attention_prefill(q, k, v, idx, cfg, return_lse=True)
    ref_o, ref_lse = R.sparse_attention(q.double(), k.double(), v.double(), idx, cfg, return_lse=True)
    assert_close(o, lse, ref_o, ref_lse, dtype)


DECODE = [  # B, Hq, Hkv, Nq, Nk, D, block, top_k, dtype, num_splits
    (8, 64, 4, 1, 5000, 128, 128, 16, torch.bfloat16, None),
    (8, 32, 8, 16, 3000, 128, 128, 16, torch.float16, None),
    (16, 8, 2, 4, 2000, 32, 64, 8, torch.bfloat16, 3),
    (8, 16, 4, 7, 1000, 64, 32, 10, torch.float16, 10),
    (8, 4, 2, 3, 40, 64, 16, 8, torch.float32, 8),  # top_k > blocks: empty splits
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bs,top_k,dtype,splits", DECODE)
def test_decode_matches_reference(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, splits):
    K, _, SD = _kernels()
    q, k, v, idx, cfg = make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=Nq + 1)
    o, lse = SD.sparse_attention_decode(q, k, v, idx, cfg, return_lse=True, num_splits=splits)
    ref_o, ref_lse = R.sparse_attention(q.double(), k.double(), v.double(), idx, cfg, return_lse=True)
    assert_close(o, lse, ref_o, ref_lse, dtype)
    o2, lse2 = K.sparse_attention(q, k, v, idx, cfg, return_lse=True)  # the dispatcher picks decode too
    assert_close(o2, lse2, ref_o, ref_lse, dtype)


def _bench_ms(fn, graph=False):
    """Median milliseconds. graph=True replays a CUDA graph, so host launch overhead (which decode
    serving hides the same way) stays out of the number."""
    import triton.testing

    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def _m3_inputs(B, Nq, Nk, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    q, k, v = r(B, M3.n_heads, Nq, 128), r(B, M3.n_kv_heads, Nk, 128), r(B, M3.n_kv_heads, Nk, 128)
    idx = torch_path.select_blocks(r(B, M3.n_kv_heads, Nq, 128), r(B, 1, Nk, 128), M3)
    return q, k, v, idx


def test_m3_128k_prefill(monkeypatch):
    """Full 128K-token M3 prefill; three 512-query chunks checked against the torch path."""
    K, SA, _ = _kernels()
    N = 128 * 1024
    q, k, v, idx = _m3_inputs(1, N, N, seed=0)
    o, lse = SA.sparse_attention_prefill(q, k, v, idx, M3, return_lse=True)
    for s0 in (0, N // 2 - 256, N - 512):
        s1 = s0 + 512  # queries [s0, s1) are the last 512 of keys [0, s1): the torch path's alignment
        ref_o, ref_lse = torch_path.sparse_attention(q[:, :, s0:s1], k[:, :, :s1], v[:, :, :s1], idx[:, :, s0:s1],
                                                     M3, return_lse=True)
        assert_close(o[:, :, s0:s1], lse[:, :, s0:s1], ref_o.float(), ref_lse, torch.bfloat16)
    del o, lse
    monkeypatch.setattr(SA, "_alloc", torch.empty)  # time the real allocator, not the poisoning one
    ms = _bench_ms(lambda: SA.sparse_attention_prefill(q, k, v, idx, M3))
    kv_gb = N * M3.n_kv_heads * M3.top_k * M3.block_size * 128 * 2 * 2 / 1e9  # gathered K+V per token x group
    flop = 4 * N * M3.n_heads * M3.top_k * M3.block_size * 128
    print(f"\n[m3 prefill 128K bf16] {ms:.1f} ms  {flop / ms / 1e9:.0f} TFLOP/s  gathered K/V {kv_gb / ms:.1f} TB/s "
          f"(mostly L2)  config {SA._sparse_attn_fwd_kernel.best_config}")
    try:  # dense causal flash attention on the same tensors, for scale (not a pass/fail figure)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kk, vv = (t.repeat_interleave(M3.group_size, 1) for t in (k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            dense = _bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=True))
        print(f"[dense causal SDPA flash, same shapes] {dense:.1f} ms")
    except Exception as e:  # noqa: BLE001 - informational only
        print(f"[dense causal SDPA flash] not measured: {type(e).__name__}: {e}")


@pytest.mark.parametrize("Nq", [1, 4, 16])
def test_m3_128k_decode(monkeypatch, Nq):
    """Decode at a 128K-token context, batch 8, against the torch path; prints graph-replay times."""
    K, SA, SD = _kernels()
    B, N = 8, 128 * 1024
    q, k, v, idx = _m3_inputs(B, Nq, N, seed=Nq)
    o, lse = K.sparse_attention(q, k, v, idx, M3, return_lse=True)
    ref_o, ref_lse = torch_path.sparse_attention(q, k, v, idx, M3, return_lse=True)
    assert_close(o, lse, ref_o.float(), ref_lse, torch.bfloat16)
    monkeypatch.setattr(SD, "_alloc", torch.empty)
    monkeypatch.setattr(SA, "_alloc", torch.empty)
    SD.sparse_attention_decode(q, k, v, idx, M3, num_splits=1)  # autotune outside the graph capture
    SA.sparse_attention_prefill(q, k, v, idx, M3)
    auto = _bench_ms(lambda: K.sparse_attention(q, k, v, idx, M3), graph=True)
    one = _bench_ms(lambda: SD.sparse_attention_decode(q, k, v, idx, M3, num_splits=1), graph=True)
    pre = _bench_ms(lambda: SA.sparse_attention_prefill(q, k, v, idx, M3), graph=True)
    eager = _bench_ms(lambda: K.sparse_attention(q, k, v, idx, M3))
    gb = B * Nq * M3.n_kv_heads * M3.top_k * M3.block_size * 128 * 2 * 2 / 1e9
    print(f"\n[m3 decode B={B} Nq={Nq} ctx 128K bf16] dispatched {auto * 1e3:.1f} us ({gb / auto:.2f} TB/s "
          f"gathered), 1 split {one * 1e3:.1f} us, prefill kernel {pre * 1e3:.1f} us, eager (launch overhead incl.) "
          f"{eager * 1e3:.1f} us; config {SD._sparse_decode_split_kernel.best_config}")


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bs,top_k,dtype", GRID)
def test_kv_outer_prefill_matches_reference(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, monkeypatch):
    """The opt-in KV-outer schedule (MSA_LAB_PREFILL_SCHEDULE=kv_outer) on the same grid."""
    KO = importlib.import_module("msa_lab.kernels.sparse_attention_kv_outer")
    if hasattr(KO, "_alloc"):
        monkeypatch.setattr(KO, "_alloc", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                                  device=device))
    q, k, v, idx, cfg = make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=Nq)
    o, lse = KO.sparse_attention_kv_outer(q, k, v, idx, cfg, return_lse=True)
    ref_o, ref_lse = R.sparse_attention(q.double(), k.double(), v.double(), idx, cfg, return_lse=True)
    assert_close(o, lse, ref_o, ref_lse, dtype)


@pytest.mark.parametrize("nq,nk", [(1000, 5000), (4096, 65536)])
def test_dense_chunk_attention_matches_the_explicit_mask(nq, nk):
    """dense-200k's chunked prefill on CUDA (causal_lower_right) against the CPU path's explicit mask."""
    from msa_lab.model.layers import dense_attention

    g = torch.Generator(device="cpu").manual_seed(nq)
    q = torch.randn(1, 8, nq, 32, generator=g)
    k, v = (torch.randn(1, 2, nk, 32, generator=g) for _ in range(2))  # GQA: 4 query heads per KV head
    want = dense_attention(q, k, v, 32 ** -0.5)
    got = dense_attention(q.cuda(), k.cuda(), v.cuda(), 32 ** -0.5).cpu()
    assert rel_err(got, want) < 1e-4
