"""Prefill kernel (kernels/sparse_attention.py) against the float64 reference, in the Triton interpreter."""
import importlib
import os

import torch

if not torch.cuda.is_available():  # on a GPU box the same tests compile real kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import msa_lab.kernels._common as C  # noqa: E402
SA = importlib.import_module("msa_lab.kernels.sparse_attention")  # the package's sparse_attention is the op
from msa_lab import MSAConfig  # noqa: E402
from msa_lab import reference as R  # noqa: E402
from tests.helpers import TOL, attention_case, check_attention, rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU box, the interpreter here


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Outputs start as NaN, so an element the kernel forgets to write fails the comparison."""
    monkeypatch.setattr(SA, "_alloc", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))



def make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=0, shuffle=True):
    return attention_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed, shuffle, device=DEV)


check = check_attention


GRID = [  # B, Hq, Hkv, Nq, Nk, D, block, top_k, dtype
    (1, 2, 2, 45, 45, 32, 16, 3, torch.float16),  # group 1, Nk not a multiple of the block
    (2, 4, 2, 30, 77, 64, 16, 4, torch.bfloat16),  # group 2, chunked prefill Nq < Nk
    (1, 8, 2, 37, 37, 32, 32, 8, torch.float16),  # group 4, top_k above the number of blocks
    (1, 16, 1, 24, 100, 128, 32, 3, torch.bfloat16),  # group 16 (M3's), D 128
    (1, 4, 1, 20, 300, 64, 128, 2, torch.float16),  # M3's block size, two key tiles per block
    (1, 4, 2, 33, 50, 32, 24, 3, torch.float32),  # block not a power of two, fp32
    (1, 80, 1, 17, 40, 32, 16, 3, torch.float16),  # group 80 > 64 rows: heads split over two programs
    (1, 4, 2, 5, 70, 64, 16, 3, torch.bfloat16),  # a decode-sized chunk through the prefill kernel
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bs,top_k,dtype", GRID)
def test_prefill_matches_reference(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype):
    q, k, v, idx, cfg = make_case(B, Hq, Hkv, Nq, Nk, D, bs, top_k, dtype, seed=Nq + Nk)
    o, lse = SA.sparse_attention_prefill(q, k, v, idx, cfg, return_lse=True)
    check(o, lse, q, k, v, idx, cfg)
    o2 = SA.sparse_attention_prefill(q, k, v, idx, cfg)  # without LSE: the same O
    assert torch.equal(o2, o)


def test_empty_and_padded_rows():
    q, k, v, idx, cfg = make_case(1, 4, 2, 20, 60, 32, 16, 4, torch.float16, seed=3)
    idx[0, 0, 3] = -1  # group 0, token 3: nothing selected
    idx[0, 1, 7, 1:] = -1  # group 1, token 7: a single block
    idx[0, 1, 7, 0] = 0
    o, lse = SA.sparse_attention_prefill(q, k, v, idx, cfg, return_lse=True)
    check(o, lse, q, k, v, idx, cfg)
    assert bool((o[0, :2, 3] == 0).all()) and bool((lse[0, :2, 3] == -float("inf")).all())
    assert bool(torch.isfinite(lse[0, 2:, 3]).all())  # group 1's heads at token 3 are unaffected


def test_custom_scale_and_int64_idx():
    q, k, v, idx, cfg = make_case(1, 4, 2, 18, 40, 32, 16, 3, torch.float16, seed=5)
    cfg = cfg.replace(scale=0.3)
    o, lse = SA.sparse_attention_prefill(q, k, v, idx.long(), cfg, return_lse=True)
    check(o, lse, q, k, v, idx, cfg)


def test_strided_views_need_no_copy_and_odd_last_dim_is_copied_with_warning():
    B, N, H, D = 1, 30, 2, 32
    base = torch.randn(B, N, 3 * H, D, dtype=torch.float16, device=DEV)  # [B, N, H, D] layout, q|k|v packed
    q, k, v = (base[:, :, i * H:(i + 1) * H].transpose(1, 2) for i in range(3))  # SDPA views, no copy
    cfg = MSAConfig(block_size=16, top_k=2)
    idx = R.select_blocks(torch.randn(B, H, N, 8, device=DEV), torch.randn(B, 1, N, 8, device=DEV), cfg)
    o, lse = SA.sparse_attention_prefill(q, k, v, idx, cfg, return_lse=True)
    check(o, lse, q, k, v, idx, cfg)
    wide = torch.randn(B, H, N, 2 * D, dtype=torch.float16, device=DEV)
    q2 = wide[..., ::2]  # last-dim stride 2
    C._warned.discard("stride-q")
    with pytest.warns(UserWarning, match="stride 2 along its last dim"):
        o2 = SA.sparse_attention_prefill(q2, k, v, idx, cfg)
    assert rel_err(o2, R.sparse_attention(q2.double(), k.double(), v.double(), idx, cfg)) <= TOL[torch.float16]


def test_refuses_unsupported_inputs_clearly(monkeypatch):
    q, k, v, idx, cfg = make_case(1, 2, 2, 4, 16, 32, 16, 2, torch.float16)
    with pytest.raises(ValueError, match="head dims 32, 64, 128"):
        SA.sparse_attention_prefill(q[..., :16], k[..., :16], v[..., :16], idx, cfg)
    with pytest.raises(ValueError, match="float16, bfloat16 and float32"):
        SA.sparse_attention_prefill(q.double(), k.double(), v.double(), idx, cfg)
    with pytest.raises(ValueError, match=r"idx \[B, Hkv, Nq, top_k=2\]"):
        SA.sparse_attention_prefill(q, k, v, idx[..., :1], cfg)
    monkeypatch.setattr(C, "interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        SA.sparse_attention_prefill(q.cpu(), k.cpu(), v.cpu(), idx.cpu(), cfg)


def test_autotune_pruning_fits_the_block(monkeypatch):
    monkeypatch.setattr(C, "interpreting", lambda: False)
    cfgs = C.autotune_configs()
    widths = lambda bs: sorted({c.kwargs["BLOCK_N"] for c in C.prune_configs(cfgs, {"BLOCK_SIZE": bs})})  # noqa: E731
    assert widths(16) == [16] and widths(24) == [32] and widths(64) == [64] and widths(128) == [64, 128]
    assert widths(256) == [64, 128]
    bf16, fp32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1)
    both = C.prune_configs(cfgs, {"BLOCK_SIZE": 128, "HEAD_DIM": 128, "q_ptr": bf16})
    assert len(both) == 8  # BLOCK_N 64/128 x num_warps 4/8 x num_stages 2/3
    wide = C.prune_configs(cfgs, {"BLOCK_SIZE": 128, "HEAD_DIM": 128, "q_ptr": fp32})
    assert (128, 3) not in {(c.kwargs["BLOCK_N"], c.num_stages) for c in wide} and len(wide) == 6  # smem
