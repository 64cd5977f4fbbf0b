"""PrefillStepper driven through its buttons and controls (no browser needed).

The widget logic is tested on small random models (Model.from_config(small_config(...))): what is
checked is that Step / Run / Pause / Reset change or clear the figure's data, that the answer comes
from the prefilled cache, and that bad controls give clear errors. The shipped checkpoint is used
from data/checkpoints/msa-tiny.safetensors (committed; the test fails if it is missing).
"""
import asyncio
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ipywidgets", reason="widgets need ipywidgets: pip install 'msa-lab[lab]'")
pytest.importorskip("plotly", reason="widgets need plotly: pip install 'msa-lab[lab]'")

from msa_lab.api import Model  # noqa: E402
from msa_lab.model.config import small_config  # noqa: E402
from msa_lab.widgets import PrefillStepper  # noqa: E402
from msa_lab.widgets.prefill_stepper import (  # noqa: E402
    MIN_LENGTH, _visible_block_pairs, answer_from_cache, niah_document, prefill_flops)

N, CHUNK = 512, 128  # 4 chunks of a 512-token document; blocks of 8 in small_config


@pytest.fixture(scope="module")
def model():
    return Model.from_config(small_config(), seed=0)


@pytest.fixture(scope="module")
def dense():
    return Model.from_config(small_config("dense"), seed=1)


@pytest.fixture
def st(model):
    return PrefillStepper(model, N, CHUNK, torch_threads=1)


def ys(st, key):
    return list(st.figure.data[st._tr[key]].y or ())


def test_cpu_defaults_and_note(model):
    s = PrefillStepper(model)
    assert (s.target_length.value, s.chunk_size.value) == (16384, 1024)
    assert "No CUDA GPU" in s.note.value and "1,048,576" in s.note.value
    assert s.message.startswith("ready: 16,384 tokens")


def test_step_button_changes_every_panel(st):
    assert ys(st, "ms") == [] and st.progress.value == 0
    assert st.figure.data[st._tr["heat"]].z is None
    st.step_button.click()
    assert len(st.records) == 1 and st.records[0].tokens_done == CHUNK
    assert len(ys(st, "ms")) == 1 and ys(st, "ms")[0] > 0
    assert len(ys(st, "tps")) == 1 and len(ys(st, "alloc")) == 1 and len(ys(st, "peak")) == 1
    assert len(ys(st, "dens_mean")) == 1 and 0 < ys(st, "dens_mean")[0] <= 1
    heat1 = np.array(st.figure.data[st._tr["heat"]].z, dtype=float)
    assert heat1.shape[0] == 2 * 2 and np.nansum(heat1) > 0  # layers x groups rows
    needle = st.figure.data[st._tr["needle"]]
    assert list(needle.y) == ["L0 g0", "L1 g1"] and needle.x[0] == needle.x[1]
    assert len(ys(st, "msa_meas")) == 1
    assert st.progress.value == CHUNK and st.progress.description == "25%"
    assert "128 / 512 tokens" in st.figure.layout.title.text
    st.step_button.click()
    assert ys(st, "ms")[1] > 0 and list(st.figure.data[st._tr["ms"]].x) == [CHUNK, 2 * CHUNK]
    assert len(st.figure.data[st._tr["msa_proj"]].x) > 1  # projected from the last point to the target
    assert st.figure.data[st._tr["msa_proj"]].x[-1] == N


def test_density_matches_a_direct_count(st, model):
    st.step(2)
    cfg = model.config
    # early queries see fewer than top_k blocks: they read all of them (density 1); later ones top_k of many
    visible = sum(p // cfg.block_size + 1 for p in range(2 * CHUNK))
    picks = sum(min(cfg.top_k, p // cfg.block_size + 1) for p in range(2 * CHUNK))
    np.testing.assert_allclose(st.records[-1].density, picks / visible, rtol=1e-6)
    assert all(_visible_block_pairs(n, 8) == sum(p // 8 + 1 for p in range(n)) for n in (0, 1, 7, 8, 9, 100))


def test_reset_clears_figure_records_and_answer(st):
    st.run_to_end()
    assert st.done and st.answer is not None and st.answer_box.value
    st.reset_button.click()
    assert st.records == [] and st.answer is None and st.answer_box.value == ""
    for key in ("ms", "tps", "alloc", "peak", "dens_mean", "msa_meas", "msa_proj"):
        assert ys(st, key) == [], key
    assert st.progress.value == 0 and st.model.engine.last_cache is None
    st.step()  # and it starts over from token 0
    assert st.records[0].tokens_done == CHUNK


def test_run_to_end_answers_from_the_cache(st, model):
    ans = st.run_to_end()
    assert st.done and [r.tokens_done for r in st.records] == [128, 256, 384, 512]
    prompt, enc, needle = st._document()
    assert len(enc) == N
    # the needle's tokens are where the widget says (token = byte + 1 for BOS)
    assert bytes(enc.ids[needle.tokens[0]:needle.tokens[1]].tolist()).decode().startswith("One of the special magic")
    assert ans.needle_blocks == needle.blocks and needle.value_block in needle.blocks
    L, G = model.config.n_layers, model.config.n_kv_heads
    assert ans.picked.shape == (L, G) and ans.picked_at_sep.shape == (L, G)
    assert "Selected by the answer positions?" in st.answer_box.value
    assert st.summary()["answer"]["expected"] == needle.value
    st.step_button.click()  # past the end: nothing happens, and the status says so
    assert len(st.records) == 4 and "done" in st.message


def test_answer_from_cache_equals_a_fresh_generate(model):
    prompt, _ = niah_document(300, model.config.block_size)
    enc = model.encode(prompt)
    ref = model.engine.generate_ids(enc, 6, chunk_size=64)
    cache, logits = model.engine.prefill(enc, 64, extra_tokens=6)
    ids, sels = answer_from_cache(model.engine, cache, logits, 6)
    assert ids == [t for t in ref.ids]
    assert all(s.shape == (model.config.n_layers, model.config.n_kv_heads, model.config.top_k) for s in sels)


@pytest.mark.parametrize("target,chunk,needle", [
    (N, N + 1, "chunk size 513 is larger than the target length"),
    (N, 0, "chunk size must be a positive int"),
    (N, 12.5, "chunk size must be a positive int"),
    (100, 64, f"target length must be an int >= {MIN_LENGTH}"),
])
def test_bad_lengths_raise_clear_errors(model, target, chunk, needle):
    with pytest.raises(ValueError, match=needle):
        PrefillStepper(model, target, chunk)


def test_bad_control_values_show_an_error_and_step_does_nothing(st):
    st.step()
    st.chunk_size.value = 100_000
    assert "larger than the target length" in st.message and "Not run" in st.status.value
    assert len(st.records) == 1  # the invalid value did not reset the run
    st.target_length.value = 10
    assert f">= {MIN_LENGTH}" in st.message
    st.step_button.click()
    assert "Not run" in st.status.value
    st.target_length.value = 256  # valid again: a new length is a new prefill
    st.chunk_size.value = 64
    assert st.records == [] and st.message.startswith("ready: 256 tokens in chunks of 64")
    st.step()
    assert st.records[0].tokens_done == 64


def test_memory_limit_is_checked_up_front():
    m = Model.from_config(small_config(max_context=400))
    with pytest.raises(ValueError, match="hard limit of 400"):
        PrefillStepper(m, 512, 128)


def test_run_is_a_task_that_pause_stops(model):
    s = PrefillStepper(model, 1024, 64, torch_threads=1)

    async def drive():
        task = s.run()
        assert isinstance(task, asyncio.Task) and s.running
        while len(s.records) < 2:  # the loop yields between chunks: this coroutine gets turns
            await asyncio.sleep(0)
        s.pause_button.click()
        await task
        return len(s.records)

    n = asyncio.run(drive())
    assert 2 <= n < 16 and not s.done and not s.running
    assert "paused at" in s.message
    assert len(ys(s, "ms")) == n  # the pause redrew everything recorded
    s.step()
    assert len(s.records) == n + 1  # Step resumes where the run stopped


def test_run_redraws_are_batched(model):
    s = PrefillStepper(model, N, 32, redraw_every_s=1e9, auto_answer=False, torch_threads=1)
    before = s.redraws
    s.run_to_end()
    assert len(s.records) == N // 32
    assert s.redraws - before == 1  # one redraw at the end, not one per chunk
    s.reset()
    s2 = PrefillStepper(model, N, 32, redraw_every_s=1e9, redraw_every_chunks=4, auto_answer=False)
    before = s2.redraws
    s2.run_to_end()
    assert s2.redraws - before == N // 32 // 4 + 1


def test_run_redraws_stay_within_their_budget(model):
    """A redraw that costs more than redraw_budget of its interval stretches the interval: with a 0 s
    interval every chunk would redraw, but a (simulated) 10 s redraw at a 2% budget allows none until
    500 s have passed, so only the final redraw comes."""
    s = PrefillStepper(model, N, 32, redraw_every_s=0.0, auto_answer=False, torch_threads=1)
    s._last_redraw_cost = 10.0
    before = s.redraws
    s.run_to_end()
    assert s.redraws - before == 1
    s2 = PrefillStepper(model, N, 32, redraw_every_s=0.0, auto_answer=False, torch_threads=1)
    before = s2.redraws
    s2.step()
    s2._last_redraw_cost = 0.0  # as if Step's redraw were free: with a 0 s interval the next one is due
    s2._maybe_redraw()
    assert s2.redraws - before == 2
    with pytest.raises(ValueError, match="redraw_budget"):
        PrefillStepper(model, N, 32, redraw_budget=0)


def test_measure_dense_draws_measured_and_projected(model, dense):
    s = PrefillStepper(model, N, CHUNK, dense_model=dense, dense_lengths=(128, 256, 10**6), torch_threads=1)
    pts = s.measure_dense()
    assert [n for n, _ in pts] == [128, 256]  # 10**6 is longer than the document: skipped
    assert all(t > 0 for _, t in pts)
    assert list(s.figure.data[s._tr["dense_meas"]].x) == [128, 256]
    proj = s.figure.data[s._tr["dense_proj"]]
    assert proj.x[0] == 256 and proj.x[-1] == N and proj.y[-1] > proj.y[0]
    assert proj.line.dash == "dash" and s.figure.data[s._tr["dense_meas"]].mode == "markers"
    assert "dense measured" in s.message


def test_measure_dense_without_a_dense_model_says_what_to_pass(st):
    assert st.dense_button.disabled
    with pytest.raises(ValueError, match="dense-200k"):
        st.measure_dense()


def test_cost_projection_uses_msa_lab_cost(model):
    from msa_lab import cost
    cfg = model.config
    n = 4096
    attn = cost.request_flops(cfg.msa_config(), n, 0)
    lin = prefill_flops(model, n, "dense") - attn["dense"] * cfg.n_layers
    assert lin == pytest.approx(prefill_flops(model, n, "msa") - attn["msa"] * cfg.n_layers)
    assert prefill_flops(model, 8 * n, "dense") / prefill_flops(model, n, "dense") > \
        prefill_flops(model, 8 * n, "msa") / prefill_flops(model, n, "msa")


def test_save_html(st, tmp_path):
    st.step()
    path = st.save_html(str(tmp_path / "stepper.html"))
    text = Path(path).read_text()
    assert "ms per chunk" in text and "plotly" in text


def test_trained_msa_tiny_finds_the_needle(torch_path_models):
    from msa_lab import load_model

    s = PrefillStepper(load_model("msa-tiny"), 4096, 1024, torch_threads=1)
    ans = s.run_to_end()
    assert ans.correct, f"msa-tiny answered {ans.text!r}, expected {ans.expected!r}"
    assert ans.picked_at_sep.any(), "no layer's answer position selected the needle's block"
