"""The Triton indexer (kernels/indexer.py) against the float64 reference, in the Triton interpreter.

Selections compare as sets per row. A row may differ from the reference only where the reference's
k-th and (k+1)-th block scores tie within the dtype's rounding, and even there the kernel's set must
be a valid top-k within that rounding. Every output buffer is poisoned first (see `poison`).
"""
import os

import torch

if not torch.cuda.is_available():  # before triton is imported (tests/conftest.py does the same)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from msa_lab import MSAConfig  # noqa: E402
from msa_lab import reference as R  # noqa: E402
from msa_lab.kernels import indexer as I  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TIE_TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-3, torch.float32: 1e-5}
POISON = 12345  # not a block number of any test shape, and a score no test input reaches

pytestmark = pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # interpreter's np.nanmax


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every buffer the wrapper allocates starts as POISON, so an element no kernel writes fails."""
    monkeypatch.setattr(I, "_alloc", lambda shape, dtype, device: torch.full(shape, POISON, dtype=dtype, device=device))


def inputs(B, Hkv, Hik, Nq, Nk, Di, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    iq = torch.randn(B, Hkv, Nq, Di, generator=g).to(DEVICE, dtype)
    ik = torch.randn(B, Hik, Nk, Di, generator=g).to(DEVICE, dtype)
    return iq, ik


def dot_error_bound(iq, ik, cfg, unit):
    """[B, Hkv, Nq, n_blocks] float64 bound on |kernel score - reference score| for a dot of Di products
    accumulated in a float format of unit roundoff `unit` (the classic gamma_n = n u / (1 - n u))."""
    Di = iq.shape[-1]
    gamma = (Di + 1) * unit / (1 - (Di + 1) * unit)
    ika = R._expand_index_keys(ik, iq.shape[1]).double().abs()
    mag = torch.einsum("bhid,bhjd->bhij", iq.double().abs(), ika) * gamma * cfg.index_softmax_scale(Di)
    nb, bs = cfg.num_blocks(ik.shape[2]), cfg.block_size
    mag = torch.nn.functional.pad(mag, (0, nb * bs - ik.shape[2]))
    return mag.view(*mag.shape[:3], nb, bs).amax(-1)


def check_scores(got, iq, ik, cfg, bound):
    """block_scores: same visibility, same 'visible but all -inf' blocks, values within `bound`."""
    ref = R.block_scores(iq.cpu(), ik.cpu(), cfg)
    got = got.cpu().double()
    bound = bound.cpu()
    assert got.shape == ref.shape and not torch.isnan(got).any()
    assert torch.equal(got == -float("inf"), ref == -float("inf")), "visibility differs"
    assert torch.equal(got == -torch.finfo(torch.float32).max, ref == -1e308), "all -inf blocks differ"
    fin = torch.isfinite(ref) & (ref > -1e308)
    err = (got[fin] - ref[fin]).abs()
    assert bool((err <= bound[fin]).all()), f"score error {float(err.max()):.3g} above the bound"


def selected_count(idx, nb):
    """[..., top_k] block numbers (-1 padded) -> [..., nb] how often each block is selected."""
    idx = idx.long()
    count = torch.zeros(*idx.shape[:-1], nb + 1, dtype=torch.long)
    count.scatter_add_(-1, torch.where(idx < 0, nb, idx), torch.ones_like(idx))  # -1 -> spare column
    return count[..., :nb]


def check_selection(idx, iq, ik, cfg, tol):
    """The contract per row, then sets equal to the reference except at ties within `tol`.

    Returns the number of rows that differ from the reference (all of them ties)."""
    B, Hkv, Nq, _ = iq.shape
    Nk = ik.shape[2]
    assert idx.shape == (B, Hkv, Nq, cfg.top_k) and idx.dtype == torch.int32
    idx = idx.cpu().long()
    assert bool(((idx >= -1) & (idx < cfg.num_blocks(Nk))).all()), f"out of range: {idx.unique().tolist()}"
    s = R.block_scores(iq.cpu(), ik.cpu(), cfg)
    forced = R.forced_blocks(Nq, Nk, cfg)
    s = s.masked_fill(forced, float("inf"))
    visible = s > -float("inf")  # [B, Hkv, Nq, nb]
    nb = s.shape[-1]
    count = selected_count(idx, nb)
    assert int(count.max()) <= 1, "a block is selected twice in one row"
    sel = count.bool()
    n_want = visible.sum(-1).clamp(max=cfg.top_k)
    assert torch.equal(sel.sum(-1), n_want), "wrong number of selected blocks"
    assert not bool((sel & ~visible).any()), "an invisible block is selected"
    assert bool((sel | ~forced).all()), "a forced block is missing"

    ref = R.select_blocks(iq.cpu(), ik.cpu(), cfg).long()
    differ = (idx.sort(-1).values != ref.sort(-1).values).any(-1)  # [B, Hkv, Nq]
    if not bool(differ.any()):
        return 0
    # differing rows: the reference's k-th and (k+1)-th scores must tie ...
    top = s.topk(min(cfg.top_k + 1, nb), -1).values
    k = n_want
    sk = top.gather(-1, (k - 1).clamp(min=0)[..., None])[..., 0]
    sk1 = top.gather(-1, k.clamp(max=top.shape[-1] - 1)[..., None])[..., 0]
    tie = (sk == sk1) | ((sk - sk1).abs() <= tol * sk.abs().clamp(min=1))
    bad = differ & ~(tie & (k < top.shape[-1]))
    assert not bool(bad.any()), f"{int(bad.sum())} rows differ with no tie, first at {bad.nonzero()[0].tolist()}"
    # ... and the kernel's set must still be a top-k within that rounding
    lo = torch.where(sel, s, torch.full_like(s, float("inf"))).amin(-1)
    hi = torch.where(visible & ~sel, s, torch.full_like(s, -float("inf"))).amax(-1)
    ok = (lo >= hi) | (hi - lo <= tol * lo.abs().clamp(min=1))
    assert bool(ok[differ].all()), "a differing row is not a top-k within rounding"
    return int(differ.sum())


def run_case(B, Hkv, Hik, Nq, Nk, Di, bs, top_k, dtype, key_chunks=None, init=1, local=1, seed=0):
    iq, ik = inputs(B, Hkv, Hik, Nq, Nk, Di, dtype, seed)
    cfg = MSAConfig(block_size=bs, top_k=top_k, init_blocks=init, local_blocks=local)
    idx = I._select_blocks(iq, ik, cfg, key_chunks=key_chunks)
    check_selection(idx, iq, ik, cfg, TIE_TOL[dtype])
    scores = I._block_scores(iq, ik, cfg, key_chunks=key_chunks)
    check_scores(scores, iq, ik, cfg, dot_error_bound(iq, ik, cfg, 2.0**-24))


GRID = [  # B, Hkv, Hik, Nq, Nk, Di, block, top_k, dtype, key_chunks
    (1, 2, 1, 77, 77, 32, 16, 4, torch.bfloat16, None),  # Nq == Nk, not a multiple of the block
    (2, 2, 2, 33, 150, 32, 16, 3, torch.float16, None),  # chunked prefill, one ik head per group
    (1, 4, 1, 45, 130, 64, 32, 3, torch.float32, 2),  # key blocks split over 2 programs + merge
    (2, 4, 1, 1, 300, 64, 32, 4, torch.bfloat16, None),  # decode, 1 new token
    (1, 4, 1, 1, 300, 32, 16, 4, torch.bfloat16, 7),  # decode, split keys
    (1, 4, 4, 16, 257, 32, 16, 5, torch.float32, 3),  # decode, 16 tokens, per-group ik
    (1, 1, 1, 50, 90, 32, 16, 3, torch.float16, None),  # one KV group
    (1, 2, 1, 40, 60, 32, 16, 8, torch.bfloat16, None),  # top_k above the number of blocks
    (1, 2, 1, 40, 60, 32, 16, 8, torch.bfloat16, 3),  # ... with the merge
    (1, 2, 1, 70, 200, 128, 64, 3, torch.bfloat16, 2),  # Di 128
    (1, 4, 1, 130, 600, 64, 128, 3, torch.float16, None),  # block 128
    (1, 3, 1, 30, 64, 16, 16, 3, torch.float32, None),  # Hkv 3 (no power of two), Di 16
    (1, 8, 1, 20, 64, 32, 16, 3, torch.bfloat16, None),  # 8 groups stacked in one tile
    (1, 6, 1, 25, 80, 32, 16, 3, torch.float16, 2),  # 6 groups: 3 chunks of 2
    (1, 2, 1, 37, 100, 32, 24, 3, torch.float32, None),  # block 24: masked tile columns
    (1, 2, 2, 30, 75, 32, 12, 4, torch.bfloat16, 2),  # block 12 < 16
    (1, 2, 1, 30, 500, 32, 160, 3, torch.float16, None),  # block 160: two key tiles per block
]


@pytest.mark.parametrize("B,Hkv,Hik,Nq,Nk,Di,bs,top_k,dtype,kc", GRID)
def test_matches_reference(B, Hkv, Hik, Nq, Nk, Di, bs, top_k, dtype, kc):
    run_case(B, Hkv, Hik, Nq, Nk, Di, bs, top_k, dtype, kc, seed=Nq + Nk)


@pytest.mark.parametrize("init,local", [(0, 0), (0, 2), (2, 1), (3, 3)])
def test_forcing(init, local):
    run_case(1, 2, 1, 50, 120, 32, 16, 6, torch.float32, 2, init=init, local=local, seed=init * 10 + local)


def test_top_k_at_number_of_blocks():
    run_case(1, 2, 1, 64, 64, 32, 16, 4, torch.float32)  # 4 blocks, top_k 4: everything visible


def test_nan_and_inf_inputs():
    iq, ik = inputs(1, 2, 1, 40, 100, 32, torch.float32, seed=3)
    ik[0, 0, 5, 3] = float("nan")  # one NaN key: acts as -inf inside block 0
    ik[0, 0, 32:48] = float("nan")  # a whole block of NaN: visible, but worst
    ik[0, 0, 70, :] = float("inf")  # +inf / -inf / NaN products
    iq[0, 1, 30] = float("nan")  # a NaN query row: every block ties at -FLT_MAX
    cfg = MSAConfig(block_size=16, top_k=4)
    check_selection(I._select_blocks(iq, ik, cfg, key_chunks=2), iq, ik, cfg, TIE_TOL[torch.float32])
    got, ref = I.block_scores(iq, ik, cfg).double(), R.block_scores(iq, ik, cfg)
    assert torch.equal(got == -float("inf"), ref == -float("inf"))
    assert torch.equal(got == float("inf"), ref == float("inf"))
    assert torch.equal(got == -torch.finfo(torch.float32).max, ref == -1e308)


def test_strided_inputs(monkeypatch):
    """[B, N, H, Di].transpose(1, 2) runs without a copy; a non-unit last stride is copied with a warning."""
    monkeypatch.setattr(I, "_warned", set())
    g = torch.Generator().manual_seed(1)
    iq = torch.randn(1, 50, 2, 32, generator=g).to(DEVICE).transpose(1, 2)
    ik = torch.randn(1, 90, 2, 32, generator=g).to(DEVICE).transpose(1, 2)
    cfg = MSAConfig(block_size=16, top_k=3)
    check_selection(I.select_blocks(iq, ik, cfg), iq, ik, cfg, TIE_TOL[torch.float32])
    iq_t = torch.randn(1, 2, 32, 50, generator=g).to(DEVICE).transpose(2, 3)  # last stride 50
    with pytest.warns(UserWarning, match="last dim"):
        idx = I.select_blocks(iq_t, ik, cfg)
    check_selection(idx, iq_t, ik, cfg, TIE_TOL[torch.float32])


def test_fp8_within_its_rounding():
    """FP8 scores stay within the E4M3 quantisation bound and its selection is a top-k within that bound."""
    iq, ik = inputs(1, 4, 1, 48, 200, 64, torch.bfloat16, seed=5)
    cfg = MSAConfig(block_size=16, top_k=5)
    got = I.block_scores(iq, ik, cfg, fp8=True).cpu().double()
    # per-element E4M3 error: half an ulp (2**-4 relative) for normals, 2**-10 / scale for subnormals
    q, k = iq.double().cpu(), ik.double().cpu()
    sq, sk = I.FP8_MAX / q.abs().max(), I.FP8_MAX / k.abs().max()
    eq = torch.maximum(q.abs() * 2.0**-4, torch.full_like(q, 2.0**-10) / sq)
    ek = torch.maximum(k.abs() * 2.0**-4, torch.full_like(k, 2.0**-10) / sk)
    kx = R._expand_index_keys(k, 4)
    ekx = R._expand_index_keys(ek, 4)
    err = (torch.einsum("bhid,bhjd->bhij", eq, kx.abs()) + torch.einsum("bhid,bhjd->bhij", q.abs() + eq, ekx))
    err = err * cfg.index_softmax_scale(64) * (1 + 1e-3)  # fp32 accumulation slack
    nb = cfg.num_blocks(200)
    err = torch.nn.functional.pad(err, (0, nb * 16 - 200)).view(1, 4, 48, nb, 16).amax(-1)
    check_scores(got, iq, ik, cfg, err)
    # selection: no unselected visible block beats a selected one by more than both error bounds
    idx = I.select_blocks(iq, ik, cfg, fp8=True).cpu().long()
    s = R.block_scores(iq.cpu(), ik.cpu(), cfg).masked_fill(R.forced_blocks(48, 200, cfg), float("inf"))
    sel = selected_count(idx, nb).bool()
    assert torch.equal(sel.sum(-1), (s > -float("inf")).sum(-1).clamp(max=cfg.top_k))
    lo = torch.where(sel, s + err, torch.full_like(s, float("inf"))).amin(-1)  # best case of the worst pick
    hi = torch.where(~sel & (s > -float("inf")), s - err, torch.full_like(s, -float("inf"))).amax(-1)
    assert bool((hi <= lo).all()), "an unselected block beats a selected one beyond the fp8 error bound"
    ref = R.select_blocks(iq.cpu(), ik.cpu(), cfg)
    assert 0.0 < I.selection_agreement(idx, ref) <= 1.0


def test_selection_agreement():
    a = torch.tensor([[0, 1, 2, -1], [3, 4, -1, -1]], dtype=torch.int32)
    assert I.selection_agreement(a, a) == 1.0
    assert I.selection_agreement(a, a.flip(-1)) == 1.0  # order does not matter
    b = torch.tensor([[2, 0, 5, -1], [-1, -1, -1, 7]], dtype=torch.int32)
    # row 0: {0,1,2} vs {0,2,5}: 2 common of 3; row 1: {3,4} vs {7}: 0 common of 2
    assert I.selection_agreement(a, b) == pytest.approx(2 / 5)
    assert I.selection_agreement(torch.full((2, 3), -1), torch.full((2, 3), -1)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        I.selection_agreement(a, a[:1])


@pytest.mark.parametrize("make,match", [
    (lambda: (torch.randn(1, 2, 4, 48), torch.randn(1, 1, 8, 48), {}), "index dims 16, 32"),
    (lambda: (torch.randn(1, 2, 4, 32).double(), torch.randn(1, 1, 8, 32).double(), {}), "float16, bfloat16"),
    (lambda: (torch.randn(1, 2, 4, 16), torch.randn(1, 1, 8, 16), {"fp8": True}), "fp8=True needs Di >= 32"),
    (lambda: (torch.randn(1, 2, 9, 32), torch.randn(1, 1, 8, 32), {}), "0 < Nq <= Nk"),
    (lambda: (torch.randn(1, 4, 4, 32), torch.randn(1, 2, 8, 32), {}), "Hik 1 or Hkv"),
    (lambda: (torch.randn(1, 2, 4, 32), torch.randn(1, 1, 8, 32), {"key_chunks": 0}), "key_chunks"),
])
def test_bad_input_is_refused(make, match):
    iq, ik, kw = make()
    with pytest.raises(ValueError, match=match):
        I._select_blocks(iq.to(DEVICE), ik.to(DEVICE), MSAConfig(block_size=4, top_k=2), **kw)


@settings(max_examples=8, deadline=None)
@given(
    B=st.integers(1, 2), Hkv=st.sampled_from([1, 2, 4]), shared=st.booleans(), Nk=st.integers(1, 120),
    q_frac=st.floats(0.0, 1.0), Di=st.sampled_from([16, 32]), bs=st.sampled_from([5, 16, 32]),
    extra_k=st.integers(0, 4), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    kc=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**16),
)
def test_random_shapes(B, Hkv, shared, Nk, q_frac, Di, bs, extra_k, dtype, kc, seed):
    Nq = max(1, round(q_frac * Nk))
    run_case(B, Hkv, 1 if shared else Hkv, Nq, Nk, Di, bs, 2 + extra_k, dtype, kc, seed=seed)


def test_indexer_waves_knob_sets_the_decode_key_split(monkeypatch):
    """MSA_LAB_INDEXER_WAVES (a tuning knob) scales the key chunks of a decode-shaped call; bad values are named."""
    cfg = MSAConfig(block_size=64, top_k=4)
    iq, ik = torch.randn(1, 2, 1, 32), torch.zeros(1, 1, 1, 32).expand(1, 1, 64 * 4096, 32)  # 4,096 key blocks
    monkeypatch.setattr(I, "_sm_count", lambda device: 132)
    monkeypatch.delenv("MSA_LAB_INDEXER_WAVES", raising=False)
    assert I._plan(iq, ik, cfg, None)["n_kc"] == 264  # decode default: 2 waves
    assert I._plan(iq.expand(8, 2, 1, 32), ik.expand(8, 1, -1, 32), cfg, None)["n_kc"] == 33  # 8 tiles share them
    assert I._plan(iq.expand(1, 2, 4096, 32), ik, cfg, None)["n_kc"] == 9  # prefill: 4 waves over 64 query tiles
    chunks = {}
    for w in ("1", "4"):
        monkeypatch.setenv("MSA_LAB_INDEXER_WAVES", w)
        chunks[w] = I._plan(iq, ik, cfg, None)["n_kc"]
    assert chunks == {"1": 132, "4": 512}  # 4 waves: 528 programs, capped at 8 blocks per chunk (4,096 / 8)
    monkeypatch.setenv("MSA_LAB_INDEXER_WAVES", "0")
    with pytest.raises(ValueError, match="MSA_LAB_INDEXER_WAVES"):
        I._plan(iq, ik, cfg, None)
