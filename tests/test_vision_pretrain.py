"""Vision pre-training (msa_lab.vision_pretrain): the front end alone on per-patch labels, then a warm start."""
import json

import pytest
import torch

from msa_lab import train as T
from msa_lab import vision_pretrain as V
from msa_lab.model import load_checkpoint, small_config
from msa_lab.model.net import MSATransformer
from msa_lab.model.vision import patchify

CFG = small_config("msa", vision_layers=1, image_size=32, patch_size=16, patch_stem=4)


def _smoke_ck(tmp_path):
    """A smoke checkpoint of the LM trainer (the warm start both stages take)."""
    torch.set_num_threads(1)
    assert T.main(["--smoke", "--no-progress", "--steps", "1", "--out-dir", str(tmp_path / "ck"),
                   "--log-dir", str(tmp_path / "log"), "--vision-layers", "1"]) == 0
    return tmp_path / "ck"


def test_patchify_batch_matches_patchify():
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    rows = V.patchify_batch(pixels, 8)
    assert torch.equal(rows, torch.cat([patchify(p, 8) for p in pixels]))


def test_pictures_are_deterministic_and_labelled():
    tasks = T.parse_tasks("gui:1,image_qa_word:1")
    px, lab = V.draw_pictures(CFG, tasks, 7, 6)
    px2, lab2 = V.draw_pictures(CFG, tasks, 7, 6)
    assert px.shape == (6, 3, 32, 32) and lab.shape == (6, CFG.patches_per_image, len(T.PATCH_HEADS))
    assert torch.equal(px, px2) and torch.equal(lab, lab2)
    assert not torch.equal(px, V.draw_pictures(CFG, tasks, 8, 6)[0])
    heads = {h: j for j, h in enumerate(T.PATCH_HEADS)}
    gui = (lab[..., heads["gui"]] >= 0).all(1)  # a GUI screen labels every patch for the GUI heads...
    assert gui.any() and (~gui).any()
    assert (lab[gui][..., heads["word"]] == -100).all()  # ...and none for the image-QA heads
    assert (lab[~gui][..., heads["word"]] > 0).any()  # the word pictures show their word


def test_read_accuracy_counts_each_thing_once_per_picture():
    labels = torch.tensor([[0, 2, 2, 3], [1, 1, -100, 0]])
    logits = torch.zeros(2, 4, 4)
    logits[0, 1, 2] = logits[0, 2, 2] = 5.0  # label 2 read on both of its patches
    logits[0, 3, 1] = 5.0  # label 3 misread as 1
    logits[1, 0, 1] = 5.0
    logits[1, 1, 3] = 2.0  # one patch wrong, but the average still picks 1
    assert V.read_accuracy(logits, labels) == (2, 3)
    # label 2 on group 4 (read), label 3 on group 7 (misread), label 1 on one patch each of 4 and 7: the tie goes
    # to the smaller group
    groups = torch.tensor([[0, 4, 4, 7], [4, 7, 7, 0]])
    assert V.read_accuracy(logits, labels, groups) == (2, 3, {4: (2, 2), 7: (0, 1)})
    # with groups, a label is read on its element's patches only (group > 0), not on a field's "Label:" text
    text = torch.zeros(1, 2, 4)
    text[0, 0, 1], text[0, 1, 2] = 5.0, 2.0  # the text patch says 1, the box patch 2: their average says 1
    assert V.read_accuracy(text, torch.tensor([[2, 2]])) == (0, 1)
    assert V.read_accuracy(text, torch.tensor([[2, 2]]), torch.tensor([[0, 4]])) == (1, 1, {4: (1, 1)})


def test_a_fixed_batch_is_learned_through_the_front_end():
    """The loss that the stage minimises reaches the stem, the projection and the encoder, and falls."""
    torch.manual_seed(0)
    net, heads = MSATransformer(CFG), T.PatchSupervision(CFG.d_model)
    px, lab = V.draw_pictures(CFG, T.parse_tasks("gui:1,image_qa:1"), 3, 8)
    params = [p for n, p in net.named_parameters() if n.startswith(V.TRAINED)] + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    watched = ("patch_proj.weight", "patch_stem.conv1.weight", "vision.blocks.0.wqkv.weight")
    start = {n: net.get_parameter(n).detach().clone() for n in watched}
    losses = []
    for _ in range(40):
        loss = heads.loss(V.encoder_states(net, px), lab.view(-1, len(T.PATCH_HEADS)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for n in watched:  # the stem's output layer starts at zero, so its convolutions move from the second step
        assert not torch.equal(start[n], net.get_parameter(n)), n


def test_stage_trains_the_front_end_only_and_warm_starts_the_trainer(tmp_path, capsys):
    ck = _smoke_ck(tmp_path)
    out = tmp_path / "v"
    assert V.main(["--smoke", "--no-progress", "--init-from", str(ck), "--out-dir", str(out), "--max-steps", "3",
                   "--image-size", "32", "--patch-size", "16", "--patch-stem", "4", "--eval-every", "100"]) == 0
    before, after = load_checkpoint("smoke-msa", ck)[0], load_checkpoint("smoke-msa", out)[0]
    assert (after.cfg.image_size, after.cfg.patch_size, after.cfg.patch_stem) == (32, 16, 4)
    a, b = before.state_dict(), after.state_dict()
    lm = [k for k in b if not k.startswith(V.TRAINED)]
    assert "layers.0.attn.wq.weight" in lm and "vision.out.weight" in lm and "embed.weight" in lm
    assert all(torch.equal(a[k], b[k]) for k in lm)  # the language model is the warm start's
    assert not torch.equal(a["vision.blocks.0.wqkv.weight"], b["vision.blocks.0.wqkv.weight"])
    assert b["patch_proj.weight"].shape == (CFG.d_model, 3 * 16 * 16)
    ev = json.loads((out / "vision_eval.json").read_text())
    assert ev["steps"] == 3 and ev["pictures"] == 3 * 8
    assert 0 <= ev["held_out"]["image_qa_word"]["word"]["read_acc"] <= 1
    assert ev["held_out"]["gui"]["gui_label"]["read_n"] > 0
    assert set(ev["held_out"]["gui"]["gui_label"]["read_by_kind"]) <= set(T.patch_classes()["gui"]) | {"none"}
    card = json.loads((out / "smoke-msa.json").read_text())["train"]
    assert card["chain"][-1]["run"].startswith(f"{len(card['chain'])} vision pre-training, no text")
    # the LM trainer goes on from it, with the stage's patch heads
    capsys.readouterr()
    assert T.main(["--smoke", "--no-progress", "--steps", "1", "--init-from", str(out), "--out-dir",
                   str(tmp_path / "f"), "--log-dir", str(tmp_path / "flog"), "--patch-aux-weight", "1",
                   "--patch-balanced"]) == 0
    assert "patch heads from" in capsys.readouterr().out
    assert json.loads((tmp_path / "f" / "smoke-msa.json").read_text())["train"]["patch_balanced"] is True
    heads = T.PatchSupervision(after.cfg.d_model)
    assert T.load_patch_heads(heads, str(out), "smoke-msa") == T.patch_heads_path(out, "smoke-msa")
    from safetensors.torch import load_file

    saved = load_file(str(T.patch_heads_path(out, "smoke-msa")))
    assert all(torch.equal(v, saved[k]) for k, v in heads.state_dict().items())
    assert T.build_model_config(T.TrainConfig(smoke=True, init_from=str(tmp_path / "f"))).patch_size == 16
    # the trainer writes its heads beside its checkpoint, and a further vision stage starts from them
    assert T.patch_heads_path(tmp_path / "f", "smoke-msa").is_file()
    capsys.readouterr()
    v2 = tmp_path / "v2"
    assert V.main(["--smoke", "--no-progress", "--init-from", str(tmp_path / "f"), "--out-dir", str(v2),
                   "--max-steps", "2", "--eval-every", "100", "--replay", "3", "--replay-batches", "2",
                   "--stem-scope", "image"]) == 0
    assert "patch heads from" in capsys.readouterr().out
    # the stem moved to whole pictures with the per-patch stem's weights as its start
    assert load_checkpoint("smoke-msa", v2)[0].cfg.stem_scope == "image"
    # replay: one to three updates per drawn batch (more while the next is not drawn yet), pictures counted once
    log = [json.loads(line) for line in (v2 / "vision_log.jsonl").read_text().splitlines()]
    steps_per_batch = [b["updates"] - a["updates"] for a, b in zip([{"updates": 0}] + log, log)]
    assert len(log) == 2 and all(1 <= n <= 3 for n in steps_per_batch)
    ev2 = json.loads((v2 / "vision_eval.json").read_text())
    assert (ev2["steps"], ev2["updates"], ev2["replay"], ev2["pictures"]) == (2, log[-1]["updates"], 3, 2 * 8)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="training seed range"):
        V.held_out(CFG, {"gui": 1.0}, 2, T.TRAIN_SEED_MIN)
    with pytest.raises(ValueError, match="draws only pictures"):
        V.run(V.parse_args(["--smoke", "--tasks", "niah_single:1", "--out-dir", str(tmp_path)]))
    with pytest.raises(ValueError, match="no vision encoder"):
        V.run(V.parse_args(["--smoke", "--vision-layers", "0", "--out-dir", str(tmp_path)]))
    with pytest.raises(SystemExit, match="--batch"):
        V.parse_args(["--batch", "0"])
    with pytest.raises(SystemExit, match="--replay must be > 0"):
        V.parse_args(["--replay", "0"])


def test_cli_delegates(capsys):
    from msa_lab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["pretrain-vision", "--help"])
    assert e.value.code == 0 and "--patch-size" in capsys.readouterr().out


def test_balanced_loss_weighs_things_and_background_the_same():
    torch.manual_seed(0)
    heads = T.PatchSupervision(8)
    hidden = torch.randn(10, 8)
    labels = torch.full((10, len(T.PATCH_HEADS)), -100)
    word = T.PATCH_HEADS.index("word")
    labels[:, word] = 0
    labels[3, word] = 5  # one patch of ten shows the word
    ce = torch.nn.functional.cross_entropy(heads.heads["word"](hidden), labels[:, word], reduction="none")
    assert torch.allclose(heads.loss(hidden, labels), ce.mean())
    assert torch.allclose(heads.loss(hidden, labels, balanced=True), (ce[3] + ce[torch.arange(10) != 3].mean()) / 2)
    labels[3, word] = 0  # nothing shown: the background alone
    assert torch.allclose(heads.loss(hidden, labels, balanced=True), heads.loss(hidden, labels))


def test_reader_eval_script(tmp_path, monkeypatch, capsys):
    import importlib.util
    import os
    import sys

    ck = _smoke_ck(tmp_path)
    out = tmp_path / "v"
    assert V.main(["--smoke", "--no-progress", "--init-from", str(ck), "--out-dir", str(out), "--max-steps", "1"]) == 0
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "reader_eval.py")
    spec = importlib.util.spec_from_file_location("reader_eval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["reader_eval.py", str(out), "--model", "smoke-msa", "--n", "4",
                                      "--out", str(tmp_path / "r.json")])
    mod.main()
    res = json.loads((tmp_path / "r.json").read_text())["results"][str(out)]
    assert res["held_out"]["gui"]["gui_label"]["read_n"] > 0 and "read_by_kind" in res["held_out"]["gui"]["gui_label"]
    assert "GUI labels read, by element kind" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["reader_eval.py", str(ck), "--model", "smoke-msa"])
    with pytest.raises(SystemExit, match="no smoke-msa.patch_heads.safetensors"):
        mod.main()


def test_replay_fills_the_wait_for_the_next_batch(tmp_path, monkeypatch):
    # next batch never ready: every drawn batch gets the full `replay` updates, from a pool of at most 2 batches
    monkeypatch.setattr(V._Feeder, "empty", lambda self: True)
    out = tmp_path / "v"
    assert V.main(["--smoke", "--no-progress", "--out-dir", str(out), "--max-steps", "3", "--eval-every", "100",
                   "--replay", "4", "--replay-batches", "2"]) == 0
    log = [json.loads(line) for line in (out / "vision_log.jsonl").read_text().splitlines()]
    assert [r["updates"] for r in log] == [4, 8, 12]
    # next batch always ready: replay never delays it
    monkeypatch.setattr(V._Feeder, "empty", lambda self: False)
    assert V.main(["--smoke", "--no-progress", "--out-dir", str(out), "--max-steps", "3", "--eval-every", "100",
                   "--replay", "4"]) == 0
    log = [json.loads(line) for line in (out / "vision_log.jsonl").read_text().splitlines()]
    assert [r["updates"] for r in log] == [1, 2, 3]


def test_stem_probe_script(tmp_path, monkeypatch):
    import importlib.util
    import os
    import sys

    from safetensors.torch import load_file

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "stem_probe.py")
    spec = importlib.util.spec_from_file_location("stem_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for stem in ("patch", "image"):
        out, saved = tmp_path / f"{stem}.jsonl", tmp_path / f"{stem}.safetensors"
        monkeypatch.setattr(sys, "argv", ["stem_probe.py", "--stem", stem, "--minutes", "0.03", "--batch", "4",
                                          "--eval-n", "4", "--width", "32", "--image-size", "32", "--patch-size", "8",
                                          "--stem-channels", "4", "--replay", "2", "--out", str(out),
                                          "--save", str(saved)])
        assert mod.main() == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 2 and rows[0]["pictures"] == 0 and rows[-1]["step"] >= 1
        assert rows[-1]["updates"] == 2 * rows[-1]["step"] and rows[-1]["pictures"] == 4 * rows[-1]["step"]
        assert 0 <= rows[-1]["held_out"]["image_qa_word"]["word"]["read_acc"] <= 1
        weights = load_file(str(saved))
        assert "patch_stem.conv1.weight" in weights and "heads.heads.word.weight" in weights
        assert not any(k.startswith(("layers.", "embed.")) for k in weights)  # the front end and heads only
