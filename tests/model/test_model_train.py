"""Training: CPU smoke run (loss decreases), resume, PoSE positions, batches, the data fallback."""
import json
import random
import sys
import time

import pytest
import torch
from PIL import Image

from msa_lab import train as T
from msa_lab.model import load_checkpoint, small_config
from msa_lab.model.synthetic import iter_copy
from msa_lab.model.tokens import encode_example


def _args(tmp_path, *extra):
    return ["--smoke", "--no-progress", "--out-dir", str(tmp_path / "ck"), "--log-dir", str(tmp_path / "log"), *extra]


def _log(tmp_path):
    return [json.loads(line) for line in (tmp_path / "log" / "smoke-msa" / "log.jsonl").read_text().splitlines()]


def test_smoke_run_loss_decreases(tmp_path):
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    assert T.main(_args(tmp_path)) == 0
    assert time.perf_counter() - t0 < 60
    log = _log(tmp_path)
    assert len(log) == 30 and {r["phase"] for r in log} == {"dense", "sparse"}  # warm-up, then MSA
    first = sum(r["lm_loss"] for r in log[:5]) / 5
    last = sum(r["lm_loss"] for r in log[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert all(r["kl"] >= 0 for r in log)  # indexer KL is computed in both phases
    net, meta = load_checkpoint("smoke-msa", tmp_path / "ck")  # the run's checkpoint loads back
    assert meta["train"]["steps"] == 30 and net.cfg.name == "smoke-msa"
    card = (tmp_path / "ck" / "README.md").read_text()
    assert "## smoke-msa" in card and "| steps | 30 |" in card


def test_resume_continues(tmp_path):
    torch.set_num_threads(1)
    T.main(_args(tmp_path, "--steps", "3"))
    info = json.loads((tmp_path / "log" / "smoke-msa" / "resume.json").read_text())
    assert info["state"]["step"] == 3
    T.main(_args(tmp_path, "--steps", "5", "--resume"))
    log = _log(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]  # appended, numbering continues
    assert log[3]["lr"] != log[0]["lr"]
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / "log" / "smoke-msa" / "resume.safetensors"))
    steps = {k: float(v) for k, v in t.items() if k.endswith("/step")}
    assert steps and all(v == 5 for v in steps.values())  # AdamW's step counters carried over


@pytest.mark.parametrize("sink", [0, 1])
def test_resume_keeps_the_parts_of_its_warm_start(tmp_path, sink):
    """A run warm-started from a checkpoint with optional parts (TokenConv, a sink) and resumed without
    --init-from continues with them; it used to rebuild the preset's config and refuse its own state. A state
    saved before the sink existed (no such key) resumes with the sink off."""
    torch.set_num_threads(1)
    T.main(_args(tmp_path / "a", "--steps", "1", "--token-conv", "3", "--attention-sink", str(sink)))
    T.main(_args(tmp_path, "--steps", "2", "--init-from", str(tmp_path / "a" / "ck")))
    jpath = tmp_path / "log" / "smoke-msa" / "resume.json"
    info = json.loads(jpath.read_text())
    assert info["model_config"]["token_conv"] == 3 and info["model_config"]["attention_sink"] == sink
    if not sink:
        del info["model_config"]["attention_sink"]
        jpath.write_text(json.dumps(info))
    T.main(_args(tmp_path, "--steps", "3", "--resume"))
    assert [r["step"] for r in _log(tmp_path)] == [1, 2, 3]
    net, _ = load_checkpoint("smoke-msa", tmp_path / "ck")
    assert net.cfg.token_conv == 3 and net.cfg.attention_sink == sink


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no resume state"):
        T.main(_args(tmp_path, "--resume"))


def test_pose_positions():
    rng = random.Random(0)
    for _ in range(50):
        pos = T.pose_positions(300, 200, 1_000_000, rng)
        d = pos[1:] - pos[:-1]
        assert (d >= 1).all() and int(pos[-1]) < 1_000_000
        assert (d[199:] == 1).all()  # contiguous from the end of the prompt on (the answer)
        assert int((d > 1).sum()) <= 2
    assert max(int(T.pose_positions(300, 200, 1_000_000, random.Random(s))[-1]) for s in range(50)) > 100_000
    assert torch.equal(T.pose_positions(300, 3, 10**6, rng), torch.arange(300))  # prompt too short to cut


def test_gui_answer_moves_to_model_pixels():
    cfg = small_config()  # 16 px images
    ex = {"task": "gui", "prompt": "<image>\nClick 'OK'", "images": [Image.new("RGB", (640, 480))],
          "answer": json.dumps({"kind": "click", "x": 320, "y": 479, "text": None, "direction": None}), "meta": "{}"}
    b = T.make_batch([ex, dict(ex, task="image_qa", answer="red")], cfg, "gui", cfg.block_size)
    from msa_lab.model.tokens import decode

    answers = [decode(b.ids[i][b.answer_mask[i]]) for i in range(2)]
    assert json.loads(answers[0]) == {"kind": "click", "x": 8, "y": 15, "text": None, "direction": None}
    assert answers[1] == "red"
    assert b.ids.shape[1] % cfg.block_size == 0 and b.patches.shape[0] == 2 * cfg.patches_per_image


def test_batches_carry_pixels_the_model_scales_exactly():
    """make_batch's patch rows are the uint8 pixels (a quarter of float32's bytes through the data workers'
    pipes); the model reads them exactly as the float rows encode_example gives."""
    from msa_lab.model.net import MSATransformer
    from msa_lab.model.vision import prepare_image

    cfg = small_config(patch_stem=4, stem_scope="image", vision_layers=1)
    rng = random.Random(0)
    img = Image.frombytes("RGB", (40, 30), bytes(rng.randrange(256) for _ in range(40 * 30 * 3)))
    ex = {"task": "image_qa", "prompt": "<image>\nWhat colour?", "images": [img], "answer": "red", "meta": "{}"}
    b = T.make_batch([ex], cfg, "image_qa", cfg.block_size)
    enc, _ = encode_example(ex["prompt"], [prepare_image(img, cfg.image_size)], "red", image_size=cfg.image_size,
                            patch_size=cfg.patch_size)
    assert b.patches.dtype == torch.uint8 and torch.equal(b.patches.float().div(127.5).sub(1.0), enc.patches)
    torch.manual_seed(0)
    net = MSATransformer(cfg)
    torch.nn.init.normal_(net.patch_stem.out.weight)
    with torch.no_grad():
        assert torch.equal(net(b.ids, b.patches, b.patch_slot), net(b.ids, enc.patches, b.patch_slot))


def test_task_source_falls_back_without_msa_lab_tasks(monkeypatch):
    monkeypatch.setitem(sys.modules, "msa_lab.tasks", None)  # import fails as if the package were absent
    msgs = []
    src = T.TaskSource({"niah_single": 1.0, "gui": 1.0}, log=msgs.append)
    assert src.weights == {"synthetic_niah": 1.0} and "synthetic NIAH only" in msgs[0]
    ex = src.examples("synthetic_niah", 2, 0, 300)
    assert len(ex) == 2 and len(ex[0]["prompt"].encode()) + 2 == 300 and ex[0]["answer"] in ex[0]["prompt"]


def test_schedule():
    tc = T.TrainConfig(seq_start=512, seq_end=8192, minutes=10)
    assert T.seq_len_at(0.0, tc, 64) == 512 and T.seq_len_at(0.8, tc, 64) == 8192 == T.seq_len_at(1.0, tc, 64)
    assert 512 < T.seq_len_at(0.4, tc, 64) < 8192
    assert T.lr_at(0, 0.0, tc) < T.lr_at(tc.warmup_steps, 0.01, tc)
    assert T.lr_at(10**6, 1.0, tc) == pytest.approx(tc.lr * tc.min_lr_frac)
    with pytest.raises(ValueError, match="name:weight"):
        T.parse_tasks("niah_single:lots")


def test_unknown_task_names_are_refused():
    with pytest.raises(ValueError, match="unknown tasks \\['niah_singel'\\]"):
        T.TaskSource({"niah_singel": 1.0})


@pytest.mark.parametrize("haystack", ["stdlib", "random"])
def test_copy_task_examples_and_batches(haystack):
    """The copy task: each string ends a line of the haystack (build_context snaps inserts to a line
    start where one is near), the question names its first 4 characters, and the answer repeats the
    strings in the question's order."""
    from msa_lab.model.synthetic import iter_copy

    exs = list(iter_copy(3, 7, length=1024, num_strings=5, haystack=haystack))
    assert exs == list(iter_copy(3, 7, length=1024, num_strings=5, haystack=haystack))  # deterministic
    from msa_lab.model.tokens import encode_example

    for ex in exs:  # the prompt is exactly `length` model tokens (BOS + bytes + SEP)
        enc, answer = encode_example(ex["prompt"], [], ex["answer"], image_size=64, patch_size=8)
        assert len(enc.ids) - int(answer.sum()) == 1024
    for ex in exs:
        strings = ex["answer"].split(", ")
        assert len(strings) == 5 and len(set(strings)) == 5
        body, question = ex["prompt"].rsplit("\n", 1)
        for s in strings:
            assert 12 <= len(s) <= 40 and f"{s}\n" in body
            assert s[:4] in question
        assert [question.index(s[:4]) for s in strings] == sorted(question.index(s[:4]) for s in strings)
    task = "copy" if haystack == "stdlib" else "copy_random"
    source = T.TaskSource({task: 1.0})
    exs = source.examples(task, 2, 1, 1024)
    batch = T.make_batch(exs, small_config("msa"), task, 64)
    longest = max(1024 + len(ex["answer"]) + 1 for ex in exs)  # prompt tokens + answer bytes + EOS
    assert batch.ids.shape[1] == -(-longest // 64) * 64
    assert [int(m.sum()) for m in batch.answer_mask] == [len(ex["answer"]) + 1 for ex in exs]
    with pytest.raises(ValueError, match="too small"):
        list(iter_copy(1, 0, length=200, num_strings=8, haystack=haystack))
    with pytest.raises(ValueError, match="haystack must be"):
        list(iter_copy(1, 0, haystack="code"))


def test_digit_loss_is_the_loss_on_answer_digits_only():
    cfg = small_config("dense")
    net = T.MSATransformer(cfg)
    exs = [{"task": "niah_single", "prompt": "x is: 123", "images": [], "answer": "ab 42"}]
    batch = T.make_batch(exs, cfg, "niah_plain", 64, answer_format="plain")
    tc = T.TrainConfig(prompt_loss_weight=0.0)
    out = T.compute_loss(net, batch, torch.arange(batch.ids.shape[1]), "train_dense", tc, random.Random(0), "cpu")
    logits = net(batch.ids, mode="train_dense")
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], batch.ids[0, 1:], reduction="none")
    tgt = batch.ids[0, 1:]
    digits = batch.answer_mask[0, 1:] & (tgt >= ord("0")) & (tgt <= ord("9"))
    assert int(digits.sum()) == 2  # "4" and "2"; the prompt's digits do not count
    assert out["digit_loss"].item() == pytest.approx(ce[digits].mean().item(), rel=1e-5)
    no_digits = T.make_batch([{**exs[0], "answer": "ab"}], cfg, "niah_plain", 64, answer_format="plain")
    assert T.compute_loss(net, no_digits, torch.arange(no_digits.ids.shape[1]), "train_dense", tc,
                          random.Random(0), "cpu")["digit_loss"] is None


def test_token_conv_warm_starts_from_a_checkpoint_without_it(tmp_path):
    """--token-conv on a checkpoint trained without it: the old weights load, the taps start at the
    identity, and the first step's loss equals the checkpoint's (the network is unchanged)."""
    torch.set_num_threads(1)
    assert T.main(_args(tmp_path, "--steps", "2")) == 0
    ck = tmp_path / "ck"
    base = _log(tmp_path)
    for args, name in [(("--steps", "1", "--init-from", str(ck)), "plain"),
                       (("--steps", "1", "--init-from", str(ck), "--token-conv", "4"), "conv")]:
        out = tmp_path / name
        assert T.main(["--smoke", "--no-progress", "--out-dir", str(out / "ck"), "--log-dir", str(out / "log"),
                       *args]) == 0
        first = json.loads((out / "log" / "smoke-msa" / "log.jsonl").read_text().splitlines()[0])
        if name == "plain":
            ref = first["lm_loss"]
        else:
            assert first["lm_loss"] == pytest.approx(ref, rel=1e-5)
            net, meta = load_checkpoint("smoke-msa", out / "ck")
            assert net.cfg.token_conv == 4 and meta["config"]["token_conv"] == 4
    assert len(base) == 2
    other = T.TrainConfig(smoke=True, token_conv=3)
    assert T.build_model_config(other).token_conv == 3


def test_warm_start_from_a_token_conv_checkpoint_keeps_its_token_conv(tmp_path):
    """--init-from a checkpoint with TokenConv and no --token-conv: the run takes the checkpoint's width
    (this failed with "unexpected token_conv weights" before); another width is refused by name."""
    torch.set_num_threads(1)
    assert T.main(_args(tmp_path, "--steps", "1", "--token-conv", "3")) == 0
    ck = tmp_path / "ck"
    assert T.build_model_config(T.TrainConfig(smoke=True, init_from=str(ck))).token_conv == 3
    out = tmp_path / "next"
    assert T.main(["--smoke", "--no-progress", "--out-dir", str(out / "ck"), "--log-dir", str(out / "log"),
                   "--steps", "1", "--init-from", str(ck)]) == 0
    assert load_checkpoint("smoke-msa", out / "ck")[0].cfg.token_conv == 3
    third = tmp_path / "third"  # a warm start of a warm start: the record lists all three runs
    assert T.main(["--smoke", "--no-progress", "--out-dir", str(third / "ck"), "--log-dir", str(third / "log"),
                   "--steps", "1", "--init-from", str(out / "ck")]) == 0
    tr = load_checkpoint("smoke-msa", third / "ck")[1]["train"]
    assert [c["steps"] for c in tr["chain"]] == [1, 1, 1] and tr["total_steps"] == 3
    assert len(tr["chain_commands"]) == 3 and "--init-from" in tr["chain_commands"][2]
    with pytest.raises(ValueError, match="token_conv=3 and this run 4; leave out --token-conv"):
        T.main(["--smoke", "--no-progress", "--out-dir", str(out / "ck2"), "--log-dir", str(out / "log2"),
                "--steps", "1", "--init-from", str(ck), "--token-conv", "4"])


@pytest.mark.parametrize("length", [64, 65, 127, 128, 300, 320, 1024, 4096])
def test_copy_lines_fills_the_prompt_with_strings_and_repeats_them(length):
    exs = list(iter_copy(6, length, length=length, haystack="none"))
    for ex in exs:
        enc, answer = encode_example(ex["prompt"], [], ex["answer"], image_size=64, patch_size=8)
        assert len(enc.ids) - int(answer.sum()) == length  # BOS + prompt bytes + SEP
        body, question = ex["prompt"].rsplit("\n", 1)
        strings = ex["answer"].split(", ")
        assert len(strings) >= 2 and question.startswith("Repeat: ")
        lines = body.split("\n")
        for s in strings:
            assert s in lines and s[:4] in question
        assert [question.index(s[:4]) for s in strings] == sorted(question.index(s[:4]) for s in strings)
        assert sum(len(s) for s in strings) > 0.3 * length  # dense copy signal: the point of the task
    assert len({ex["answer"] for ex in exs}) == len(exs)
    with pytest.raises(ValueError, match="use length >= 64"):
        list(iter_copy(1, 0, length=40, haystack="none"))


@pytest.mark.parametrize("task", ["niah_multi_key", "niah_multi_query", "niah_multi_value"])
@pytest.mark.parametrize("length", [320, 384, 448, 512, 640])
def test_training_needle_counts_fit_short_prompts(task, length):
    """needles_for may ask for length // 128 needles; near the minimum length fewer fit. Three of this
    session's GPU runs died at 384 tokens on exactly that (2026-11-27, fourth session)."""
    from msa_lab.tasks.niah import max_needles

    source = T.TaskSource({task: 1.0})
    for seed in range(12):
        (ex,) = source.examples(task, 1, seed, length)
        assert len(json.loads(ex["meta"])["needles"]) <= max_needles(task.removeprefix("niah_"), length)
    variant = task.removeprefix("niah_")
    k = max_needles(variant, length)
    from msa_lab.tasks import iter_task

    next(iter(iter_task(task, 1, 0, length=length, num_needles=k, split="train")))
    if k < 64:
        with pytest.raises(ValueError, match="too small"):
            next(iter(iter_task(task, 1, 0, length=length, num_needles=k + 1, split="train")))


def test_warm_start_record_keeps_the_whole_chain(tmp_path):
    """A warm start of a warm start reports every run: totals, not the parent's last run alone."""
    from msa_lab.model.checkpoint import FORMAT
    from msa_lab.train import warm_start_record

    chain = [{"run": "1 a", "steps": 10, "tokens": 100, "seconds": 5.0},
             {"run": "2 b", "steps": 3, "tokens": 30, "seconds": 1.0}]
    train = {"steps": 3, "tokens": 30, "seconds": 1.0, "total_steps": 13, "total_tokens": 130, "total_seconds": 6.0,
             "chain": chain, "chain_commands": ["cmd a", "cmd b"], "command": "cmd b"}
    (tmp_path / "msa-tiny.json").write_text(json.dumps({"format": FORMAT, "sha256": "x", "train": train}))
    rec = warm_start_record("msa-tiny", str(tmp_path))
    assert (rec["steps"], rec["tokens"], rec["seconds"]) == (13, 130, 6.0)
    assert rec["chain"] == chain and rec["chain_commands"] == ["cmd a", "cmd b"]
    train = {"steps": 7, "tokens": 70, "seconds": 2.0, "command": "cmd"}  # a single run starts a chain of one
    (tmp_path / "msa-tiny.json").write_text(json.dumps({"format": FORMAT, "sha256": "x", "train": train}))
    rec = warm_start_record("msa-tiny", str(tmp_path))
    assert [c["steps"] for c in rec["chain"]] == [7] and rec["chain_commands"] == ["cmd"]


def test_card_eval_text_gives_niah_by_length_and_flags_other_weights():
    from msa_lab.train import _eval_text

    res = {"summary": {"niah_accuracy": 0.5, "gui_click_accuracy": 0.4}, "versions": {"gpu": "H100", "torch": "2"},
           "created": "2026-11-27T00:00:00Z", "gui": {"kind_accuracy": 1.0, "n": 10}, "card": {"sha256": "aaa"},
           "tables": {"niah": [{"length": 4096, "n": 2, "accuracy": 1.0}, {"length": 4096, "n": 2, "accuracy": 0.5},
                               {"length": 65536, "n": 1, "accuracy": 0.0}]}}
    text = _eval_text(res, "aaa")
    assert "4,096: 0.75 (4)" in text and "65,536: 0.00 (1)" in text and "H100" in text
    assert not text.startswith("STALE")
    assert _eval_text(res, "bbb").startswith("STALE")


def test_resize_patch_pos_keeps_the_layout():
    g = torch.arange(4.0)
    ramp = (g[:, None] * 10 + g[None, :]).reshape(16, 1).repeat(1, 3)  # [16 slots, d=3]: row * 10 + column
    out = T.resize_patch_pos(ramp, 64)
    assert out.shape == (64, 3)
    grid = out[:, 0].reshape(8, 8)
    assert (grid.diff(dim=0) > 0).all() and (grid.diff(dim=1) > 0).all()  # still increasing down and across
    assert torch.allclose(T.resize_patch_pos(ramp, 16), ramp, atol=1e-5)  # same grid: unchanged
    with pytest.raises(ValueError, match="square"):
        T.resize_patch_pos(ramp, 48)


def test_image_size_change_warm_starts_and_is_kept(tmp_path):
    """--image-size on a warm start: the patch grid is interpolated, the run trains, the next warm start
    keeps the new size without the flag; a size that does not tile the patches is refused by name."""
    torch.set_num_threads(1)
    assert T.main(_args(tmp_path, "--steps", "1")) == 0
    ck = tmp_path / "ck"
    small = load_checkpoint("smoke-msa", ck)[0]
    big_dir = tmp_path / "big"
    assert T.main(["--smoke", "--no-progress", "--out-dir", str(big_dir / "ck"), "--log-dir", str(big_dir / "log"),
                   "--steps", "1", "--init-from", str(ck), "--image-size", str(2 * small.cfg.image_size)]) == 0
    big = load_checkpoint("smoke-msa", big_dir / "ck")[0]
    assert big.cfg.image_size == 2 * small.cfg.image_size
    assert big.patch_pos.weight.shape[0] == 4 * small.patch_pos.weight.shape[0]
    assert T.build_model_config(T.TrainConfig(smoke=True, init_from=str(big_dir / "ck"))).image_size == \
        big.cfg.image_size
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        T.build_model_config(T.TrainConfig(smoke=True, image_size=small.cfg.image_size + 3))


def test_image_colour_examples_show_their_answer():
    """The training-only image task: the answer's colour is the most common non-background pixel colour."""
    from msa_lab.model.synthetic import iter_image_colour
    from msa_lab.tasks.draw import BACKGROUNDS, COLOURS

    exs = list(iter_image_colour(8, 3))
    assert [e["id"] for e in exs] == [e["id"] for e in iter_image_colour(8, 3)]  # deterministic
    assert len({e["answer"] for e in exs}) > 2
    for e in exs:
        img = e["images"][0]
        counts = sorted(((c, rgb) for c, rgb in img.getcolors(1 << 16) if rgb not in BACKGROUNDS), reverse=True)
        assert counts[0][1] == COLOURS[e["answer"]]
        assert e["prompt"].count("<image>") == 1
    src = T.TaskSource(T.parse_tasks("image_colour:1"))
    batch = T.make_batch(src.examples("image_colour", 3, 0, 128), small_config("msa"), "image_colour", 8)
    assert batch.patches.shape[0] == 3 * small_config("msa").patches_per_image and batch.answer_mask.any()


def test_patch_stem_starts_as_a_no_op_and_learns():
    """A warm start into a model with a patch stem embeds images exactly as before (the stem's output layer
    is zero), and the stem gets a gradient, so training can move it."""
    from msa_lab.model.net import MSATransformer
    from msa_lab.model.tokens import IMG_PATCH

    torch.manual_seed(0)
    cfg = small_config("msa")
    base, stem = MSATransformer(cfg), MSATransformer(cfg.replace(patch_stem=8))
    missing, unexpected = stem.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("patch_stem.") for k in missing)
    P = cfg.patches_per_image
    ids = torch.full((1, P + 2), IMG_PATCH)
    ids[0, 0], ids[0, -1] = 65, 66
    patches, slots = torch.rand(P, cfg.patch_dim) * 2 - 1, torch.arange(P)
    assert torch.equal(base.embed_inputs(ids, patches, slots), stem.embed_inputs(ids, patches, slots))
    stem.embed_inputs(ids, patches, slots).pow(2).sum().backward()
    assert stem.patch_stem.out.weight.grad.abs().sum() > 0
    for bad, match in [(dict(patch_stem=2), "patch_stem"), (dict(patch_stem=True), "patch_stem"),
                       (dict(patch_stem=8, image_size=12, patch_size=6), "divisible by 4")]:
        with pytest.raises(ValueError, match=match):
            cfg.replace(**bad)


def test_patch_stem_warm_start_keeps_the_loss_and_then_the_stem(tmp_path):
    """--patch-stem on a checkpoint without one: the first step's loss equals a plain warm start's; the
    next warm start keeps the stem without the flag, and another width is refused by name."""
    torch.set_num_threads(1)
    assert T.main(_args(tmp_path, "--steps", "1")) == 0
    ck = tmp_path / "ck"
    first = {}
    for name, extra in [("plain", ()), ("stem", ("--patch-stem", "8"))]:
        out = tmp_path / name
        assert T.main(["--smoke", "--no-progress", "--out-dir", str(out / "ck"), "--log-dir", str(out / "log"),
                       "--steps", "1", "--init-from", str(ck), *extra]) == 0
        first[name] = json.loads((out / "log" / "smoke-msa" / "log.jsonl").read_text().splitlines()[0])["lm_loss"]
    assert first["stem"] == pytest.approx(first["plain"], rel=1e-5)
    assert load_checkpoint("smoke-msa", tmp_path / "stem" / "ck")[0].cfg.patch_stem == 8
    assert T.build_model_config(T.TrainConfig(smoke=True, init_from=str(tmp_path / "stem" / "ck"))).patch_stem == 8
    with pytest.raises(ValueError, match="patch_stem=8"):
        T.main(["--smoke", "--no-progress", "--out-dir", str(tmp_path / "x"), "--log-dir", str(tmp_path / "xl"),
                "--steps", "1", "--init-from", str(tmp_path / "stem" / "ck"), "--patch-stem", "16"])


def test_image_stem_convolves_whole_pictures():
    """stem_scope="image": the stem's convolutions over the picture rebuilt from its patch rows equal a plain
    conv over the image; a one-patch picture gives PatchStem's output; several images and a truncated one are
    each handled on their own grid; and the scope moves by warm start (same weights)."""
    import torch.nn.functional as F

    from msa_lab.model.net import ImageStem, MSATransformer, PatchStem
    from msa_lab.vision_pretrain import patchify_batch

    torch.manual_seed(0)
    stem = ImageStem(32, 16, 4, 8)
    torch.nn.init.normal_(stem.out.weight)
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    px, slot = patchify_batch(imgs, 16), torch.arange(4).repeat(2)
    got = stem(px, slot)
    x = imgs.float().div(127.5).sub(1.0)
    fm = F.gelu(stem.conv3(F.gelu(stem.conv2(F.gelu(stem.conv1(x))))))  # [2, 8, 8, 8]
    for i in range(2):
        for s in range(4):
            r, c = divmod(s, 2)
            want = stem.out(fm[i, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].flatten())
            torch.testing.assert_close(got[4 * i + s], want, rtol=1e-5, atol=1e-5)
    # a patch on its own grid is PatchStem's case
    one = ImageStem(16, 16, 4, 8)
    one.load_state_dict(stem.state_dict())
    patch = PatchStem(16, 4, 8)
    patch.load_state_dict(stem.state_dict())
    p1 = patchify_batch(imgs[:, :, :16, :16], 16)
    torch.testing.assert_close(one(p1, torch.zeros(2, dtype=torch.long)), patch(p1), rtol=1e-5, atol=1e-5)
    # the second image's truncated tail (slots 0, 1): its own grid, missing patches mid-grey (zero)
    part = torch.cat([px, px[4:6]])
    out = stem(part, torch.cat([slot, torch.arange(2)]))
    torch.testing.assert_close(out[:8], got)
    grey = px[4:8].clone()
    grey[2:] = 0
    torch.testing.assert_close(out[8:], stem(grey, torch.arange(4))[:2])
    # through the model, and the scope is a config choice on the same weights
    cfg = small_config("msa", image_size=32, patch_size=16, patch_stem=4, vision_layers=1)
    a, b = MSATransformer(cfg), MSATransformer(cfg.replace(stem_scope="image"))
    assert isinstance(b.patch_stem, ImageStem) and not isinstance(a.patch_stem, ImageStem)
    b.load_state_dict(a.state_dict())
    assert b.encode_patches(px, slot)[0].shape == (8, cfg.d_model)
    for bad, match in [(dict(stem_scope="pixel"), "stem_scope"), (dict(patch_stem=0, stem_scope="image"), "needs a stem")]:
        with pytest.raises(ValueError, match=match):
            cfg.replace(**bad)


@pytest.mark.parametrize("scope", ["patch", "image"])
def test_patch_pool_warm_start_reads_the_larger_picture_as_before(tmp_path, scope):
    """--patch-pool 2 at twice the image and patch size, from a checkpoint without pooling: a picture drawn at twice
    the size (each pixel a 2x2 block) gets exactly the patch embeddings the checkpoint gave the picture; the run
    trains, the next warm start keeps the pooling, and sizes the pooling does not divide are refused by name."""
    from msa_lab.model.net import MSATransformer
    from msa_lab.vision_pretrain import patchify_batch

    torch.set_num_threads(1)
    assert T.main(_args(tmp_path, "--steps", "1", "--patch-stem", "4", "--stem-scope", scope)) == 0
    ck = tmp_path / "ck"
    small = load_checkpoint("smoke-msa", ck)[0].float()
    s, p = small.cfg.image_size, small.cfg.patch_size
    big = MSATransformer(small.cfg.replace(image_size=2 * s, patch_size=2 * p, patch_pool=2)).float()
    T.warm_start(big, str(ck))
    assert big.patch_stem.conv1.weight.shape[-2:] == (6, 6) and big.patch_stem.conv1.stride == (2, 2)
    assert big.patch_proj.weight.shape == small.patch_proj.weight.shape
    torch.manual_seed(0)
    imgs = torch.randint(0, 256, (2, 3, s, s), dtype=torch.uint8)
    slot = torch.arange(small.cfg.patches_per_image).repeat(2)
    with torch.no_grad():
        want = small.encode_patches(patchify_batch(imgs, p), slot)[0]
        blocks = imgs.repeat_interleave(2, 2).repeat_interleave(2, 3)
        got = big.encode_patches(patchify_batch(blocks, 2 * p), slot)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # detail finer than the small picture's pixels reaches the embedding (what the pooling is for)
        detail = blocks.clone()
        detail[:, :, ::2, ::2] = 255 - detail[:, :, ::2, ::2]
        assert (big.encode_patches(patchify_batch(detail, 2 * p), slot)[0] - got).abs().max() > 1e-3
        with pytest.raises(ValueError, match=f"takes \\[P, {big.cfg.patch_dim}\\]"):  # the small picture's rows
            big.encode_patches(patchify_batch(imgs, p), slot)
    out = tmp_path / "big"
    assert T.main(["--smoke", "--no-progress", "--out-dir", str(out / "ck"), "--log-dir", str(out / "log"),
                   "--steps", "1", "--init-from", str(ck), "--image-size", str(2 * s), "--patch-size", str(2 * p),
                   "--patch-pool", "2"]) == 0
    assert load_checkpoint("smoke-msa", out / "ck")[0].cfg.patch_pool == 2
    assert T.build_model_config(T.TrainConfig(smoke=True, init_from=str(out / "ck"))).patch_pool == 2
    cfg = big.cfg
    for bad, match in [(dict(patch_pool=0), "patch_pool"), (dict(patch_pool=True), "patch_pool"),
                       (dict(patch_pool=5), "patch_pool"), (dict(patch_stem=0, stem_scope="patch"), "needs a stem"),
                       (dict(image_size=24, patch_size=12), "divisible by 8")]:
        with pytest.raises(ValueError, match=match):
            cfg.replace(**bad)


def test_image_qa_kind_tasks_and_training_seeds():
    """image_qa_<kind> draws only that kind; training's task seeds never reach the evals' small seeds."""
    src = T.TaskSource(T.parse_tasks("image_qa_word:1,image_qa_count:1"))
    for kind in ("word", "count", "shape", "colour"):
        exs = src.examples(f"image_qa_{kind}", 4, 7, 1024)
        assert {json.loads(e["meta"])["kind"] for e in exs} == {kind}
    seeds = []
    real = src.examples
    src.examples = lambda task, n, seed, seq_len: seeds.append(seed) or real(task, n, seed, seq_len)
    tc = T.TrainConfig(tasks="image_qa_word:1,image_qa_count:1", max_examples=2, tokens_per_step=1024)
    cfg = small_config("msa")
    for step in range(20):
        T.build_step(tc, cfg, src, step, 0.0)
    assert len(seeds) == 20 and min(seeds) >= T.TRAIN_SEED_MIN > 12345


def test_batch_prefetcher_worker_processes_draw_what_build_step_draws():
    """The worker processes (spawned) return, step for step, the batch build_step makes in this process."""
    tc = T.TrainConfig(tasks="image_qa:1,synthetic_niah:1", max_examples=3, tokens_per_step=512, seq_start=128,
                       seq_end=128)
    cfg = small_config("msa")
    src = T.TaskSource(T.parse_tasks(tc.tasks))
    assert T.data_workers(tc, torch.device("cpu")) == 0  # the CPU trainer keeps its cores
    assert T.data_workers(T.TrainConfig(data_workers=3), torch.device("cpu")) == 3
    for workers in (0, 1):
        pf = T.BatchPrefetcher(tc, cfg, src, workers)
        try:
            for step in (0, 1, 2, 5):  # a skipped step (a resumed run) is fine too
                got, pos, _ = pf.get(step, 0.5)
                want, wpos, _ = T.build_step(tc, cfg, src, step, 0.5)
                assert got.task == want.task and torch.equal(got.ids, want.ids) and torch.equal(pos, wpos)
                assert torch.equal(got.patches, want.patches)
        finally:
            pf.close()
    with pytest.raises(SystemExit, match="--data-workers must be >= 0"):
        T.parse_args(["--data-workers", "-1"])


def test_patch_labels_mark_what_each_patch_shows():
    """Image QA: the patch holding an object's centre carries its shape and colour and the centre flag;
    GUI: the patch under the target's centre carries its element kind; text tasks carry no labels."""
    from msa_lab.model.config import model_config
    from msa_lab.tasks import iter_task

    cfg = model_config("msa-tiny")
    g, heads = cfg.image_size // cfg.patch_size, list(T.PATCH_HEADS)
    cls = T.patch_classes()
    for ex in iter_task("image_qa", 6, 3):
        lab = T.patch_labels(ex, cfg)
        assert lab.shape == (g * g, len(heads)) and int(lab[:, heads.index("gui")].max()) == -100
        meta = json.loads(ex["meta"])
        w, h = meta["size"]
        for o in meta["objects"]:
            cx, cy = (o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2
            i = int(cy * g // h) * g + int(cx * g // w)
            assert lab[i, heads.index("shape")] == 1 + cls["shape"].index(o["shape"])
            assert lab[i, heads.index("colour")] == 1 + cls["colour"].index(o["colour"])
            assert lab[i, heads.index("centre")] == 1
        assert int(lab[:, heads.index("centre")].sum()) <= len(meta["objects"])
        if meta["word"]:
            assert (lab[:, heads.index("word")] == 1 + cls["word"].index(meta["word"]["text"])).any()
    checked = texts = 0
    for ex in iter_task("gui", 8, 3):
        lab, meta = T.patch_labels(ex, cfg), json.loads(ex["meta"])
        assert int(lab[:, heads.index("shape")].max()) == -100
        assert lab[:, heads.index("gui")].min() >= 0 and lab[:, heads.index("gui")].max() >= 1
        # the patch whose centre lies nearest the target's centre shows the target (drawn last among those there)
        w, h = meta["size"]
        x, y = (meta["box"][0] + meta["box"][2]) / 2, (meta["box"][1] + meta["box"][3]) / 2
        i = int(y * g // h) * g + int(x * g // w)
        cx, cy = (i % g + 0.5) * w / g, (i // g + 0.5) * h / g
        under = [e for e in meta["elements"] if e["box"][0] <= cx < e["box"][2] and e["box"][1] <= cy < e["box"][3]]
        if under and under[-1] is meta["elements"][meta["target_index"]]:
            target = under[-1]
            assert lab[i, heads.index("gui_label")] == 1 + cls["gui_label"].index(target["label"])
            assert lab[i, heads.index("gui_window")] == 1 + cls["gui_window"].index(target["window"])
            assert lab[i, heads.index("gui")] == 1 + cls["gui"].index(target["kind"])
            checked += 1
        def at(box, j):
            return box[0] <= (j % g + 0.5) * w / g < box[2] and box[1] <= (j // g + 0.5) * h / g < box[3]

        empty = [j for j in range(g * g) if not any(at(e["box"], j) for e in meta["elements"])]
        labelled = {j: e for e in meta["elements"] if e.get("label_box") for j in empty if at(e["label_box"], j)
                    and not (e["window"] == "main" and meta["dialog"] and at(meta["dialog"], j))}
        # a field's "Label:" text reads as its label and window, not as a field (the pointer's target is the box)
        for j, e in labelled.items():
            assert lab[j, heads.index("gui_label")] == 1 + cls["gui_label"].index(e["label"])
            assert lab[j, heads.index("gui_window")] == 1 + cls["gui_window"].index(e["window"])
            assert lab[j, heads.index("gui")] == 0
            texts += 1
        assert all(int(lab[j, heads.index("gui_label")]) == 0 for j in empty if j not in labelled)
    assert checked >= 2 and texts >= 4  # both checks ran on real targets and label texts, not only on skipped ones
    text = {"task": "niah_single", "images": [], "meta": "{}"}
    assert T.patch_labels(text, cfg).numel() == 0


def test_patch_supervision_adds_a_loss_and_stays_out_of_the_checkpoint(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = small_config("msa")
    from msa_lab.model.net import MSATransformer

    net = MSATransformer(cfg)
    net.patch_supervision = T.PatchSupervision(cfg.d_model)
    src = T.TaskSource(T.parse_tasks("image_qa:1"))
    exs = src.examples("image_qa", 3, 0, 128)
    assert T.make_batch(exs, cfg, "image_qa", cfg.block_size).patch_labels is None  # drawn only when asked
    batch = T.make_batch(exs, cfg, "image_qa", cfg.block_size, labels=True)
    assert batch.patch_labels.shape == (batch.patches.shape[0], len(T.PATCH_HEADS))
    tc = T.TrainConfig(patch_aux_weight=0.5, kl_queries=8)
    out = T.compute_loss(net, batch, torch.arange(batch.ids.shape[1]), "train_dense", tc, random.Random(0), "cpu")
    assert out["patch_loss"] > 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert net.patch_supervision.heads["shape"].weight.grad.abs().sum() > 0
    # a run with the heads writes a checkpoint without them (load_checkpoint is strict)
    assert T.main(_args(tmp_path, "--steps", "2", "--patch-aux-weight", "0.5")) == 0
    net2, meta = load_checkpoint("smoke-msa", tmp_path / "ck")
    assert not any(k.startswith("patch_supervision") for k in net2.state_dict())
    assert meta["train"]["patch_aux_weight"] == 0.5


def test_train_only_index_moves_the_index_projections_alone(tmp_path):
    """--train-only index: after a warm-started run, wiq/wik changed and every other weight is bit-identical;
    the card says so; a dense model is refused by name."""
    torch.set_num_threads(1)
    assert T.main(_args(tmp_path, "--steps", "1")) == 0
    before = load_checkpoint("smoke-msa", tmp_path / "ck")[0].state_dict()
    out = tmp_path / "idx"
    assert T.main(["--smoke", "--no-progress", "--out-dir", str(out / "ck"), "--log-dir", str(out / "log"),
                   "--steps", "3", "--init-from", str(tmp_path / "ck"), "--train-only", "index", "--lr", "1e-2"]) == 0
    net, meta = load_checkpoint("smoke-msa", out / "ck")
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".wiq." in k or ".wik." in k for k in changed)
    assert meta["train"]["train_only"] == "index"
    with pytest.raises(ValueError, match="no index branch"):
        T.train(T.TrainConfig(model="dense-200k", smoke=False, train_only="index", max_steps=1, device="cpu",
                              out_dir=str(tmp_path / "d"), log_dir=str(tmp_path / "dl"), progress=False))


def test_concentration_weight_is_logged_recorded_and_checked(tmp_path):
    """--concentration-weight adds the loss (logged per step, recorded on the checkpoint); bad values and
    combinations are refused by name."""
    torch.set_num_threads(1)
    assert T.main(_args(tmp_path, "--steps", "3", "--concentration-weight", "0.5", "--concentration-k", "3")) == 0
    log = _log(tmp_path)
    assert all(r["concentration"] > 0 for r in log)
    meta = load_checkpoint("smoke-msa", tmp_path / "ck")[1]
    assert meta["train"]["concentration"] == {"weight": 0.5, "k": 3, "queries": 64}
    for bad, msg in ((["--concentration-weight", "-1"], ">= 0"), (["--concentration-k", "0"], "concentration-k"),
                     (["--concentration-weight", "1", "--train-only", "index"], "freezes")):
        with pytest.raises(SystemExit, match=msg):
            T.parse_args(_args(tmp_path, *bad))
    with pytest.raises(SystemExit, match="dense"):
        T.parse_args(["--model", "dense-200k", "--concentration-weight", "1"])
    with pytest.raises(ValueError, match="selects no blocks"):
        T.train(T.TrainConfig(model="dense-200k", concentration_weight=1.0, max_steps=1, device="cpu",
                              out_dir=str(tmp_path / "d"), log_dir=str(tmp_path / "dl"), progress=False))


def test_concentration_weight_adds_weight_times_the_loss():
    """compute_loss with --concentration-weight w is the loss without it plus w * concentration, on the same batch
    and KL positions; the concentration term is -log of a mass, so > 0 where blocks are left out."""
    torch.manual_seed(0)
    cfg = small_config()
    net = T.MSATransformer(cfg)
    net.backend = "torch"
    exs = [{"task": "niah_single", "prompt": "".join(chr(97 + i % 26) for i in range(120)) + " x is:", "images": [],
            "answer": "42"}]
    batch = T.make_batch(exs, cfg, "niah_plain", cfg.block_size, answer_format="plain")
    pos = torch.arange(batch.ids.shape[1])
    outs = {}
    for w in (0.0, 0.5):
        tc = T.TrainConfig(concentration_weight=w, concentration_k=3, kl_queries=64)
        outs[w] = T.compute_loss(net, batch, pos, "train_sparse", tc, random.Random(0), "cpu")
    conc = outs[0.5]["concentration"]
    assert "concentration" not in outs[0.0] and conc > 0.01
    assert outs[0.5]["loss"].item() == pytest.approx(outs[0.0]["loss"].item() + 0.5 * conc.item(), rel=1e-5)


def test_card_names_the_image_front_end():
    from msa_lab.train import _images_text

    plain = _images_text({"image_size": 64, "patch_size": 8, "vision_layers": 2})
    assert plain.startswith("resized to 64x64 px, 8-px patches (64 tokens per image)") and "stem" not in plain
    full = _images_text({"image_size": 256, "patch_size": 16, "vision_layers": 2, "patch_stem": 32, "pointer_dim": 64})
    assert "256 tokens per image" in full and "conv stem (32 channels)" in full and "GUI pointer (width 64)" in full
    assert "over each patch" in full
    assert "over each whole picture" in _images_text({"patch_stem": 32, "stem_scope": "image"})
    pooled = _images_text({"image_size": 512, "patch_size": 32, "patch_pool": 2, "patch_stem": 32})
    assert "256 tokens per image, projected from 16-px average-pooled copies" in pooled
