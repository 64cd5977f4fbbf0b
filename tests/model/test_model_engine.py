"""Engine: prefill records, memory refusal, context limit and overflow policies."""
import math

import pytest
import torch

from msa_lab.model import ContextTooLong, Engine, MSATransformer, PrefillTooLarge, small_config
from msa_lab.model.cache import cache_bytes_per_token
from msa_lab.model.tokens import BOS, SEP, Encoded

torch.set_num_threads(1)


def _engine(attention="msa", **kw):
    torch.manual_seed(0)
    net = MSATransformer(small_config(attention, **kw))
    net.reset_parameters(0)
    net.backend = "torch"
    return Engine(net.eval())


def _enc(n, seed=0):
    """BOS + n - 2 byte ids + SEP, as encode_prompt makes them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.tensor([BOS]), torch.randint(0, 256, (n - 2,), generator=g), torch.tensor([SEP])])
    return Encoded(ids, torch.zeros(0, 192), torch.zeros(0, dtype=torch.long))


def test_prefill_steps_records():
    eng = _engine()
    cfg = eng.cfg
    steps = list(eng.prefill_steps(_enc(100), 30, key_bins=4))
    assert [s.tokens_done for s in steps] == [30, 60, 90, 100]
    assert all(s.total_tokens == 100 and s.n_chunks == 4 and s.seconds > 0 and s.tokens_per_s > 0 for s in steps)
    assert all(s.mem_peak_bytes >= s.mem_allocated_bytes > 0 for s in steps)
    nb = math.ceil(100 / cfg.block_size)  # 13 blocks -> 4 bins of 4 blocks
    assert steps[0].blocks_per_bin == math.ceil(nb / 4)
    for s, n_q in zip(steps, (30, 30, 30, 10)):
        assert s.selection_hist.shape == (cfg.n_layers, cfg.n_kv_heads, 4)
        # every query selects min(top_k, visible blocks) blocks: the histogram counts exactly those
        first = s.tokens_done - n_q
        want = sum(min(cfg.top_k, p // cfg.block_size + 1) for p in range(first, s.tokens_done))
        assert (s.selection_hist.sum(-1) == want).all()
        assert s.last_selected.shape == (cfg.n_layers, cfg.n_kv_heads, cfg.top_k)
    assert steps[-1].cache_bytes == 100 * cache_bytes_per_token(cfg, 4)


def test_dense_prefill_has_no_selection():
    steps = list(_engine("dense").prefill_steps(_enc(40), 16))
    assert steps[-1].selection_hist is None and steps[-1].last_selected is None


def test_cache_estimate_matches_the_allocated_cache():
    eng = _engine()
    est = eng.estimate(77, 16, extra_tokens=5)
    eng.prefill(_enc(77), 16, extra_tokens=5)
    assert est.cache_bytes == eng.last_cache.nbytes()


def test_memory_estimate_refuses_and_suggests_a_chunk_size():
    eng = _engine()
    big, small = eng.estimate(4096, 4096), eng.estimate(4096, 64)
    assert small.total_bytes < big.total_bytes
    budget = (small.total_bytes + big.total_bytes) // 2
    with pytest.raises(PrefillTooLarge, match=r"refused before starting.*use chunk_size=\d+"):
        next(eng.prefill_steps(_enc(4096), 4096, max_memory_bytes=budget))


def test_memory_estimate_refuses_and_suggests_a_length():
    eng = _engine()
    with pytest.raises(PrefillTooLarge, match=r"caches alone need .* at most ~[\d,]+ tokens fit"):
        next(eng.prefill_steps(_enc(5000), 64, max_memory_bytes=eng.estimate(500, 64).total_bytes))


def test_bad_max_memory_bytes():
    with pytest.raises(ValueError, match="max_memory_bytes must be a positive int"):
        _engine().estimate(10, 10, max_memory_bytes=-1)


# ---------------------------------------------------------------------------- context limit
LIMIT = 64


def _limited():
    return _engine("dense", max_context=LIMIT)


def test_context_too_long_names_limit_and_options():
    eng = _limited()
    with pytest.raises(ContextTooLong) as e:
        eng.generate(_enc(100), 4)
    msg = str(e.value)
    for word in ("64 tokens", "truncate_left", "truncate_middle", "chunk"):
        assert word in msg
    with pytest.raises(ContextTooLong):
        next(eng.prefill_steps(_enc(65), 16))
    cache, _ = eng.prefill(_enc(64), 16)
    with pytest.raises(ContextTooLong):
        eng.decode_step(cache, 5)


def test_unknown_overflow_policy():
    with pytest.raises(ValueError, match="choose one of error, truncate_left, truncate_middle, chunk"):
        _limited().generate(_enc(100), 4, overflow="drop")


def test_fits_without_policy():
    res = _limited().generate(_enc(60), 4)
    assert res.policy == "none" and res.used_tokens == 60


def test_truncate_left_keeps_bos_and_the_end():
    eng, enc = _limited(), _enc(100, seed=1)
    res = eng.generate(enc, 4, overflow="truncate_left")
    assert res.policy == "truncate_left" and res.used_tokens == LIMIT - 4 and res.input_tokens == 100
    manual = enc.slice(0, 1).cat(enc.slice(100 - (LIMIT - 5), 100))
    assert eng.generate_ids(manual, 4).ids == res.ids


def test_truncate_middle_keeps_head_and_tail():
    eng, enc = _limited(), _enc(100, seed=2)
    res = eng.generate(enc, 4, overflow="truncate_middle")
    keep = LIMIT - 4
    manual = enc.slice(0, keep // 2).cat(enc.slice(100 - (keep - keep // 2), 100))
    assert res.used_tokens == keep and eng.generate_ids(manual, 4).ids == res.ids


def test_chunk_answers_each_window_and_keeps_the_best():
    eng, enc = _limited(), _enc(150, seed=3)
    res = eng.generate(enc, 4, overflow="chunk", tail_tokens=8)
    keep = LIMIT - 4
    tail = min(8, keep // 4)
    window = keep - 1 - tail
    body_len = 150 - 1 - tail
    assert res.policy == "chunk" and res.windows == math.ceil(body_len / window)
    scores = []
    for w in range(res.windows):
        piece = enc.slice(0, 1).cat(enc.slice(1 + w * window, 1 + min(body_len, (w + 1) * window))).cat(
            enc.slice(150 - tail, 150))
        assert len(piece) + 4 <= LIMIT
        scores.append(eng.generate_ids(piece, 4).mean_logprob)
    assert res.chosen_window == max(range(len(scores)), key=scores.__getitem__)


def test_dense_200k_limit_is_enforced_before_any_work():
    from msa_lab.model import model_config

    eng = Engine(MSATransformer(model_config("dense-200k")))
    assert eng.cfg.max_context == 204_800
    with pytest.raises(ContextTooLong, match="hard limit of 204,800 tokens but the input is 204,790 tokens \\+ 64"):
        eng.generate(_enc(204_790), 64)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decoding_writes_only_bytes_and_eos(temperature):
    """Even when a special such as IMG_PATCH is the likeliest next token, decoding writes a byte or EOS: fed back, a
    patch token would need pixels the answer has not got (it used to stop generate with a ValueError)."""
    from msa_lab.model.engine import writable_tokens
    from msa_lab.model.tokens import EOS, IMG_PATCH

    torch.manual_seed(0)
    net = MSATransformer(small_config("msa")).eval()
    net.backend = "torch"
    eng = Engine(net)
    enc = Encoded(torch.tensor([BOS, 104, 105, SEP]), torch.zeros(0, net.cfg.patch_dim), torch.zeros(0, dtype=torch.long))
    cache, logits = eng.prefill(enc, 64, extra_tokens=8, check_memory=False)
    fake = torch.full_like(logits, -5.0)
    fake[IMG_PATCH], fake[ord("a")] = 10.0, 1.0
    out, logp = eng.decode_from(cache, fake, 8, temperature=temperature)
    assert all(t < 256 for t in out) and (temperature > 0 or out[0] == ord("a"))
    ok = writable_tokens(net.cfg.vocab_size)
    assert ok.sum() == 257 and ok[EOS] and not ok[IMG_PATCH]
