"""Checkpoints: round trip, sha256 and config verification, size budget, load_model errors."""
import json

import pytest
import torch

from msa_lab.api import Model, load_model
from msa_lab.model import (CheckpointError, CheckpointNotFound, MSATransformer, load_checkpoint, model_config,
                           save_checkpoint, small_config)
from msa_lab.model.checkpoint import MAX_BYTES, sha256_file

torch.set_num_threads(1)


def _net(**kw):
    torch.manual_seed(0)
    net = MSATransformer(small_config("msa", **kw))
    net.reset_parameters(0)
    net.backend = "torch"
    return net.eval()


def test_round_trip_fp16(tmp_path):
    net = _net()
    jpath = save_checkpoint(net, tmp_path, train={"steps": 3})
    meta = json.loads(jpath.read_text())
    assert meta["sha256"] == sha256_file(tmp_path / "test-msa.safetensors") and meta["train"] == {"steps": 3}
    loaded, meta2 = load_checkpoint("test-msa", tmp_path)
    loaded.backend = "torch"
    assert loaded.cfg == net.cfg and meta2["n_params"] == net.n_params()
    for k, v in net.state_dict().items():  # weights come back as their fp16 rounding
        torch.testing.assert_close(loaded.state_dict()[k], v.half().float(), atol=0, rtol=0)
    ids = torch.randperm(256)[:40][None]
    with torch.no_grad():
        net.half().float()  # the same rounding in place: the forward must agree exactly up to fp32 noise
        torch.testing.assert_close(loaded(ids), net(ids), atol=1e-5, rtol=1e-5)


def test_sha256_mismatch(tmp_path):
    save_checkpoint(_net(), tmp_path)
    w = tmp_path / "test-msa.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the tensor data
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch.*re-copy both files together, or retrain"):
        load_checkpoint("test-msa", tmp_path)


def test_config_mismatch_and_unknown_keys(tmp_path):
    save_checkpoint(_net(), tmp_path)
    j = tmp_path / "test-msa.json"
    meta = json.loads(j.read_text())
    meta["config"]["n_layers"] = 3  # weights hold 2 layers
    j.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its config: missing"):
        load_checkpoint("test-msa", tmp_path)
    meta["config"]["n_layers"] = 2
    meta["config"]["flash"] = True
    j.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown keys \\['flash'\\]"):
        load_checkpoint("test-msa", tmp_path)
    meta["config"].pop("flash")
    meta["format"] = "something-else"
    j.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format 'something-else'"):
        load_checkpoint("test-msa", tmp_path)


def test_missing_weights_file(tmp_path):
    save_checkpoint(_net(), tmp_path)
    (tmp_path / "test-msa.safetensors").unlink()
    with pytest.raises(CheckpointError, match="its weights .* do not"):
        load_checkpoint("test-msa", tmp_path)


@pytest.mark.parametrize("name", ["msa-tiny", "dense-200k"])
def test_shipped_configs_fit_the_size_budget(name, tmp_path):
    net = MSATransformer(model_config(name))
    assert net.n_params() * 2 <= MAX_BYTES
    save_checkpoint(net, tmp_path)
    assert (tmp_path / f"{name}.safetensors").stat().st_size <= MAX_BYTES
    m = load_model(name, "cpu", checkpoint_dir=tmp_path)  # the user API on a (random) checkpoint
    assert m.name == name and m.config == model_config(name)


def test_oversized_model_is_refused(tmp_path):
    net = MSATransformer(small_config("dense", d_model=128, vocab_size=70_000))  # ~9M params, ~18 MB in fp16
    with pytest.raises(CheckpointError, match="over the 16 MiB budget"):
        save_checkpoint(net, tmp_path)
    assert not list(tmp_path.glob("*.safetensors*"))


def test_load_model_errors(tmp_path):
    with pytest.raises(KeyError, match="known models: dense-200k, msa-tiny"):
        load_model("msa-huge")
    with pytest.raises(CheckpointNotFound, match="msa-lab train --model msa-tiny"):
        load_model("msa-tiny", checkpoint_dir=tmp_path)


def test_model_repr_and_random_init():
    m = Model.from_config(small_config("dense", max_context=100))
    assert "attention=dense" in repr(m) and "limit=100" in repr(m)
