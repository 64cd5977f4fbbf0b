import pytest

import msa_lab
from msa_lab import MSAConfig


def test_presets_shapes():
    m3 = MSAConfig.preset("m3")
    assert (m3.n_heads, m3.n_kv_heads, m3.head_dim, m3.index_dim, m3.index_key_heads) == (64, 4, 128, 128, 1)
    assert (m3.block_size, m3.top_k, m3.init_blocks, m3.local_blocks) == (128, 16, 1, 1)
    ll = MSAConfig.preset("llama3_8b")
    assert (ll.n_heads, ll.n_kv_heads, ll.head_dim) == (32, 8, 128)
    assert MSAConfig.preset("tiny").group_size == 4
    assert set(msa_lab.PRESETS) == {"m3", "llama3_8b", "tiny"}


def test_preset_override_and_unknown():
    assert MSAConfig.preset("m3", top_k=8).top_k == 8
    with pytest.raises(KeyError, match="known presets: llama3_8b, m3, tiny"):
        MSAConfig.preset("m4")


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(block_size=0), "block_size must be a positive int"),
        (dict(block_size=-128), "block_size must be a positive int"),
        (dict(top_k=0), "top_k must be a positive int"),
        (dict(block_size=12.5), "block_size must be a positive int"),
        (dict(init_blocks=-1), "init_blocks must be an int >= 0"),
        (dict(top_k=1, init_blocks=1, local_blocks=1), "top_k=1 is smaller than init_blocks \\+ local_blocks"),
        (dict(n_heads=6, n_kv_heads=4), "not a multiple of n_kv_heads"),
        (dict(n_kv_heads=4, index_key_heads=2), "must be 1 .* or n_kv_heads=4"),
        (dict(scale=0.0), "scale must be a finite float > 0"),
        (dict(index_scale=float("nan")), "index_scale must be a finite float > 0"),
        (dict(head_dim=0), "head_dim must be a positive int"),
    ],
)
def test_bad_config(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        MSAConfig(**kwargs)


def test_scales_default_and_override():
    c = MSAConfig(head_dim=64, index_dim=16)
    assert c.softmax_scale() == 64**-0.5 and c.index_softmax_scale() == 0.25
    assert MSAConfig(scale=0.5).softmax_scale(128) == 0.5
    assert MSAConfig().num_blocks(129) == 2 and MSAConfig().num_blocks(128) == 1


def test_group_size_needs_shapes():
    with pytest.raises(ValueError, match="leaves n_heads, n_kv_heads unset"):
        MSAConfig().group_size
