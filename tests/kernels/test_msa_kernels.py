"""msa_lab.kernels glue: dispatch, msa_attention, the public ops with backend='triton', random shapes."""
import importlib
import os

import torch

if not torch.cuda.is_available():  # on a GPU box the same tests compile real kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import msa_lab  # noqa: E402
import msa_lab.kernels as K  # noqa: E402
SA = importlib.import_module("msa_lab.kernels.sparse_attention")  # the package's sparse_attention is the op
import msa_lab.kernels.sparse_decode as SD  # noqa: E402
from msa_lab import MSAConfig  # noqa: E402
from msa_lab import reference as R  # noqa: E402
from tests.helpers import as_sets, make_inputs, rel_err  # noqa: E402

TOL = {torch.float16: 3e-3, torch.bfloat16: 1e-2}
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    nan = lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device)  # noqa: E731
    monkeypatch.setattr(SA, "_alloc", nan)
    monkeypatch.setattr(SD, "_alloc", nan)


def close(o, lse, ref_o, ref_lse, dtype):
    tol = TOL[dtype]
    fin = torch.isfinite(ref_lse)
    return (rel_err(o, ref_o) <= tol and torch.equal(torch.isfinite(lse), fin)
            and bool(((lse[fin] - ref_lse[fin]).abs() <= tol * (ref_lse[fin].abs() + 1)).all()))


def test_exports():
    assert K.SUPPORTED_HEAD_DIMS == (32, 64, 128)
    assert set(K.SUPPORTED_DTYPES) == {torch.float16, torch.bfloat16, torch.float32}
    for name in ("select_blocks", "block_scores", "sparse_attention", "msa_attention"):
        assert callable(getattr(K, name))
    assert K.unsupported_reason(torch.empty(1, 1, 1, 16)) == "head dim 16 (kernels support 32, 64, 128)"
    assert K.unsupported_reason(torch.empty(1, 1, 1, 64, dtype=torch.bfloat16)) is None


@pytest.mark.parametrize("Nq,expect", [(1, "decode"), (16, "decode"), (17, "prefill")])
def test_dispatch_by_number_of_new_tokens(monkeypatch, Nq, expect):
    called = []
    monkeypatch.setattr(K, "sparse_attention_decode", lambda *a, **kw: called.append("decode"))
    monkeypatch.setattr(K, "sparse_attention_prefill", lambda *a, **kw: called.append("prefill"))
    q = torch.empty(1, 2, Nq, 32, dtype=torch.float16)
    K.sparse_attention(q, None, None, None, MSAConfig())
    assert called == [expect]


@pytest.mark.parametrize("Nq,Hik,dtype", [(21, 1, torch.float16), (21, 2, torch.bfloat16), (4, 2, torch.float16)])
def test_msa_attention_matches_reference(Nq, Hik, dtype):
    x = make_inputs(B=1, Hq=4, Hkv=2, Nq=Nq, Nk=75, D=32, Di=16, Hik=Hik, dtype=dtype, seed=Nq + Hik, device=DEV)
    cfg = MSAConfig(block_size=16, top_k=3)
    o, lse, idx = K.msa_attention(**x, cfg=cfg, return_lse=True, return_indices=True)
    ref_idx = R.select_blocks(x["iq"].double(), x["ik"].double(), cfg)
    assert idx.dtype == torch.int32 and torch.equal(as_sets(idx), as_sets(ref_idx))
    ref_o, ref_lse = R.sparse_attention(x["q"].double(), x["k"].double(), x["v"].double(), ref_idx, cfg, return_lse=True)
    assert close(o, lse, ref_o, ref_lse, dtype)
    assert isinstance(K.msa_attention(**x, cfg=cfg), torch.Tensor)
    o2, idx2 = K.msa_attention(**x, cfg=cfg, return_indices=True)
    assert torch.equal(o2, o) and torch.equal(idx2, idx)


@pytest.mark.parametrize("Nq", [3, 40])
def test_public_ops_run_the_kernels(Nq):
    x = make_inputs(B=1, Hq=8, Hkv=2, Nq=Nq, Nk=90, D=64, Di=16, dtype=torch.bfloat16, seed=Nq, device=DEV)
    cfg = MSAConfig(block_size=32, top_k=2)
    o, lse, idx = msa_lab.msa_attention(**x, cfg=cfg, return_lse=True, return_indices=True, backend="triton")
    ref_o, ref_lse = R.sparse_attention(x["q"].double(), x["k"].double(), x["v"].double(), idx, cfg, return_lse=True)
    assert close(o, lse, ref_o, ref_lse, torch.bfloat16)
    o2, lse2 = msa_lab.sparse_attention(x["q"], x["k"], x["v"], idx, cfg, return_lse=True, backend="triton")
    assert torch.equal(o2, o) and torch.equal(lse2, lse)


@settings(max_examples=8, deadline=None)
@given(
    B=st.integers(1, 2), Hkv=st.integers(1, 2), g=st.sampled_from([1, 2, 4]), D=st.sampled_from([32, 64]),
    bs=st.sampled_from([16, 32]), Nk=st.integers(1, 110), frac=st.floats(0.0, 1.0), top_k=st.integers(2, 6),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]), seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(B, Hkv, g, D, bs, Nk, frac, top_k, dtype, seed):
    Nq = max(1, min(Nk, 36, round(frac * Nk)))  # decode (<= 16) and prefill chunks, Nq <= Nk
    x = make_inputs(B=B, Hq=g * Hkv, Hkv=Hkv, Nq=Nq, Nk=Nk, D=D, Di=8, dtype=dtype, seed=seed, device=DEV)
    cfg = MSAConfig(block_size=bs, top_k=top_k)
    idx = R.select_blocks(x["iq"], x["ik"], cfg)
    o, lse = K.sparse_attention(x["q"], x["k"], x["v"], idx, cfg, return_lse=True)
    ref_o, ref_lse = R.sparse_attention(x["q"].double(), x["k"].double(), x["v"].double(), idx, cfg, return_lse=True)
    assert close(o, lse, ref_o, ref_lse, dtype)
