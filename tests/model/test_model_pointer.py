"""The GUI pointer (ModelConfig.pointer_dim, msa_lab.model.pointer): points round-trip through patch + offset, its
loss trains it on GUI screens, act() takes the point from it, and the training options that switch it on."""
import json
import math
import random

import pytest
import torch
from PIL import Image

import msa_lab.train as T
from msa_lab.api import Model, parse_action
from msa_lab.model import small_config
from msa_lab.model.checkpoint import load_checkpoint
from msa_lab.model.net import MSATransformer
from msa_lab.model.pointer import point_in_image, point_targets
from msa_lab.model.tokens import SEP
from msa_lab.model.vision import prepare_image


@pytest.mark.parametrize("size,patch", [(16, 8), (64, 8), (256, 8), (128, 16)])
def test_targets_and_points_round_trip(size, patch):
    """Every pixel maps to the patch that holds it and an offset in (0, 1); a pointer that picks that patch with
    that offset names the same pixel."""
    g = size // patch
    xy = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="xy"), -1).reshape(-1, 2)
    cell, off = point_targets(xy, size, patch)
    assert torch.equal(cell, (xy[:, 1] // patch) * g + xy[:, 0] // patch)
    assert bool(((off > 0) & (off < 1)).all())
    for i in range(0, xy.shape[0], max(1, xy.shape[0] // 97)):
        scores = torch.full((g * g,), -5.0)
        scores[cell[i]] = 5.0
        offsets = torch.zeros(g * g, 2)
        offsets[cell[i]] = off[i]
        (x, y), prob = point_in_image(scores, offsets, size, patch)
        assert (x, y) == tuple(xy[i].tolist()) and 0 < prob <= 1


def test_config_checks():
    cfg = small_config("msa", vision_layers=1)
    assert cfg.replace(pointer_dim=16).pointer_dim == 16
    for bad in (-1, 4, 2048, True, 1.5):
        with pytest.raises(ValueError, match="pointer_dim"):
            cfg.replace(pointer_dim=bad)
    with pytest.raises(ValueError, match="needs vision_layers"):
        small_config("msa").replace(pointer_dim=16)


def test_pointer_loss_trains_the_pointer_and_reaches_the_encoder():
    """The batch carries each screen's target in resized pixels (the answer's x, y); the loss's gradient reaches
    the vision encoder and the LM (the query is the LM's state at SEP), and the loss falls when trained on."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = small_config("msa", vision_layers=1, pointer_dim=16, image_size=32)
    net = MSATransformer(cfg)
    with torch.no_grad():
        net.vision.out.weight.normal_(0, 0.05)
    exs = T.TaskSource(T.parse_tasks("gui:1")).examples("gui", 4, 0, 128)
    batch = T.make_batch(exs, cfg, "gui", cfg.block_size)
    want = [json.loads(T.model_answer(e, [prepare_image(e["images"][0], cfg.image_size)])) for e in exs]
    assert batch.point_xy.tolist() == [[a["x"], a["y"]] for a in want]
    assert (batch.ids[torch.arange(4), T.sep_positions(batch)] == SEP).all()  # the query is read where act() reads it
    states = net.pointer_states(batch.ids, batch.patches, batch.patch_slot, mode="train_dense")
    T.pointer_loss(net, states, batch, "cpu")["loss"].backward()
    assert net.vision.blocks[0].wqkv.weight.grad.abs().sum() > 0
    assert net.layers[-1].attn.wo.weight.grad.abs().sum() > 0
    tc = T.TrainConfig(pointer_weight=1.0, kl_queries=8)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad(set_to_none=True)
        out = T.compute_loss(net, batch, torch.arange(batch.ids.shape[1]), "train_dense", tc, random.Random(0), "cpu")
        losses.append(float(out["pointer_loss"]))
        out["loss"].backward()
        opt.step()
    assert losses[0] > 0.5 * math.log(cfg.patches_per_image)  # it starts knowing nothing
    assert losses[-1] < 0.5 * losses[0] and float(out["pointer_acc"]) == 1.0
    off = T.compute_loss(net, batch, torch.arange(batch.ids.shape[1]), "train_dense", T.TrainConfig(kl_queries=8),
                         random.Random(0), "cpu")
    assert "pointer_loss" not in off  # weight 0: no pointer term


def test_act_takes_the_point_from_the_pointer(monkeypatch):
    m = Model.from_config(small_config("msa", vision_layers=1, pointer_dim=16))
    monkeypatch.setattr(m, "generate", lambda *a, **k: '{"kind": "click", "x": 1, "y": 2, "text": null, "direction": null}')
    seen = {}

    def fake_point(ids, patches, patch_slot, mode="ops"):
        seen["last"] = int(ids[0, -1])
        seen["patches"] = patches.shape[0]
        return (9, 5), 0.75

    monkeypatch.setattr(m.net, "point", fake_point)
    act = m.act(Image.new("RGB", (160, 80)), "Click the 'OK' button")
    assert seen == {"last": SEP, "patches": m.config.patches_per_image}  # the prompt as generate() sees it
    assert act.kind == "click" and act.model_xy == (9, 5) and act.point_prob == 0.75
    assert (act.x, act.y) == (int(9.5 * 160 / 16), int(5.5 * 80 / 16))
    # without a pointer the text's point stands; a pointer's point stands in for a text without one
    assert parse_action('{"kind": "click", "x": 1, "y": 2}').model_xy == (1, 2)
    assert parse_action('{"kind": "click"}', point=(3, 4)).model_xy == (3, 4)
    with pytest.raises(ValueError, match="no GUI pointer"):
        Model.from_config(small_config("msa", vision_layers=1)).net.point(torch.zeros(1, 1, dtype=torch.long), None, None)


def test_real_point_is_inside_the_image():
    torch.manual_seed(0)
    m = Model.from_config(small_config("msa", vision_layers=1, pointer_dim=16))
    enc = m.encode("<image>\nClick the 'OK' button", [Image.new("RGB", (50, 30), (200, 10, 10))])
    (x, y), prob = m.net.point(enc.ids[None], enc.patches, enc.patch_slot)
    assert 0 <= x < m.config.image_size and 0 <= y < m.config.image_size and 0 < prob <= 1


def test_training_options(tmp_path):
    torch.set_num_threads(1)
    base = ["--smoke", "--no-progress", "--steps", "1"]
    with pytest.raises(ValueError, match="no GUI pointer; add one with --pointer-dim"):
        T.main(base + ["--out-dir", str(tmp_path / "a"), "--log-dir", str(tmp_path / "al"), "--pointer-weight", "1"])
    with pytest.raises(SystemExit, match="--pointer-weight must be >= 0"):
        T.parse_args(["--pointer-weight", "-1"])
    with pytest.raises(ValueError, match="needs vision_layers"):
        T.main(base + ["--out-dir", str(tmp_path / "b"), "--log-dir", str(tmp_path / "bl"), "--pointer-dim", "16"])
    # a checkpoint without a pointer warm-starts one with it; the pointer is saved and kept by the next warm start
    assert T.main(base + ["--out-dir", str(tmp_path / "c"), "--log-dir", str(tmp_path / "cl"), "--vision-layers", "1"]) == 0
    assert T.main(base + ["--out-dir", str(tmp_path / "d"), "--log-dir", str(tmp_path / "dl"), "--init-from",
                          str(tmp_path / "c"), "--pointer-dim", "16", "--pointer-weight", "1"]) == 0
    c, _ = load_checkpoint("smoke-msa", tmp_path / "c")
    d, meta = load_checkpoint("smoke-msa", tmp_path / "d")
    assert d.cfg.pointer_dim == 16 and d.pointer is not None and c.pointer is None
    assert meta["train"]["pointer_weight"] == 1.0
    assert T.build_model_config(T.TrainConfig(smoke=True, init_from=str(tmp_path / "d"))).pointer_dim == 16
