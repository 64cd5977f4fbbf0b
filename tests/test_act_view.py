"""ActView / QAView driven through their traitlets, and the drawing and pick helpers they stand on.

The widget logic is tested on a small random model (Model.from_config); where a test needs a
definite action, the model's text output is fixed (``model.generate`` replaced), so the rest of the
path runs for real: upload decoding, prepare_image (mode conversion, resize), parse_action and the
mapping back to original pixels, and the drawing.
"""
import datetime
import io
import json

import numpy as np
import pytest

pytest.importorskip("ipywidgets", reason="widgets need ipywidgets: pip install 'msa-lab[lab]'")
pytest.importorskip("plotly", reason="widgets need plotly: pip install 'msa-lab[lab]'")
from PIL import Image  # noqa: E402

from msa_lab.api import Action, Capture, Model  # noqa: E402
from msa_lab.model.config import small_config  # noqa: E402
from msa_lab.model.tokens import encode_prompt  # noqa: E402
from msa_lab.model.vision import prepare_image  # noqa: E402
from msa_lab.widgets.act_view import (  # noqa: E402
    ActView, QAView, UploadError, action_traces, patch_picks, read_upload,
)

BOX, CLICK, TYPE, SCROLL, TRUTH = range(5)  # ActView's fixed trace order


@pytest.fixture(scope="module")
def model():
    return Model.from_config(small_config(), seed=0)  # image_size 16, patch 8: a 2x2 patch grid


@pytest.fixture
def fixed(model, monkeypatch):
    """Make the model write ``fixed.text`` (a JSON action) instead of generating."""
    class Out:
        text = '{"kind": "click", "x": 15, "y": 0}'
        calls = 0

    def generate(*args, **kwargs):
        Out.calls += 1
        return Out.text

    monkeypatch.setattr(model, "generate", generate)
    return Out


def xy(trace):
    return list(trace.x or ()), list(trace.y or ())


def png_bytes(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def upload_value(data, name):
    return ({"name": name, "type": "", "size": len(data), "content": memoryview(data),
             "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)


# ---------------------------------------------------------------------------- driving ActView
def test_seed_slider_and_new_screen_button_change_the_screen(model):
    v = ActView(model, seed=0)
    src0, box0, truth0 = v.figure.layout.images[0].source, xy(v.figure.data[BOX]), xy(v.figure.data[TRUTH])
    assert len(box0[0]) == 5 and len(truth0[0]) == 1  # generated screens carry the target box and true point
    v.seed.value = 1
    assert v.figure.layout.images[0].source != src0
    assert xy(v.figure.data[BOX]) != box0
    assert v.instruction.value == v.meta["instruction"]  # the new screen's own instruction
    assert v.figure.layout.xaxis.range == (0, v.meta["size"][0])  # axes in the screen's own pixels
    v.new_screen.click()
    assert v.seed.value == 2 and "seed 2" in v.message


def test_act_button_draws_the_models_action(model, fixed):
    v = ActView(model, seed=4)
    assert not xy(v.figure.data[CLICK])[0]
    v.instruction.value = "Click the 'OK' button"
    v.act_button.click()
    assert fixed.calls == 1
    prepared = prepare_image(v.image, model.config.image_size)
    want = prepared.to_original(15, 0)
    assert (v.action.x, v.action.y) == want
    assert xy(v.figure.data[CLICK]) == ([want[0]], [want[1]])
    assert "OK" in v.figure.layout.title.text and f"at ({want[0]}, {want[1]})" in v.figure.layout.title.text
    assert "target box" in v.message  # inside / misses, for a generated screen


def test_noise_from_an_untrained_model_is_reported_not_raised(model):
    v = ActView(model, seed=2, max_new_tokens=12)
    v.act_button.click()
    drawn = [xy(v.figure.data[i])[0] for i in (CLICK, TYPE, SCROLL)]
    if v.action is None:  # the usual case: random weights write no JSON
        assert "not an action" in v.message and not any(drawn)
    else:
        assert any(drawn)
    assert v.progress.layout.visibility == "hidden"


def test_unreadable_output_clears_the_old_action_and_says_what_the_model_wrote(model, fixed):
    v = ActView(model, seed=2)
    v.draw(Action("click", 10, 10))
    fixed.text = "hello world"
    v.act()
    assert v.action is None and "not an action" in v.message and "hello world" in v.message
    assert "no action" in v.figure.layout.title.text
    assert not any(xy(v.figure.data[i])[0] for i in (CLICK, TYPE, SCROLL))
    assert v.progress.layout.visibility == "hidden"


def test_empty_instruction_is_a_clear_error_and_runs_nothing(model, fixed):
    v = ActView(model, seed=0)
    before = v.figure.to_dict()["data"]
    v.instruction.value = "   "
    v.act_button.click()
    assert fixed.calls == 0
    assert "type an instruction" in v.message and "Error" in v.status.value
    assert v.figure.to_dict()["data"] == before


# ---------------------------------------------------------------------------- drawing each action kind
def test_click_is_drawn_at_its_point_and_nothing_else():
    tr = action_traces(Action("click", 120, 45), (400, 300), box=[100, 30, 150, 60])
    assert xy(tr[CLICK]) == ([120], [45]) and "click (120, 45)" in tr[CLICK].text[0]
    assert xy(tr[BOX]) == ([100, 150, 150, 100, 100], [30, 30, 60, 60, 30])
    assert not xy(tr[TYPE])[0] and not xy(tr[SCROLL])[0] and not xy(tr[TRUTH])[0]


def test_type_shows_the_text_at_its_point_or_in_the_corner():
    tr = action_traces(Action("type", 50, 60, text="hello"), (400, 300))
    assert xy(tr[TYPE]) == ([50], [60]) and "hello" in tr[TYPE].text[0]
    assert not xy(tr[CLICK])[0]
    corner = action_traces(Action("type", text="bye"), (400, 300))[TYPE]
    assert corner.x[0] < 40 and corner.y[0] < 40 and "bye" in corner.text[0]


@pytest.mark.parametrize("direction,sign", [("down", 1), ("up", -1)])
def test_scroll_arrow_points_the_right_way(direction, sign):
    tr = action_traces(Action("scroll", 200, 150, direction=direction), (400, 300))[SCROLL]
    (x0, x1), (y0, y1) = tr.x, tr.y
    assert (x0, y0) == (200, 150) and x1 == 200
    assert np.sign(y1 - y0) == sign  # y grows downwards on a screen, and on the reversed axis
    assert tr.marker.symbol[1] == "arrow" and direction in tr.name


def test_draw_updates_the_widget_for_each_kind(model):
    v = ActView(model, seed=0)
    seen = []
    for act in (Action("click", 10, 20), Action("type", 30, 40, text="abc"), Action("scroll", 50, 60,
                                                                                       direction="up")):
        v.draw(act)
        seen.append([xy(v.figure.data[i]) for i in (CLICK, TYPE, SCROLL)])
        assert act.kind in v.message
    assert seen[0][0] == ([10], [20]) and not seen[0][1][0]
    assert seen[1][1] == ([30], [40]) and not seen[1][0][0]
    assert seen[2][2][0] == [50, 50] and not seen[2][0][0]


# ---------------------------------------------------------------------------- uploads
@pytest.mark.parametrize("mode,fmt", [("LA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("L", "WEBP")])
def test_upload_of_any_mode_and_odd_size_maps_back_to_original_pixels(model, fixed, mode, fmt):
    w, h = 333, 97
    img = Image.new(mode, (w, h))
    data = png_bytes(img, fmt)
    v = ActView(model, seed=0)
    v.upload.value = upload_value(data, f"shot.{fmt.lower()}")
    assert v.image.size == (w, h) and v.meta is None and "Error" not in v.status.value
    assert v.figure.layout.xaxis.range == (0, w) and v.figure.layout.yaxis.range == (h, 0)
    assert not xy(v.figure.data[BOX])[0]  # no target box for an upload
    v.instruction.value = "Click the top right corner"
    v.act()
    # model pixel (15, 0) of the 16x16 resize -> centre of that cell in the 333x97 original
    want = (int(15.5 * w / 16), int(0.5 * h / 16))
    assert (v.action.x, v.action.y) == want == (322, 3) and v.action.in_image
    assert xy(v.figure.data[CLICK]) == ([322], [3])


def test_bad_uploads_name_the_accepted_formats(model, fixed):
    v = ActView(model, seed=0)
    src = v.figure.layout.images[0].source
    v.upload.value = upload_value(b"this is not an image", "notes.txt")
    assert "notes.txt" in v.message and "PNG, JPEG" in v.message and "WebP" in v.message
    assert v.figure.layout.images[0].source == src  # the previous screen stays
    v.upload.value = upload_value(png_bytes(Image.new("RGB", (20, 20)), "GIF"), "anim.gif")
    assert "GIF" in v.message and "accepted formats" in v.message
    with pytest.raises(UploadError, match="empty"):
        read_upload(b"", "x.png")
    with pytest.raises(UploadError, match="nothing was uploaded"):
        read_upload(())
    truncated = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60]
    with pytest.raises(UploadError, match="accepted formats"):
        read_upload(truncated, "cut.png")


# ---------------------------------------------------------------------------- export
def test_export_html_from_the_button_and_png_from_a_call(model, tmp_path):
    v = ActView(model, seed=0)
    v.draw(Action("click", 10, 10))
    v.save_path.value = str(tmp_path / "act.html")
    v.save_html_button.click()
    text = (tmp_path / "act.html").read_text()
    assert "plotly" in text and "data:image/png;base64" in text and "saved" in v.status.value
    try:
        v.save_png(str(tmp_path / "act.png"))
    except RuntimeError as e:
        pytest.skip(f"PNG export needs kaleido and Chromium here: {e}")
    assert (tmp_path / "act.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- indexer picks
def test_patch_picks_maps_block_shares_onto_the_patch_grid():
    cfg = small_config()
    enc = encode_prompt("<image><image>\nWhich?", [Image.new("RGB", (16, 16))] * 2, image_size=16, patch_size=8)
    # BOS, [START, 4 patches, END] x 2, "\nWhich?" (7), SEP: 21 tokens; patches at 2-5 and 8-11
    bs, n = 4, len(enc)
    assert n == 21
    q0 = 13  # after the last IMG_END (position 12)
    sel = np.full((cfg.n_kv_heads, n, 2), -1, dtype=np.int32)
    sel[:, q0:, 0] = 2  # every answer query picks block 2 (tokens 8-11: image 2's patches)
    sel[0, q0:, 1] = 1  # group 0 also picks block 1 (tokens 4-7: image 1's last two patches)
    cap = Capture(["?"] * n, enc.ids.numpy(), bs, 2, [sel], None, None)
    p = patch_picks(cap, enc, 2, init_blocks=1, local_blocks=1)
    assert p.queries == (q0, n)
    np.testing.assert_allclose(p.block_freq, [0, 0.5, 1, 0, 0, 0])
    np.testing.assert_allclose(p.grids[0], [[0, 0], [0.5, 0.5]])  # patches 0,1 in block 0; 2,3 in block 1
    np.testing.assert_allclose(p.grids[1], [[1, 1], [1, 1]])
    assert p.grid_blocks[1].tolist() == [[2, 2], [2, 2]]
    np.testing.assert_allclose(p.block_image, [0.5, 0.5, 1, 0, 0, 0])
    assert p.block_forced[0] == 1 and p.block_forced[2] == 0  # init block; block 2 is never local here
    assert p.block_forced[5] == 1  # the last block is the local window of the queries in it
    assert not p.trivial


def test_qa_view_video_seed_ask_picks_and_layer(model, fixed):
    q = QAView(model, task="video", frames=3, seed=0)
    src = [im.source for im in q.figure.layout.images]
    assert len(src) == 3 and "press Ask" in q.message
    q.seed.value = 5
    assert [im.source for im in q.figure.layout.images] != src
    truth = int(q.example["answer"])
    fixed.text = f"{truth}"
    q.ask_button.click()
    assert q.correct and "correct" in q.message
    assert any(tr.name == f"model: frame {truth}" for tr in q.figure.data)
    q.picks.value = True  # captures once, then draws
    heat = [tr for tr in q.figure.data if tr.type == "heatmap"]
    bars = [tr for tr in q.figure.data if tr.type == "bar"]
    assert len(heat) == 3 and len(bars) == 1 and "blocks of" in q.message
    assert len(bars[0].y) == -(-len(model.encode(q.example["prompt"], q.example["images"])) // 8)
    q.layer.value = 1
    assert q.picks_result.layer == 1 and "layer 1" in q.message
    q.frames.value = 4
    assert len(q.figure.layout.images) == 4 and q.answer is None


def test_qa_view_image_qa_answer_against_truth(model, fixed):
    q = QAView(model, task="image_qa", seed=3)
    fixed.text = "definitely not it"
    q.ask()
    assert q.correct is False and "wrong" in q.message and q.example["answer"] in q.message
    q.task.value = "video"
    assert q.example["task"] == "video" and q.frames.layout.display is None


def test_dense_model_says_it_has_no_picks():
    dense = Model.from_config(small_config("dense"), seed=0)
    v = ActView(dense, seed=0, show_picks=True)
    assert "dense" in v.message and not [tr for tr in v.figure.data if tr.type == "heatmap"]


def test_act_view_picks_overlay_the_screen(model):
    v = ActView(model, seed=1, show_picks=True)
    assert v.picks_result is not None and "blocks of 8" in v.message
    heat = [tr for tr in v.figure.data if tr.type == "heatmap"]
    assert len(heat) == (0 if v.picks_result.trivial else 1)
    if heat:
        assert np.array(heat[0].z).shape == (2, 2)
        assert max(heat[0].x) < v.image.size[0] and max(heat[0].y) < v.image.size[1]  # original pixels
    json.dumps(v.figure.to_dict(), default=str)  # serialisable for the browser
