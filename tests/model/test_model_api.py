"""User API on random-init models: generate, prefill_steps, capture (no shipped checkpoint needed)."""
import numpy as np
import pytest
import torch

from msa_lab import reference
from msa_lab.api import Model, selection_recall
from msa_lab.model import small_config

torch.set_num_threads(1)


def _model(attention="msa", **kw):
    m = Model.from_config(small_config(attention, **kw))
    m.net.backend = "torch"
    return m


TEXT = "The quick brown fox jumps over the lazy dog; sphinx of black quartz, judge my vow! 0123456789"


def test_generate_returns_text_and_refuses_empty_prompts():
    m = _model()
    out = m.generate(TEXT, max_new_tokens=5)
    assert isinstance(out, str)
    res = m.generate(TEXT, max_new_tokens=5, return_result=True)
    assert res.text == out and len(res.ids) <= 5 and res.input_tokens == len(TEXT) + 2
    with pytest.raises(ValueError, match="prompt is empty"):
        m.generate("   ")
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        m.generate(TEXT, max_new_tokens=0)


def test_prefill_steps_via_api():
    m = _model()
    steps = list(m.prefill_steps(TEXT, chunk_size=32))
    assert steps[-1].tokens_done == len(TEXT) + 2 and len(steps) == -(-(len(TEXT) + 2) // 32)
    assert m.estimate_memory(10_000, 512).cache_bytes > m.estimate_memory(1_000, 512).cache_bytes


def test_capture_msa():
    m = _model()
    cap = m.capture(TEXT, chunk_size=40)
    cfg = m.config
    n = len(TEXT) + 2
    nb = -(-n // cfg.block_size)
    assert len(cap.tokens) == n == len(cap.ids) and cap.tokens[0] == "<BOS>"
    assert len(cap.selected) == len(cap.block_mass) == cfg.n_layers
    assert cap.selected[0].shape == (cfg.n_kv_heads, n, cfg.top_k)
    assert cap.block_mass[0].shape == (cfg.n_kv_heads, n, nb)
    np.testing.assert_allclose(cap.block_mass[1].sum(-1), 1.0, atol=1e-5)
    assert cap.recall.shape == (cfg.n_layers, cfg.n_kv_heads)
    assert ((cap.recall > 0) & (cap.recall < 1)).all()  # top_k < blocks: some mass is always left out
    # the first top_k blocks' queries see at most top_k blocks, so their recall is exactly 1
    early = cfg.top_k * cfg.block_size
    r_early = selection_recall(cap.selected[0][:, :early], cap.block_mass[0][:, :early])
    np.testing.assert_allclose(r_early, 1.0, atol=1e-5)


def test_outside_forced_recall_splits_recall_into_forced_and_picked():
    """selection_recall = forced_mass + (1 - forced_mass) * picked_recall when every query sees all forced blocks
    (mass-weighted over queries); on a hand-made mass: the forced share and the picks' share are what they are."""
    from msa_lab.api import outside_forced_recall

    m = _model()
    cap = m.capture(TEXT, chunk_size=40)
    cfg = m.config.msa_config()
    for l in range(len(cap.selected)):
        forced, picked = outside_forced_recall(cap.selected[l], cap.block_mass[l], cfg)
        np.testing.assert_allclose(cap.forced_mass[l], forced, atol=1e-6)
        np.testing.assert_allclose(cap.picked_recall[l], picked, atol=1e-6)
        np.testing.assert_allclose(forced + (1 - forced) * picked, cap.recall[l], atol=1e-5)
        assert ((picked > 0) & (picked < 1)).all()
    # one group, 3 queries in block 3 of 4-token blocks (init 1, local 2: blocks 0, 2, 3 forced), one pick
    c = cfg.replace(block_size=4, top_k=4, init_blocks=1, local_blocks=2)
    mass = np.zeros((1, 16, 4), dtype=np.float32)
    mass[0, :, 0] = 1.0  # queries 0-11: everything on block 0
    mass[0, 12:] = [0.2, 0.3, 0.1, 0.4]  # block 1 is the only free one, holding 0.3
    sel = np.tile(np.array([0, 2, 3, -1], dtype=np.int32), (1, 16, 1))
    forced, picked = outside_forced_recall(sel, mass, c)
    np.testing.assert_allclose(forced, [1 - 4 * 0.3 / 16], atol=1e-6)
    np.testing.assert_allclose(picked, [0.0])  # block 1 was not picked
    sel[0, 12:, 3] = 1
    np.testing.assert_allclose(outside_forced_recall(sel, mass, c)[1], [1.0])


def test_capture_mass_matches_reference():
    """The captured mass is the reference block mass of the layer's actual q, k."""
    m = _model()
    qk = {}
    enc = m.encode(TEXT)
    with torch.no_grad():
        m.net(enc.ids[None], record=lambda layer, q=None, k=None, **_: qk.setdefault(layer, (q, k)))
    cap = m.capture(TEXT)
    q, k = qk[1]
    want = reference.block_attention_mass(q, k, m.config.msa_config())[0].numpy()
    np.testing.assert_allclose(cap.block_mass[1], want, atol=1e-5)


def test_capture_dense_and_limits():
    m = _model("dense", max_context=60)
    cap = m.capture(TEXT[:40])
    assert cap.selected is None and cap.recall is None and cap.block_mass[0].shape[1] == 42
    assert _model().capture(TEXT, dense_limit=10).block_mass is None  # too long for dense: selection only
    from msa_lab.model import ContextTooLong

    with pytest.raises(ContextTooLong):
        m.capture(TEXT)
