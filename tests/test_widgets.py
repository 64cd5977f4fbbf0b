"""MaskExplorer driven through its controls' traitlets (no browser needed)."""
import sys

import numpy as np
import pytest

pytest.importorskip("ipywidgets", reason="widgets need ipywidgets: pip install 'msa-lab[lab]'")
pytest.importorskip("plotly", reason="widgets need plotly: pip install 'msa-lab[lab]'")

from msa_lab import cost, viz  # noqa: E402
from msa_lab.widgets import MaskExplorer  # noqa: E402


@pytest.fixture
def ex():
    return MaskExplorer(seq_len=4096, rows=64)


def z(ex, i=0):
    return np.array(ex.figure.data[i].z, dtype=float)


def same(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def test_first_render(ex):
    assert not ex.message.startswith("Not updated")
    assert ex.last_update_s > 0
    assert "4,096 tokens" in ex.message and "needles found" in ex.message
    cfg = ex.config()
    assert (cfg.block_size, cfg.top_k, cfg.init_blocks, cfg.local_blocks) == (128, 16, 1, 1)  # m3 pattern
    dense = next(tr for tr in ex.figure.data if tr.name == "dense")
    assert len(dense.x) == 100
    assert ex.figure.layout.shapes[0].x0 == 4096


def test_top_k_changes_the_selection_not_the_data(ex):
    before = z(ex)
    scores_before = list(ex._scores)
    ex.top_k.value = 4
    assert not same(z(ex), before)
    assert list(ex._scores) == scores_before  # only the top-k was redone
    assert np.nansum(z(ex)) < np.nansum(before)  # fewer dynamic picks
    assert "top-4" in ex.figure.layout.title.text


def test_seq_len_changes_grid_and_cost_marker(ex):
    before = z(ex)
    ex.seq_len.value = 1 << 14
    assert z(ex).shape != before.shape  # 32 -> 128 blocks
    assert ex.figure.layout.shapes[0].x0 == 1 << 14
    assert "16,384 tokens" in ex.message
    ratio = cost.token_cost(ex.config(), 1 << 14).ratio
    assert f"{ratio:.1f}x fewer" in ex.figure.layout.title.text


def test_data_and_group_change_the_figure(ex):
    ex.seq_len.value = 1 << 14
    structured = z(ex)
    ex.group.value = 1
    group1 = z(ex)
    assert not same(group1, structured)
    ex.data.value = "random"
    assert not same(z(ex), group1)
    assert "needles" not in ex.message and "needles" not in ex.figure.layout.title.text


def test_block_size_and_pattern_controls(ex):
    ex.block_size.value = 64
    assert z(ex).shape[1] == 4096 // 64
    ex.local_blocks.value = 3
    forced = z(ex, 1)
    assert np.sum(~np.isnan(forced[-1])) == 1 + 3  # last query row: init block + 3-block local window


def test_bad_values_show_a_message_and_keep_the_figure(ex):
    before = z(ex)
    ex.top_k.value = 0
    assert "Not updated" in ex.status.value and "top_k" in ex.message
    assert same(z(ex), before)
    ex.top_k.value = 16
    ex.init_blocks.value = 10
    ex.local_blocks.value = 10
    assert "Not updated" in ex.status.value and "init_blocks + local_blocks" in ex.message
    ex.init_blocks.value, ex.local_blocks.value = 1, 1
    ex.rows.value = -3
    assert "sampled rows" in ex.message
    ex.rows.value = 32
    assert "Not updated" not in ex.status.value and "32 sampled query rows" in ex.message


def test_preset_change_sets_the_groups(ex):
    ex.group.value = 3
    ex.preset.value = "tiny"
    assert list(ex.group.options) == [0, 1] and ex.group.value == 0
    assert "tiny shapes" in ex.message


def test_million_tokens_stay_bounded():
    ex = MaskExplorer(seq_len=1 << 20, rows=16)
    assert not ex.message.startswith("Not updated")
    assert z(ex).shape == (16, 256)  # 16 sampled rows; 8192 key blocks binned by 32
    assert viz.payload_size(ex.figure) <= 2 * (256 * 256 + 512) + 4 * 2 * 100


def test_save_html_from_call_and_button(ex, tmp_path):
    path = ex.save_html(str(tmp_path / "a.html"))
    text = open(path).read()
    assert "Plotly.newPlot" in text and "<script src=\"https://cdn" not in text  # self-contained
    ex.save_path.value = str(tmp_path / "b.html")
    ex.save_button.click()
    assert (tmp_path / "b.html").exists() and "saved" in ex.status.value
    ex.save_path.value = str(tmp_path / "missing" / "c.html")
    ex.save_button.click()
    assert "could not save" in ex.status.value


def test_constructor_rejects_off_scale_lengths():
    with pytest.raises(ValueError, match="power of two"):
        MaskExplorer(seq_len=5000)


def test_displayable(ex):
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_missing_ipywidgets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    monkeypatch.delitem(sys.modules, "msa_lab.widgets.mask_explorer")
    with pytest.raises(ImportError, match=r"pip install 'msa-lab\[lab\]'"):
        import msa_lab.widgets.mask_explorer  # noqa: F401
