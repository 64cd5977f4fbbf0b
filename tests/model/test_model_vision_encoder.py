"""The vision encoder (ModelConfig.vision_layers): whole-image context, a no-op warm start, chunk-invariant
prefill, per-patch labels on its output, and the training options that switch it on."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

import msa_lab.train as T
from msa_lab.api import Model
from msa_lab.model import small_config
from msa_lab.model.checkpoint import load_checkpoint
from msa_lab.model.net import MSATransformer
from msa_lab.model.vision_encoder import image_spans


def _images(n, seed=0):
    rs = np.random.RandomState(seed)
    return [Image.fromarray((rs.rand(20 + 7 * i, 30, 3) * 255).astype(np.uint8)) for i in range(n)]


def test_image_spans_split_rows_into_images():
    slot = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 2, 3, 0, 1])  # two whole, one cut at its start, one cut at its end
    assert image_spans(slot) == [(0, 4), (4, 8), (8, 10), (10, 12)]
    assert image_spans(torch.zeros(0, dtype=torch.long)) == []


def test_encoder_sees_the_whole_image_and_only_its_own():
    """Changing the last patch of image 1 changes the encoder's output at its first patch (bidirectional), and
    leaves image 2's rows exactly as they were (attention never crosses images)."""
    torch.manual_seed(0)
    cfg = small_config("msa", vision_layers=2)
    net = MSATransformer(cfg).eval()
    with torch.no_grad():
        net.vision.out.weight.normal_(0, 0.1)  # as after training: the output layer starts at zero
    P = cfg.patches_per_image
    patches, slots = torch.rand(2 * P, cfg.patch_dim) * 2 - 1, torch.arange(P).repeat(2)
    moved = patches.clone()
    moved[P - 1] = -moved[P - 1]
    with torch.no_grad():
        a, b = net.embed_patches(patches, slots), net.embed_patches(moved, slots)
    assert (a[0] - b[0]).abs().max() > 1e-4
    assert torch.equal(a[P:], b[P:])


def test_warm_start_into_an_encoder_is_a_no_op_and_the_encoder_learns():
    torch.manual_seed(0)
    cfg = small_config("msa")
    base, enc = MSATransformer(cfg), MSATransformer(cfg.replace(vision_layers=1))
    missing, unexpected = enc.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("vision.") for k in missing)
    m = Model(enc)
    e = m.encode("a <image> b <image> c", _images(2))
    with torch.no_grad():
        assert torch.equal(base(e.ids[None], e.patches, e.patch_slot), enc(e.ids[None], e.patches, e.patch_slot))
    enc(e.ids[None], e.patches, e.patch_slot, mode="train_dense").pow(2).mean().backward()
    assert enc.vision.out.weight.grad.abs().sum() > 0
    for bad in (-1, 9, True, 1.5):
        with pytest.raises(ValueError, match="vision_layers"):
            cfg.replace(vision_layers=bad)


@pytest.mark.parametrize("chunk", [5, 16, 23, 1000])
def test_chunked_prefill_encodes_images_whole(chunk):
    """A prefill in chunks that cut images gives the logits of one full forward (the engine embeds every
    image whole first), and so does capture."""
    torch.manual_seed(1)
    cfg = small_config("msa", vision_layers=2)
    net = MSATransformer(cfg).eval()
    with torch.no_grad():
        net.vision.out.weight.normal_(0, 0.2)
    m = Model(net)
    e = m.encode("two pictures: <image> and <image> - which?", _images(2, seed=3))
    with torch.no_grad():
        full = net(e.ids[None], e.patches, e.patch_slot)[0, -1]
    _, last = m.engine.prefill(e, chunk_size=chunk, check_memory=False)
    assert torch.allclose(last, full, atol=1e-4, rtol=1e-4)
    # without the whole-image embeddings, a chunk boundary inside an image would change the answer
    if chunk < len(e):
        piece = e.slice(0, chunk)
        with torch.no_grad():
            cut = net(piece.ids[None], piece.patches, piece.patch_slot)[0, -1]
            whole = net(piece.ids[None], patch_embeds=net.embed_patches(e.patches, e.patch_slot)[
                slice(*e.patch_range(0, chunk))])[0, -1]
        if piece.patch_slot.numel() and piece.patch_slot[-1] != cfg.patches_per_image - 1:
            assert (cut - whole).abs().max() > 1e-5


def test_patch_labels_supervise_the_encoder_output(tmp_path):
    """With an encoder, the per-patch heads read its output (one row per patch), their loss reaches the encoder's
    blocks, and a run with --vision-layers writes a checkpoint that has the encoder and no heads."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = small_config("msa", vision_layers=1)
    net = MSATransformer(cfg)
    net.patch_supervision = T.PatchSupervision(cfg.d_model)
    src = T.TaskSource(T.parse_tasks("image_qa:1"))
    batch = T.make_batch(src.examples("image_qa", 3, 0, 128), cfg, "image_qa", cfg.block_size, labels=True)
    grads = {}
    for w in (0.0, 1.0):
        net.zero_grad(set_to_none=True)
        tc = T.TrainConfig(patch_aux_weight=w, kl_queries=8)
        out = T.compute_loss(net, batch, torch.arange(batch.ids.shape[1]), "train_dense", tc, random.Random(0), "cpu")
        out["loss"].backward()
        grads[w] = net.vision.blocks[0].wqkv.weight.grad.clone()
    assert out["patch_loss"] > 0
    # the encoder's output layer starts at zero, so only the labels reach its blocks at first
    assert grads[0.0].abs().sum() == 0 and grads[1.0].abs().sum() > 0
    args = ["--smoke", "--no-progress", "--out-dir", str(tmp_path / "ck"), "--log-dir", str(tmp_path / "log"),
            "--steps", "2", "--vision-layers", "1", "--patch-aux-weight", "0.5"]
    assert T.main(args) == 0
    net2, meta = load_checkpoint("smoke-msa", tmp_path / "ck")
    assert net2.cfg.vision_layers == 1 and net2.vision is not None
    assert not any(k.startswith("patch_supervision") for k in net2.state_dict())
    # the next warm start keeps the encoder without the flag; another depth is refused by name
    assert T.build_model_config(T.TrainConfig(smoke=True, init_from=str(tmp_path / "ck"))).vision_layers == 1
    with pytest.raises(ValueError, match="vision_layers=1"):
        T.main(["--smoke", "--no-progress", "--out-dir", str(tmp_path / "x"), "--log-dir", str(tmp_path / "xl"),
                "--steps", "1", "--init-from", str(tmp_path / "ck"), "--vision-layers", "2"])
