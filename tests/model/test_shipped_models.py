"""The shipped checkpoints in data/checkpoints/ (msa-tiny, dense-200k) on the CPU: they load (sha256
checked), generate, act, refuse bad input, and answer a NIAH question.

Loading time (< 2 s on the CPU) is a benchmark, not a test: benchmarks/bench_load_model.py.
"""
import json

import pytest
import torch
from PIL import Image

import msa_lab
from msa_lab.api import ActionParseError
from msa_lab.eval import answer_ok
from msa_lab.model.engine import ContextTooLong
from msa_lab.tasks import iter_task

pytestmark = pytest.mark.usefixtures("torch_path_models")


@pytest.fixture(scope="module")
def tiny():
    return msa_lab.load_model("msa-tiny", "cpu")


@pytest.fixture(scope="module")
def dense():
    return msa_lab.load_model("dense-200k", "cpu")


def test_both_load_with_their_configs(tiny, dense):
    assert tiny.config.sparse and tiny.config.max_context is None
    assert not dense.config.sparse and dense.config.max_context == 204_800
    for m in (tiny, dense):
        assert m.card["sha256"] and "NVIDIA" in m.card["train"]["device"]  # a GPU ran (part of) the training
        assert m.net.n_params() * 2 <= 16 * 2**20  # the 16 MB budget, fp16


def test_generate_is_deterministic_text(tiny, dense):
    for m in (tiny, dense):
        a = m.generate("def add(a, b):\n    return", max_new_tokens=12)
        assert isinstance(a, str) and a == m.generate("def add(a, b):\n    return", max_new_tokens=12)


def test_act_maps_back_to_original_pixels(tiny):
    ex = next(iter(iter_task("gui", 1, 4242)))
    img = ex["images"][0]
    act = tiny.act(img, json.loads(ex["meta"])["instruction"])
    assert act.kind in ("click", "type", "scroll")
    if act.x is not None:
        assert 0 <= act.x < img.width and 0 <= act.y < img.height
    # any mode and size is converted: the same screen as grey + alpha at another size still gets an action, with
    # its point inside the resized image
    odd = img.convert("LA").resize((333, 250))
    act = tiny.act(odd, json.loads(ex["meta"])["instruction"])
    assert act.kind in ("click", "type", "scroll")
    if act.x is not None:
        assert 0 <= act.x < 333 and 0 <= act.y < 250
    # a blank picture is no screen: the model may write no action, and then says so with what it wrote (never a
    # crash elsewhere, such as the IMG_PATCH token it once decoded and fed back without pixels)
    try:
        tiny.act(Image.new("LA", (333, 97), (120, 255)), "Click the OK button")
    except ActionParseError as e:
        assert "the model wrote" in str(e)


def test_bad_input_is_refused_clearly(tiny, dense):
    with pytest.raises(ValueError, match="instruction"):
        tiny.act(Image.new("RGB", (64, 64)), "  ")
    with pytest.raises(KeyError, match="known models"):
        msa_lab.load_model("msa-huge")
    with pytest.raises(ContextTooLong, match="204,800"):
        dense.engine._check_limit(300_000)


def test_prefill_is_chunked_and_reports_blocks(tiny):
    ex = next(iter(iter_task("niah_single", 1, 5, length=2048)))
    steps = list(tiny.prefill_steps(ex["prompt"], chunk_size=512))
    last = steps[-1]
    assert len(steps) == last.n_chunks == 4 and last.tokens_done == last.total_tokens == 2048
    assert last.last_selected.shape[-1] == tiny.config.top_k and last.selection_hist.sum() > 0


def test_niah_8k_is_answered(tiny):
    ex = next(iter(iter_task("niah_single", 1, 8, length=8192, depth=0.5)))
    pred = tiny.generate(ex["prompt"], max_new_tokens=40, chunk_size=4096)
    assert answer_ok(pred, ex["answer"]), f"answered {pred!r}, expected {ex['answer']!r}"
