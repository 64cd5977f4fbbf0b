"""GUI screens: target boxes inside the image, the action point inside the target, unambiguous instructions."""
import json

import pytest

from msa_lab.tasks import iter_gui
from msa_lab.tasks.draw import overlaps
from msa_lab.tasks.gui import THEMES

KIND_OF_ACTION = {"button": "click", "menu": "click", "icon": "click", "checkbox": "click", "close": "click",
                  "field": "type", "list": "scroll"}


@pytest.fixture(scope="module")
def screens():
    return list(iter_gui(40, 0, min_width=360, max_width=720, min_height=260, max_height=520))


def test_gui_boxes_inside_and_point_inside_target(screens):
    for ex in screens:
        meta, (img,) = json.loads(ex["meta"]), ex["images"]
        w, h = meta["size"]
        assert img.size == (w, h) and 360 <= w <= 720 and 260 <= h <= 520
        for e in meta["elements"]:
            x0, y0, x1, y1 = e["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        x0, y0, x1, y1 = meta["box"]
        act = json.loads(ex["answer"])
        assert set(act) == {"kind", "x", "y", "text", "direction"}
        assert x0 <= act["x"] < x1 and y0 <= act["y"] < y1
        target = meta["elements"][meta["target_index"]]
        assert target["box"] == meta["box"] and not target["occluded"]
        assert act["kind"] == KIND_OF_ACTION[target["kind"]]
        assert (act["text"] is not None) == (act["kind"] == "type")
        assert (act["direction"] in ("up", "down")) == (act["kind"] == "scroll")
        # something is drawn in the target box (not a blank patch)
        assert len(set(img.crop(tuple(meta["box"])).get_flattened_data())) > 1


def test_gui_instruction_names_a_single_visible_target(screens):
    qualified = 0
    for ex in screens:
        meta = json.loads(ex["meta"])
        target, instr = meta["elements"][meta["target_index"]], meta["instruction"]
        assert ex["prompt"] == "<image>\n" + instr
        assert f"'{target['label']}'" in instr or f"the {target['label']} list" in instr
        twins = [e for e in meta["elements"] if e["kind"] == target["kind"] and e["label"] == target["label"]]
        if len(twins) > 1:
            assert len({e["window"] for e in twins}) == len(twins)  # duplicates only across windows
            assert ("in the dialog" if target["window"] == "dialog" else "in the main window") in instr
            qualified += 1
        if meta["dialog"] and target["window"] == "main":
            assert not overlaps(target["box"], meta["dialog"])
        act = json.loads(ex["answer"])
        if act["kind"] == "type":
            assert f"Type '{act['text']}'" in instr
        if act["kind"] == "scroll":
            s = target["scroll"]
            assert (s["offset"] > 0) if act["direction"] == "up" else (s["offset"] + s["visible"] < s["total"])
    assert qualified > 0, "no duplicate-label instruction in 40 screens: the disambiguation path is untested"


def test_gui_varies_themes_actions_and_sizes(screens):
    metas = [json.loads(ex["meta"]) for ex in screens]
    assert len({m["theme"]["name"] for m in metas}) >= 3
    assert {json.loads(ex["answer"])["kind"] for ex in screens} == {"click", "type", "scroll"}
    assert len({tuple(m["size"]) for m in metas}) > 20
    assert any(m["dialog"] for m in metas) and not all(m["dialog"] for m in metas)


def test_gui_action_and_theme_filters():
    for ex in iter_gui(6, 1, actions=["scroll"], themes=["dark"]):
        meta = json.loads(ex["meta"])
        assert json.loads(ex["answer"])["kind"] == "scroll" and meta["theme"]["name"] == "dark"
        assert meta["theme"]["window"] == list(THEMES["dark"].window)


def test_gui_deterministic(screens):
    again = list(iter_gui(3, 0, min_width=360, max_width=720, min_height=260, max_height=520))
    assert [(a["answer"], a["meta"], a["images"][0].tobytes()) for a in again] == [
        (b["answer"], b["meta"], b["images"][0].tobytes()) for b in screens[:3]
    ]
    other = list(iter_gui(3, 1, min_width=360, max_width=720, min_height=260, max_height=520))
    assert [a["meta"] for a in other] != [b["meta"] for b in screens[:3]]


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(actions=["drag"]), "actions"),
        (dict(themes=["neon"]), "themes"),
        (dict(min_width=100), "min_width"),
        (dict(min_height=500, max_height=300), "swap"),
        (dict(dialog_prob=1.5), "dialog_prob"),
    ],
)
def test_gui_bad_options_raise(opts, match):
    with pytest.raises(ValueError, match=match):
        iter_gui(1, 0, **opts)
