"""SelectionMap driven through its controls' traitlets, on a small random model and on crafted Captures."""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ipywidgets", reason="widgets need ipywidgets: pip install 'msa-lab[lab]'")
pytest.importorskip("plotly", reason="widgets need plotly: pip install 'msa-lab[lab]'")

from msa_lab import viz  # noqa: E402
from msa_lab.api import Capture, Model  # noqa: E402
from msa_lab.model.config import small_config  # noqa: E402
from msa_lab.model.tokens import IMG_END, IMG_START  # noqa: E402
from msa_lab.widgets import SelectionMap  # noqa: E402
from msa_lab.widgets.selection_map import PROMPT_KINDS, jaccard, pick_states, target_picks  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# traces: 0 dynamic map, 1 forced map, 2 mass contours, 3 query picks, 4 row bars, 5 layer strip, 6 Jaccard, 7 recall
# shapes: 0 query row, 1-3 target (map, row, strip), 4 current layer on the strip, 5 (layer, group) on recall


@pytest.fixture(scope="module")
def model():
    return Model.from_config(small_config())  # block 8, top-4, init 1, local 2, 2 layers, 2 KV groups


@pytest.fixture
def sm(model):
    return SelectionMap(model, prompt="niah", length=512)


def arr(v):
    return np.array(v, dtype=float)


def same(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def crafted(n=64, layers=2, groups=2, block=8, mass=True, seed=0):
    """A causal selection for every row: init block, 2-block local window, one 'dynamic' pick (block 1)."""
    sel = np.full((groups, n, 4), -1, dtype=np.int32)
    for p in range(n):
        own = p // block
        picks = sorted({0, max(own - 1, 0), own} | ({1} if own >= 1 else set()))
        sel[:, p, :len(picks)] = picks
    selected = [sel.copy() for _ in range(layers)]
    nb = -(-n // block)
    block_mass = None
    if mass:
        rng = np.random.default_rng(seed)
        block_mass = []
        for _ in range(layers):
            m = rng.random((groups, n, nb)).astype(np.float32)
            m *= np.arange(nb)[None, None] <= (np.arange(n) // block)[None, :, None]
            block_mass.append(m / m.sum(-1, keepdims=True))
    ids = np.full(n, 65, dtype=np.int64)
    recall = np.full((layers, groups), 0.5, dtype=np.float32) if mass else None
    return Capture(["A"] * n, ids, block, 4, selected, block_mass, recall)


def test_first_render(sm):
    assert sm.capture is not None and len(sm.capture.ids) == 512
    assert sm.query.value == sm.query.max == 511  # the answer position
    assert sm.target is not None and "".join(sm.capture.tokens[slice(*sm.target)]).startswith("One of the special")
    assert "needle: tokens" in sm.message and "picked at the answer position" in sm.message
    assert arr(sm.figure.data[0].z).shape == (64, 64)  # 512 tokens / block 8
    assert arr(sm.figure.data[7].z).shape == (2, 2)  # recall [L, Hkv]
    assert arr(sm.figure.data[7].customdata).shape == (2, 2, 2)  # forced mass, picked recall per (l, g)
    assert "always-kept blocks" in sm.message and "indexer's own picks" in sm.message
    table = sm.target_table()
    np.testing.assert_allclose(table["forced mass"] + (1 - table["forced mass"]) * table["picked recall"],
                               table["recall"], atol=1e-5)
    assert sm.figure.layout.shapes[1].visible and sm.last_update_s > 0


def test_query_slider_moves_the_row_and_the_picks(sm):
    bars, strip, row = arr(sm.figure.data[4].y), arr(sm.figure.data[5].z), sm.figure.layout.shapes[0].y0
    map_z = arr(sm.figure.data[0].z)
    sm.query.value = 100
    assert not same(arr(sm.figure.data[4].y), bars)
    assert not same(arr(sm.figure.data[5].z), strip)
    assert sm.figure.layout.shapes[0].y0 != row == 63 - 0.5
    assert sm.figure.layout.shapes[0].y0 == 100 // 8 - 0.5
    assert same(arr(sm.figure.data[0].z), map_z)  # a query move leaves the map itself alone
    assert np.all(np.isnan(arr(sm.figure.data[5].z)[:, 100 // 8 + 1:]))  # blocks after its own are not visible
    assert "query 100:" in sm.message


def test_layer_and_group_change_the_map(sm):
    z0 = arr(sm.figure.data[0].z)
    sm.layer.value = 1
    z1 = arr(sm.figure.data[0].z)
    assert not same(z1, z0)
    assert sm.figure.layout.shapes[4].y0 == 0.5 and sm.figure.layout.shapes[5].y0 == 0.5
    sm.group.value = 1
    assert not same(arr(sm.figure.data[0].z), z1)
    assert sm.figure.layout.shapes[5].x0 == 0.5
    assert "layer 1, KV group 1" in sm.figure.layout.title.text


def test_overlay_toggle(sm):
    assert sm.figure.data[2].visible is not False
    sm.overlay.value = False
    assert sm.figure.data[2].visible is False
    sm.overlay.value = True
    assert sm.figure.data[2].visible is True and np.isfinite(arr(sm.figure.data[2].z)).any()


def test_needle_marking_on_a_crafted_capture(model):
    sm = SelectionMap(model, prompt="niah", length=512)
    cap = crafted()
    # the last query (block 7) reads 0, 1, 6, 7; make layer 0 group 0 pick the needle's block 3 instead of 1
    cap.selected[0][0, 63] = [0, 3, 6, 7]
    sm.show(cap, target=(26, 31))  # tokens 26..30 lie in block 3
    assert np.array_equal(target_picks(cap.selected, (26, 31), np.array([63]), 8), [[1, 0], [0, 0]])
    text = sm.figure.data[7].text
    assert "\u2713" in text[0][0] and all("\u2717" in text[l][g] for l, g in ((0, 1), (1, 0), (1, 1)))
    assert "by 1/4 (layer, group) pairs; here: yes" in sm.message and "key blocks 3;" in sm.message
    s = sm.figure.layout.shapes[1]
    assert (s.x0, s.x1) == (2.5, 3.5)  # one block per cell at 8 blocks
    colours = sm.figure.data[4].marker.color
    assert colours[3] == "#e6550d" and colours[1] == "#dddddd"  # block 3 picked by the indexer, block 1 not
    sm.group.value = 1
    assert "here: no" in sm.message
    # a target over two blocks counts as picked when either block is; several answer rows give a share
    sm.show(cap, target=(20, 34), answer_rows=[62, 63])
    got = target_picks(cap.selected, (20, 34), np.array([62, 63]), 8)
    assert np.array_equal(got, [[0.5, 0], [0, 0]])
    assert (sm.figure.layout.shapes[1].x0, sm.figure.layout.shapes[1].x1) == (1.5, 4.5)


def test_capture_without_dense_mass(model):
    sm = SelectionMap(model, prompt="niah", length=512)
    sm.show(crafted(mass=False))
    assert "no dense mass" in sm.figure.layout.annotations[4].text
    assert sm.figure.data[2].visible is False
    assert sm.figure.layout.yaxis2.title.text.startswith("picked")
    assert not sm.figure.layout.shapes[1].visible  # no target given
    assert "recall" not in sm.message


def test_pure_helpers():
    cfg = small_config().msa_config()
    st = pick_states(np.array([0, 3, 6, 7], dtype=np.int32), 63, 9, cfg)
    assert st.tolist() == [1, 0, 0, 2, 0, 0, 1, 1, -1]
    j = jaccard([{1, 2}, {2, 3}, set()])
    assert j[0, 1] == pytest.approx(1 / 3) and j[2, 2] != j[2, 2] and j[0, 2] == 0


def test_prompt_kinds_rerun_the_model(sm):
    before = sm.capture
    sm.prompt.value = "python"
    assert sm.capture is not before and sm.target is None
    assert not sm.figure.layout.shapes[1].visible  # no target in a plain file
    assert sm.message.startswith("Python:") and ".py (" in sm.message
    assert sm.progress.value == sm.progress.max > 1 and sm.progress.layout.visibility == "hidden"
    sm.prompt.value = "image"
    ids = sm.capture.ids
    assert ids[sm.target[0]] == IMG_START and ids[sm.target[1] - 1] == IMG_END
    assert "image: tokens" in sm.message
    sm.prompt.value = "gui"
    assert "screen: tokens" in sm.message
    sm.length.value = 1024
    assert len(sm.capture.ids) == pytest.approx(1024, abs=4)
    sm.prompt.value = "niah"
    sm.length.value = 512
    assert sm.capture is before  # cached: switching back does not rerun the model


def test_bad_input_errors(model):
    with pytest.raises(ValueError, match="valid kinds: niah, python, image, gui"):
        SelectionMap(model, prompt="pdf")
    assert list(PROMPT_KINDS) == ["niah", "python", "image", "gui"]
    with pytest.raises(ValueError, match=r"length must be an int of tokens in \[256"):
        SelectionMap(model, length=100)
    with pytest.raises(ValueError, match="out of range"):
        SelectionMap(model, length=512, layer=5)
    with pytest.raises(ValueError, match="dense attention"):
        SelectionMap(Model.from_config(small_config("dense")), length=512)
    sm = SelectionMap(model, length=512)
    bad = crafted(block=16)
    with pytest.raises(ValueError, match="block_size=16"):
        sm.show(bad)
    with pytest.raises(ValueError, match="target span"):
        sm.show(crafted(), target=(60, 90))
    with pytest.raises(ValueError, match="one per layer"):
        sm.show(crafted(layers=3))
    assert len(sm.capture.ids) == 512  # a rejected capture leaves the shown one in place


def test_long_capture_stays_bounded(model):
    sm = SelectionMap(model, prompt="niah", length=512)
    sm.show(crafted(n=1 << 16, mass=False))  # 8192 key blocks of 8
    z = arr(sm.figure.data[0].z)
    assert z.shape[0] <= 256 and z.shape[1] <= 256
    assert len(sm.figure.data[4].x) <= 256 and arr(sm.figure.data[5].z).shape[1] <= 256
    assert viz.payload_size(sm.figure) <= 2 * 3 * 256 * 256
    sm.query.value = 40_000
    assert sm.last_update_s < 2.0  # the benchmark holds the real 0.3 s target


def test_export_html_and_png(sm, tmp_path):
    text = open(sm.save_html(str(tmp_path / "a.html"))).read()
    assert "Plotly.newPlot" in text and "<script src=\"https://cdn" not in text
    sm.save_path.value = str(tmp_path / "b.html")
    sm.save_button.click()
    assert (tmp_path / "b.html").exists() and "saved" in sm.status.value
    sm.save_png_button.click()  # writes b.png, or says why not (kaleido needs a local Chromium)
    if (tmp_path / "b.png").exists():
        assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "kaleido" in sm.status.value


def test_trained_checkpoint_default(monkeypatch, torch_path_models):
    monkeypatch.delenv("MSA_LAB_CHECKPOINTS", raising=False)
    sm = SelectionMap(length=1024)
    assert sm.model.name == "msa-tiny" and sm.capture.recall.shape == (8, 2)
    assert "needle: tokens" in sm.message
