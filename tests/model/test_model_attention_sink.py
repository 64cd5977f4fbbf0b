"""The attention sink (ModelConfig.attention_sink): a no-op warm start, offsets on the sequence's first token
only (so a chunked prefill equals the full forward), its own lr group, and the training options that switch it
on."""
import pytest
import torch

import msa_lab.train as T
from msa_lab.model import small_config
from msa_lab.model.cache import KVCache
from msa_lab.model.checkpoint import load_checkpoint
from msa_lab.model.net import MSATransformer


def _with_sink_offsets(net, std=0.5):
    with torch.no_grad():
        for layer in net.layers:
            layer.attn.sink_k.normal_(0, std)
            layer.attn.sink_v.normal_(0, std)
    return net


@pytest.mark.parametrize("attention", ["msa", "dense"])
def test_warm_start_into_a_sink_is_a_no_op_and_the_sink_learns(attention):
    torch.manual_seed(0)
    cfg = small_config(attention)
    base, sink = MSATransformer(cfg), MSATransformer(cfg.replace(attention_sink=1))
    missing, unexpected = sink.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and len(missing) == 2 * cfg.n_layers and all(".attn.sink_" in k for k in missing)
    ids = torch.randint(0, 256, (2, 150))
    with torch.no_grad():
        assert torch.equal(base(ids), sink(ids))
    sink(ids, mode="train_dense").pow(2).mean().backward()
    assert all(l.attn.sink_k.grad.abs().sum() > 0 and l.attn.sink_v.grad.abs().sum() > 0 for l in sink.layers)
    for bad in (-1, 2, True, 0.5):
        with pytest.raises(ValueError, match="attention_sink"):
            cfg.replace(attention_sink=bad)


def test_offsets_go_to_the_first_token_only():
    """The recorded keys differ from those of the same weights without a sink at position 0 alone, by sink_k."""
    torch.manual_seed(0)
    cfg = small_config("msa", attention_sink=1)
    net = _with_sink_offsets(MSATransformer(cfg)).eval()
    plain = MSATransformer(cfg)
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        for layer in plain.layers:
            layer.attn.sink_k.zero_()
            layer.attn.sink_v.zero_()
    ids = torch.randint(0, 256, (1, 40))
    keys = {}
    with torch.no_grad():
        # layer 0 sees the same input in both, so its keys differ exactly by the offset at token 0
        for name, m in (("sink", net), ("plain", plain)):
            m(ids, mode="train_dense", record=lambda layer, q, k, idx, name=name: keys.setdefault((name, layer), k))
    diff = keys[("sink", 0)] - keys[("plain", 0)]
    assert torch.allclose(diff[0, :, 0], net.layers[0].attn.sink_k, atol=1e-6)
    assert diff[0, :, 1:].abs().max() == 0


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_prefill_equals_the_full_forward(chunk):
    """Through the KV cache, chunk by chunk, every position's logits are those of the full forward: the offsets
    go to the first token of the first chunk only. The bytes are all different: in layer 0 two equal bytes have
    equal index keys, and such an exact tie may fall either way when the chunks round differently."""
    torch.manual_seed(1)
    net = _with_sink_offsets(MSATransformer(small_config("msa", attention_sink=1))).eval()
    net.backend = "torch"
    ids = torch.randperm(256)[None]
    with torch.no_grad():
        full = net(ids)
        cache = KVCache(net.cfg, 1, 16)
        chunked = torch.cat([net(ids[:, s:s + chunk], caches=cache) for s in range(0, ids.shape[1], chunk)], 1)
    assert torch.allclose(chunked, full, atol=1e-4, rtol=1e-4)


def test_sink_training_options(tmp_path):
    """--attention-sink 1 writes a checkpoint with the offsets; they sit in their own lr group (scaled lr, no
    weight decay); the next warm start keeps the sink without the flag."""
    torch.set_num_threads(1)
    args = ["--smoke", "--no-progress", "--out-dir", str(tmp_path / "ck"), "--log-dir", str(tmp_path / "log"),
            "--steps", "3", "--attention-sink", "1", "--sink-lr-scale", "10"]
    assert T.main(args) == 0
    net, meta = load_checkpoint("smoke-msa", tmp_path / "ck")
    assert net.cfg.attention_sink == 1
    assert any(l.attn.sink_k.abs().sum() > 0 for l in net.layers)  # they moved in 3 steps
    assert T.build_model_config(T.TrainConfig(smoke=True, init_from=str(tmp_path / "ck"))).attention_sink == 1
    with pytest.raises(ValueError, match="attention_sink=1"):
        T.main(["--smoke", "--no-progress", "--out-dir", str(tmp_path / "x"), "--log-dir", str(tmp_path / "xl"),
                "--steps", "1", "--init-from", str(tmp_path / "ck"), "--attention-sink", "0"])
