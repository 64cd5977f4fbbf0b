"""The reference is the oracle: check it against the contract's own definitions and against SDPA."""
import pytest
import torch
import torch.nn.functional as F

from msa_lab import MSAConfig
from msa_lab import reference as R
from tests.helpers import make_inputs, rel_err

SHAPES = [  # B, Hq, Hkv, Nq, Nk, D, Di, Hik, block
    (2, 4, 4, 37, 37, 16, 8, 1, 8),  # group size 1, shared index key
    (1, 4, 2, 50, 100, 16, 8, 2, 16),  # group 2, Hik = Hkv, chunk (Nq < Nk)
    (1, 8, 2, 29, 61, 8, 8, 1, 8),  # group 4, lengths not multiples of the block
    (1, 16, 1, 33, 33, 8, 4, 1, 4),  # group 16
    (1, 4, 2, 1, 77, 16, 8, 1, 16),  # decode: one query
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,Di,Hik,bs", SHAPES)
def test_full_topk_equals_dense_sdpa(B, Hq, Hkv, Nq, Nk, D, Di, Hik, bs):
    x = make_inputs(B, Hq, Hkv, Nq, Nk, D, Di, Hik)
    cfg = MSAConfig(block_size=bs, top_k=-(-Nk // bs))  # top_k covers every block
    o, lse = R.msa_attention(**x, cfg=cfg, return_lse=True)
    g = Hq // Hkv
    k, v = x["k"].repeat_interleave(g, 1), x["v"].repeat_interleave(g, 1)
    mask = R.causal_mask(Nq, Nk)  # bottom-right aligned
    ref = F.scaled_dot_product_attention(x["q"], k, v, attn_mask=mask)
    assert rel_err(o, ref) < 1e-5
    s = (x["q"] @ k.transpose(-1, -2)) * D**-0.5
    assert torch.allclose(lse, s.masked_fill(~mask, -float("inf")).logsumexp(-1), atol=1e-5)


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,Di,Hik,bs", SHAPES)
@pytest.mark.parametrize("top_k,init,local", [(3, 1, 1), (4, 2, 1), (5, 1, 3), (2, 0, 1), (2, 0, 0)])
def test_selection_contract(B, Hq, Hkv, Nq, Nk, D, Di, Hik, bs, top_k, init, local):
    x = make_inputs(B, Hq, Hkv, Nq, Nk, D, Di, Hik, seed=top_k)
    cfg = MSAConfig(block_size=bs, top_k=top_k, init_blocks=init, local_blocks=local)
    idx = R.select_blocks(x["iq"], x["ik"], cfg)
    assert idx.dtype == torch.int32 and idx.shape == (B, Hkv, Nq, top_k)
    pos = torch.arange(Nk - Nq, Nk)
    own = pos // bs
    for i in range(Nq):
        n_visible = int(own[i]) + 1
        forced = {b for b in range(n_visible) if b < init or b > own[i] - local}
        for b in range(B):
            for h in range(Hkv):
                row = idx[b, h, i].tolist()
                chosen = [c for c in row if c >= 0]
                assert len(chosen) == min(top_k, n_visible), "count is min(top_k, visible blocks)"
                assert len(set(chosen)) == len(chosen), "no duplicates"
                assert row.count(-1) == top_k - len(chosen)
                assert max(chosen) <= own[i], "no block wholly in the future"
                assert forced <= set(chosen), "forced blocks are always present"


def test_dynamic_picks_are_the_best_scoring_blocks():
    x = make_inputs(1, 4, 2, 64, 64, 16, 8, 1, seed=3)
    cfg = MSAConfig(block_size=8, top_k=4)
    idx = R.select_blocks(x["iq"], x["ik"], cfg)
    s = R.block_scores(x["iq"], x["ik"], cfg)
    forced = R.forced_blocks(64, 64, cfg)
    for h in range(2):
        for i in range(64):
            chosen = set(idx[0, h, i].tolist()) - {-1}
            dynamic = chosen - set(forced[i].nonzero().flatten().tolist())
            rest = [b for b in range(8) if b not in chosen and s[0, h, i, b] > -float("inf")]
            if dynamic and rest:
                assert min(s[0, h, i, b] for b in dynamic) >= max(s[0, h, i, b] for b in rest)


def test_block_score_is_max_over_visible_keys_only():
    # one query at position 5 sees keys 0..5 of block 0 (block size 8); keys 6, 7 must not count
    iq = torch.ones(1, 1, 1, 4)
    ik = torch.zeros(1, 1, 6 + 2, 4)
    ik[0, 0, 7] = 100.0  # huge but invisible
    ik[0, 0, 3] = 1.0
    cfg = MSAConfig(block_size=8, top_k=1, init_blocks=0, local_blocks=0)
    s = R.block_scores(iq[:, :, :, :], ik[:, :, :6], cfg)  # Nk=6: query at position 5
    assert s.shape == (1, 1, 1, 1) and s.item() == pytest.approx(4 * 0.5)
    s2 = R.block_scores(torch.ones(1, 1, 3, 4), ik, cfg)  # Nk=8, queries at 5, 6, 7
    assert s2[0, 0, 0, 0].item() == pytest.approx(2.0) and s2[0, 0, 2, 0].item() == pytest.approx(200.0)


@pytest.mark.parametrize("Nq", [1, 7, 30])
def test_chunk_equals_tail_of_full_call(Nq):
    Nk = 61
    x = make_inputs(1, 8, 2, Nk, Nk, 16, 8, 1, seed=5)
    cfg = MSAConfig(block_size=8, top_k=3)
    o_full, lse_full, idx_full = R.msa_attention(**x, cfg=cfg, return_lse=True, return_indices=True)
    tail = {n: (t[:, :, -Nq:] if n in ("q", "iq") else t) for n, t in x.items()}
    o, lse, idx = R.msa_attention(**tail, cfg=cfg, return_lse=True, return_indices=True)
    assert torch.equal(idx.sort(-1).values, idx_full[:, :, -Nq:].sort(-1).values)
    assert rel_err(o, o_full[:, :, -Nq:]) < 1e-6
    assert torch.allclose(lse, lse_full[:, :, -Nq:])


def test_empty_row_gives_zero_and_minus_inf():
    x = make_inputs(1, 2, 1, 4, 16, 8, 8, 1)
    cfg = MSAConfig(block_size=8, top_k=2)
    idx = torch.full((1, 1, 4, 2), -1, dtype=torch.int32)
    idx[0, 0, 1, 0] = 1
    o, lse = R.sparse_attention(x["q"], x["k"], x["v"], idx, cfg, return_lse=True)
    assert torch.equal(o[:, :, [0, 2, 3]], torch.zeros_like(o[:, :, [0, 2, 3]]))
    assert torch.isinf(lse[:, :, [0, 2, 3]]).all() and torch.isfinite(lse[:, :, 1]).all()


def test_block_attention_mass_rows_sum_to_one():
    x = make_inputs(1, 8, 2, 20, 50, 16, 8, 1)
    m = R.block_attention_mass(x["q"], x["k"], MSAConfig(block_size=8))
    assert m.shape == (1, 2, 20, 7)
    assert torch.allclose(m.sum(-1), torch.ones(1, 2, 20), atol=1e-5)
