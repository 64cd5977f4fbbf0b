"""Decode kernel (kernels/sparse_decode.py: split over selected blocks + combine) against the reference."""
import importlib
import os

import torch

if not torch.cuda.is_available():  # on a GPU box the same tests compile real kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import msa_lab.kernels.sparse_decode as SD  # noqa: E402
from tests.helpers import attention_case, check_attention, rel_err  # noqa: E402

SA = importlib.import_module("msa_lab.kernels.sparse_attention")  # the package's sparse_attention is the op

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU box, the interpreter here


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Outputs and the split workspace start as NaN: an unwritten element (a skipped split too) fails."""
    nan = lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device)  # noqa: E731
    monkeypatch.setattr(SD, "_alloc", nan)
    monkeypatch.setattr(SA, "_alloc", nan)



def make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=0):
    return attention_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed, device=DEV)


check = check_attention


GRID = [  # B, Hq, Hkv, Nq, Nk, D, block, top_k, dtype, num_splits (None: the GPU-filling default)
    (8, 4, 2, 1, 200, 64, 16, 4, torch.bfloat16, None),  # batch 8, one new token
    (2, 8, 2, 16, 150, 32, 16, 6, torch.float16, 3),  # 16 new tokens, group 4
    (1, 16, 1, 5, 90, 128, 32, 4, torch.bfloat16, 4),  # group 16, D 128, one slot per split
    (1, 2, 2, 3, 40, 32, 16, 8, torch.float16, 8),  # top_k > blocks: some splits see nothing
    (2, 4, 1, 7, 300, 64, 128, 2, torch.float16, 2),  # M3's block size
    (1, 4, 2, 2, 33, 32, 16, 3, torch.float32, 1),  # one split, fp32
    (1, 2, 1, 9, 9, 32, 16, 2, torch.bfloat16, 2),  # Nq == Nk: a fresh prompt inside the first block
    (1, 4, 2, 4, 61, 32, 16, 5, torch.float16, 2),  # uneven split: slots 3 + 2
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bs,top_k,dtype,splits", GRID)
def test_decode_matches_reference(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, splits):
    q, k, v, idx, cfg = make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=Nq * 7 + Nk)
    o, lse = SD.sparse_attention_decode(q, k, v, idx, cfg, return_lse=True, num_splits=splits)
    check(o, lse, q, k, v, idx, cfg)


def test_split_count_does_not_change_the_result():
    q, k, v, idx, cfg = make_case(1, 4, 2, 3, 120, 32, 16, 6, torch.float32, seed=11)
    outs = [SD.sparse_attention_decode(q, k, v, idx, cfg, return_lse=True, num_splits=s) for s in (1, 2, 6)]
    for o, lse in outs[1:]:
        assert rel_err(o, outs[0][0]) < 1e-5 and torch.allclose(lse, outs[0][1], atol=1e-5)


def test_default_uses_prefill_kernel_when_the_gpu_is_already_full(monkeypatch):
    q, k, v, idx, cfg = make_case(2, 4, 2, 3, 70, 32, 16, 3, torch.float16, seed=4)
    calls = []
    monkeypatch.setattr(SD, "sparse_attention_prefill", lambda *a, **kw: calls.append(1) or SA.sparse_attention_prefill(*a, **kw))
    monkeypatch.setattr(SD, "_sm_count", lambda device: 1)  # 12 (token, group) programs fill a 1-SM GPU
    o, lse = SD.sparse_attention_decode(q, k, v, idx, cfg, return_lse=True)
    check(o, lse, q, k, v, idx, cfg)
    assert calls == [1]
    monkeypatch.setattr(SD, "_sm_count", lambda device: 132)  # 132 SMs: split, no prefill kernel
    o, lse = SD.sparse_attention_decode(q, k, v, idx, cfg, return_lse=True)
    check(o, lse, q, k, v, idx, cfg)
    assert calls == [1]


def test_empty_rows_through_the_combine():
    q, k, v, idx, cfg = make_case(2, 4, 2, 2, 64, 32, 16, 4, torch.bfloat16, seed=2)
    idx[1, 0, 1] = -1  # every split of this row is empty
    o, lse = SD.sparse_attention_decode(q, k, v, idx, cfg, return_lse=True, num_splits=2)
    check(o, lse, q, k, v, idx, cfg)
    assert bool((o[1, :2, 1] == 0).all()) and bool((lse[1, :2, 1] == -float("inf")).all())


def test_refuses_bad_arguments():
    q, k, v, idx, cfg = make_case(1, 2, 2, 17, 40, 32, 16, 2, torch.float16)
    with pytest.raises(ValueError, match="at most 16 new tokens"):
        SD.sparse_attention_decode(q, k, v, idx, cfg)
    with pytest.raises(ValueError, match=r"num_splits must be in \[1, top_k=2\]"):
        SD.sparse_attention_decode(q[:, :, :2], k, v, idx[:, :, :2], cfg, num_splits=3)
