"""Forward pass: shapes, chunked prefill and decode == full forward, train path == inference path, positions."""
import math

import pytest
import torch

from msa_lab import reference
from msa_lab.model import Engine, MSATransformer, encode_prompt, small_config
from msa_lab.model.indexer import dense_block_mass, index_block_logits
from msa_lab.model.layers import masked_sparse_attention
from msa_lab.model.tokens import IMG_PATCH, Encoded

torch.set_num_threads(1)


def _net(attention="msa", seed=0, **kw):
    torch.manual_seed(seed)
    net = MSATransformer(small_config(attention, **kw))
    net.reset_parameters(seed)
    net.backend = "torch"  # conftest sets TRITON_INTERPRET=1; the interpreter is slow and needs D in {32, 64, 128}
    return net.eval()


def _conv_net(attention, width=4):
    net = _net(attention, token_conv=width)
    with torch.no_grad():  # away from the identity init, so the test sees the convolution work
        for layer in net.layers:
            layer.attn.token_conv.weight.copy_(torch.randn(layer.attn.token_conv.weight.shape) * 0.5)
    return net


def _enc(n, seed=0, patch_dim=192):
    """n distinct byte ids. Distinct on purpose: at layer 0 the NoPE index keys of equal tokens are equal, so
    repeated tokens make exactly tied block scores, and the core ops break ties differently for different
    chunk shapes (any choice is valid by the contract, but then chunked != full by a few 1e-4)."""
    g = torch.Generator().manual_seed(seed)
    return Encoded(torch.randperm(256, generator=g)[:n], torch.zeros(0, patch_dim), torch.zeros(0, dtype=torch.long))


def _image(seed=0, size=(40, 23)):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("attention", ["msa", "dense"])
def test_forward_shapes_with_images(attention):
    net = _net(attention)
    cfg = net.cfg
    enc = encode_prompt("look: <image> and <image>?", [_image(0), _image(1)], image_size=cfg.image_size,
                        patch_size=cfg.patch_size)
    assert int((enc.ids == IMG_PATCH).sum()) == 2 * cfg.patches_per_image == enc.patches.shape[0]
    with torch.no_grad():
        logits = net(enc.ids[None], enc.patches, enc.patch_slot)
    assert logits.shape == (1, len(enc), cfg.vocab_size)
    assert torch.isfinite(logits).all()
    # the image pixels matter: other pixels, other logits after the image
    enc2 = encode_prompt("look: <image> and <image>?", [_image(5), _image(1)], image_size=cfg.image_size,
                         patch_size=cfg.patch_size)
    with torch.no_grad():
        logits2 = net(enc2.ids[None], enc2.patches, enc2.patch_slot)
    assert not torch.allclose(logits[0, -1], logits2[0, -1])


def test_patch_count_mismatch_is_an_error():
    net = _net()
    enc = encode_prompt("<image>", [_image()], image_size=16, patch_size=8)
    with pytest.raises(ValueError, match="IMG_PATCH tokens but 0 patch rows"):
        net(enc.ids[None])


@pytest.mark.parametrize("attention", ["msa", "dense"])
@pytest.mark.parametrize("chunk", [16, 24, 29, 200])  # divides 96 / does not / odd / one chunk
def test_chunked_prefill_equals_full_forward(attention, chunk):
    net = _net(attention)
    enc = _enc(96, seed=1)
    with torch.no_grad():
        full = net(enc.ids[None])[0, -1]
    steps = list(Engine(net).prefill_steps(enc, chunk))
    assert len(steps) == -(-96 // chunk)
    assert steps[-1].tokens_done == 96
    torch.testing.assert_close(steps[-1].logits, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ["msa", "dense"])
def test_chunked_prefill_with_images_equals_full_forward(attention):
    net = _net(attention)
    cfg = net.cfg
    enc = encode_prompt("abcdefghijklmnopq <image> rstuvwxyz0123456789", [_image(7)], image_size=cfg.image_size,
                        patch_size=cfg.patch_size)  # distinct tokens (see _enc)
    with torch.no_grad():
        full = net(enc.ids[None], enc.patches, enc.patch_slot)[0, -1]
    # chunk 7 cuts through images: patches must follow their tokens
    last = list(Engine(net).prefill_steps(enc, 7))[-1]
    torch.testing.assert_close(last.logits, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ["msa", "dense"])
@pytest.mark.parametrize("conv", [0, 4])  # with TokenConv the left context crosses chunks through conv_tail
def test_decode_equals_full_forward(attention, conv):
    net = _conv_net(attention, conv) if conv else _net(attention)
    enc = _enc(90, seed=2)
    with torch.no_grad():
        full = net(enc.ids[None])[0]
    eng = Engine(net)
    cache, logits = eng.prefill(enc.slice(0, 80), 32, extra_tokens=10)
    torch.testing.assert_close(logits, full[79], atol=1e-4, rtol=1e-4)
    for i in range(80, 90):
        logits = eng.decode_step(cache, int(enc.ids[i]))
        torch.testing.assert_close(logits, full[i], atol=1e-4, rtol=1e-4)


def test_selection_matters_in_the_test_config():
    """The equalities above only mean something if top_k < visible blocks (selection actually drops keys)."""
    net = _net()
    sel = []
    with torch.no_grad():
        net(_enc(96).ids[None], record=lambda layer, idx=None, **_: sel.append(idx))
    assert sel[0].shape[-1] == net.cfg.top_k < 96 // net.cfg.block_size


def test_cache_grows_past_its_capacity():
    net = _net()
    enc = _enc(60, seed=3)
    with torch.no_grad():
        full = net(enc.ids[None])[0, -1]
    eng = Engine(net)
    cache = eng.new_cache(8)  # far too small: must grow, not fail or truncate
    last = list(eng.prefill_steps(enc, 16, cache=cache))[-1]
    assert cache.layers[0].capacity >= 60 and cache.length == 60
    torch.testing.assert_close(last.logits, full, atol=1e-4, rtol=1e-4)


def test_train_sparse_path_equals_public_ops():
    """The masked-SDPA training path computes exactly the public sparse op's attention."""
    torch.manual_seed(0)
    net = _net()
    cfg = net.cfg.msa_config()
    B, Hq, Hkv, N, D = 2, 4, 2, 50, 16
    q, k, v = torch.randn(B, Hq, N, D), torch.randn(B, Hkv, N, D), torch.randn(B, Hkv, N, D)
    iq, ik = torch.randn(B, Hkv, N, 16), torch.randn(B, 1, N, 16)
    idx = reference.select_blocks(iq, ik, cfg)
    want = reference.sparse_attention(q, k, v, idx, cfg)
    got = masked_sparse_attention(q, k, v, idx, cfg, cfg.softmax_scale())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_train_modes_run_the_same_weights_as_inference():
    net = _net()
    ids = _enc(64, seed=4).ids[None]
    with torch.no_grad():
        ops = net(ids, mode="ops")
        sparse = net(ids, mode="train_sparse")
        dense = net(ids, mode="train_dense")
    torch.testing.assert_close(sparse, ops, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(dense, ops, atol=1e-3)  # dense sees blocks MSA dropped


def test_indexer_target_matches_reference_block_mass():
    torch.manual_seed(1)
    cfg = _net().cfg.msa_config()
    q, k = torch.randn(1, 4, 40, 16), torch.randn(1, 2, 40, 16)
    slots = torch.arange(40)
    torch.testing.assert_close(dense_block_mass(q, k, slots, cfg), reference.block_attention_mass(q, k, cfg),
                               atol=1e-5, rtol=1e-5)
    sub = torch.tensor([3, 17, 39])  # a query subset gives the same rows
    torch.testing.assert_close(dense_block_mass(q[:, :, sub], k, sub, cfg),
                               reference.block_attention_mass(q, k, cfg)[:, :, sub], atol=1e-5, rtol=1e-5)


def test_index_logits_match_reference_block_scores():
    torch.manual_seed(2)
    cfg = _net().cfg.msa_config()
    iq, ik = torch.randn(1, 2, 30, 16), torch.randn(1, 1, 30, 16)
    got = index_block_logits(iq, ik, torch.arange(30), cfg)
    want = reference.block_scores(iq, ik, cfg).float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["msa", "dense"])
def test_rope_depends_only_on_relative_positions(attention):
    """Shifting every position by 10^6 leaves the logits unchanged: far positions are not out of range."""
    net = _net(attention)
    ids = _enc(40, seed=5).ids[None]
    with torch.no_grad():
        a = net(ids, positions=torch.arange(40))
        b = net(ids, positions=torch.arange(40) + 1_000_000)
        c = net(ids, positions=torch.cat([torch.arange(20), torch.arange(20, 40) + 5000]))
    torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
    assert not torch.allclose(a[0, 30:], c[0, 30:], atol=1e-3)  # a jump inside the context does change them


def test_index_scores_ignore_positions():
    """NoPE index branch: the blocks selected do not change when positions jump."""
    net = _net()
    ids = _enc(80, seed=6).ids[None]
    sel_a, sel_b = [], []
    with torch.no_grad():
        net(ids, record=lambda layer, idx=None, **_: sel_a.append(idx) if layer == 0 else None)
        pos = torch.arange(80)
        pos[40:] += 700_000
        net(ids, positions=pos, record=lambda layer, idx=None, **_: sel_b.append(idx) if layer == 0 else None)
    assert torch.equal(sel_a[0].sort(-1).values, sel_b[0].sort(-1).values)


def test_token_conv_starts_as_the_identity_and_mixes_only_the_past():
    plain, conv = _net("msa"), _net("msa", token_conv=4)
    enc = _enc(64, seed=4)
    state = {k: v for k, v in conv.state_dict().items() if "token_conv" not in k}
    assert set(state) == set(plain.state_dict())
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(conv(enc.ids[None]), plain(enc.ids[None]))  # identity init: same network
    net = _conv_net("dense")
    ids = enc.ids[None].clone()
    with torch.no_grad():
        before = net(ids)[0]
        ids[0, 40] = (ids[0, 40] + 1) % 256
        after = net(ids)[0]
    assert torch.equal(before[:40], after[:40])  # causal: no position sees a later token
    assert not torch.allclose(before[40:44], after[40:44])


@pytest.mark.parametrize("width", [1, -2, 17, True, 2.0])
def test_token_conv_width_is_checked(width):
    with pytest.raises(ValueError, match="token_conv"):
        small_config("msa", token_conv=width)


@pytest.mark.parametrize("nq,nk", [(1, 9), (37, 100), (64, 64)])
def test_dense_lower_right_bias_equals_the_explicit_mask(nq, nk):
    """The CUDA chunked-prefill path (SDPA's causal_lower_right) masks like the CPU path's boolean mask."""
    from msa_lab.model.layers import dense_attention, dense_attention_lower_right

    g = torch.Generator().manual_seed(nq)
    q, k, v = (torch.randn(1, 4, n, 32, generator=g) for n in (nq, nk, nk))
    want = dense_attention(q, k, v, 0.2)
    got = dense_attention_lower_right(q, k, v, 0.2)
    assert float((got - want).norm() / want.norm()) < 1e-5
    assert not torch.allclose(got, dense_attention_lower_right(q, k, v.flip(2), 0.2))  # the keys matter


def test_length_scale_leaves_rows_within_the_base_unchanged_and_scales_the_rest():
    net = _net("dense")
    enc = _enc(96, seed=3)
    with torch.no_grad():
        plain = net(enc.ids[None])[0]
        net.set_inference_config(length_scale_base=40)
        scaled = net(enc.ids[None])[0]
    torch.testing.assert_close(scaled[:40], plain[:40], atol=0, rtol=0)  # <= 40 visible keys: factor 1
    assert (scaled[40:] - plain[40:]).abs().amax(-1).min() > 1e-6  # every later row changes (row 41: x1.0067)
    from msa_lab.model.layers import length_scale
    f = length_scale(96, 3, 40, torch.zeros(1)).flatten()
    torch.testing.assert_close(f, torch.tensor([math.log(n) / math.log(40) for n in (94, 95, 96)]))


@pytest.mark.parametrize("chunk", [16, 29])
def test_length_scale_chunked_prefill_and_decode_equal_the_full_forward(chunk):
    net = _net("dense")
    net.set_inference_config(length_scale_base=24)
    enc = _enc(90, seed=4)
    with torch.no_grad():
        full = net(enc.ids[None])[0]
    eng = Engine(net)
    cache, logits = eng.prefill(enc.slice(0, 80), chunk, extra_tokens=10)
    torch.testing.assert_close(logits, full[79], atol=1e-4, rtol=1e-4)
    for i in range(80, 90):
        torch.testing.assert_close(eng.decode_step(cache, int(enc.ids[i])), full[i], atol=1e-4, rtol=1e-4)


def test_length_scale_is_dense_only_and_validated():
    net = _net("msa")
    enc = _enc(64, seed=5)
    with torch.no_grad():
        before = net(enc.ids[None])
        net.set_inference_config(length_scale_base=8)  # MSA's softmax spans <= top_k blocks: no scaling
        torch.testing.assert_close(net(enc.ids[None]), before, atol=0, rtol=0)
    assert all(layer.attn.cfg.length_scale_base == 8 for layer in net.layers)
    with pytest.raises(ValueError, match="length_scale_base"):
        small_config("dense", length_scale_base=1)
    with pytest.raises(ValueError, match="build a new model"):
        net.set_inference_config(n_layers=3)
