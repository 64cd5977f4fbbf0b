"""Images of any mode/size -> RGB patches with the scale reported; act() output -> original pixels."""
import numpy as np
import pytest
import torch
from PIL import Image

from msa_lab.api import ActionParseError, Model, parse_action
from msa_lab.model import prepare_image, small_config
from msa_lab.model.tokens import IMG_END, IMG_PATCH, IMG_START, decode, encode_prompt
from msa_lab.model.vision import patchify


def _grad(mode, w=30, h=20, hi=255):
    a = np.linspace(0, hi, w * h).reshape(h, w)
    return a


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "HSV", "I", "I;16", "F"])
@pytest.mark.parametrize("size", [(1, 1), (333, 7), (64, 64), (17, 200)])
def test_any_mode_any_size(mode, size):
    img = Image.new(mode, size)
    p = prepare_image(img, 32)
    assert p.pixels.shape == (3, 32, 32) and p.pixels.dtype == torch.uint8
    assert p.original_size == size and p.original_mode == mode
    assert p.scale == (size[0] / 32, size[1] / 32)
    assert ("resized" in p.conversion) == (size != (32, 32))


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert (prepare_image(img, 4).pixels == 255).all()
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    pal.info["transparency"] = 0
    p = prepare_image(pal, 4)
    assert (p.pixels == 255).all() and "P+transparency" in p.conversion


def test_high_bit_depth_is_rescaled_not_clipped():
    a = _grad("I;16", hi=65535).astype(np.uint16)
    p = prepare_image(Image.fromarray(a), 30)  # 30 x 20 -> 30 x 30: values interpolate but keep their range
    assert p.pixels.max() >= 250 and p.pixels.min() <= 5
    mid = prepare_image(Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)), 4).pixels
    assert (mid == 128).all()  # 32896 / 257 = 128: scaled, where clipping would give 255
    f = prepare_image(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)), 4)
    assert (f.pixels == 128).all() and "float [0, 1]" in f.conversion


def test_numpy_and_path_inputs(tmp_path):
    grey = np.zeros((10, 20), dtype=np.uint8)
    assert prepare_image(grey, 8).original_size == (20, 10)
    rgba = np.zeros((5, 6, 4), dtype=np.uint8)
    assert prepare_image(rgba, 8).original_mode == "RGBA"
    assert prepare_image(np.ones((3, 3, 3)), 3).pixels.min() == 255
    path = tmp_path / "x.png"
    Image.new("RGB", (9, 9), (1, 2, 3)).save(path)
    assert prepare_image(path, 9).pixels[:, 0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((3, 10, 10)), "transpose"),
    (np.full((4, 4), 2.0), "float images must lie in \\[0, 1\\]"),
    (np.zeros((4, 4), dtype=np.int64), "use uint8"),
    ("/nonexistent.png", "does not exist"),
    (42, "unsupported image type int"),
])
def test_bad_images(bad, msg):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=msg):
        prepare_image(bad, 8)


def test_patchify_layout():
    px = torch.zeros(3, 16, 16, dtype=torch.uint8)
    px[:, :8, 8:] = 255  # top-right patch white
    pt = patchify(px, 8)
    assert pt.shape == (4, 192)
    assert (pt[1] == 1).all() and (pt[[0, 2, 3]] == -1).all()


def test_encode_prompt_places_images():
    cfg = small_config()
    imgs = [Image.new("RGB", (5, 5)), Image.new("L", (7, 3))]
    enc = encode_prompt("A<image>B<image>C", imgs, image_size=cfg.image_size, patch_size=cfg.patch_size)
    ids = enc.ids.tolist()
    assert decode(ids) == "ABC"
    assert ids.count(IMG_START) == ids.count(IMG_END) == 2 and ids.count(IMG_PATCH) == 2 * cfg.patches_per_image
    assert ids.index(IMG_START) == 2  # BOS, "A", then the image
    assert enc.patch_slot.tolist() == list(range(cfg.patches_per_image)) * 2
    first = encode_prompt("no placeholder", imgs[:1], image_size=16, patch_size=8).ids.tolist()
    assert first[1] == IMG_START  # images go first without placeholders
    with pytest.raises(ValueError, match="2 '<image>' placeholders but 1 images"):
        encode_prompt("<image><image>", imgs[:1], image_size=16, patch_size=8)
    with pytest.raises(ValueError, match="prompt is empty"):
        encode_prompt("  ", None, image_size=16, patch_size=8)


# ---------------------------------------------------------------------------- actions
def test_parse_action_maps_to_original_pixels():
    p = prepare_image(Image.new("RGB", (640, 480)), 64)  # scale 10 x 7.5
    a = parse_action('{"kind": "click", "x": 10, "y": 20, "text": null, "direction": null}', p)
    assert (a.kind, a.x, a.y, a.model_xy, a.in_image) == ("click", 105, 153, (10, 20), True)
    assert p.to_model(a.x, a.y) == (10, 20)


@pytest.mark.parametrize("raw, want", [
    ("{'kind': 'type', 'x': 3, 'y': 4, 'text': 'hello', 'direction': None} trailing", ("type", "hello", None)),
    ('noise {"kind":"scroll","x":1,"y":2,"text":null,"direction":"down"', ("scroll", None, "down")),  # cut off
    ('"kind": "click", "x": 5, "y": 6 garbage', ("click", None, None)),  # no braces: field salvage
    ('{"kind":"click","x":5.6,"y":"6","text":null,"direction":null,}', ("click", None, None)),  # trailing comma
])
def test_parse_action_is_lenient(raw, want):
    a = parse_action(raw)
    assert (a.kind, a.text, a.direction) == want and a.raw == raw


@pytest.mark.parametrize("raw, msg", [
    ("I would click the button", "no action kind"),
    ('{"kind": "drag", "x": 1, "y": 2}', "no action kind"),
    ('{"kind": "click", "x": 1}', "a click needs integer x and y"),
    ('{"kind": "scroll", "x": 1, "y": 1, "direction": "left"}', "a scroll needs a direction"),
])
def test_parse_action_errors(raw, msg):
    with pytest.raises(ActionParseError, match=msg) as e:
        parse_action(raw)
    assert e.value.raw == raw


def test_act_uses_the_gui_prompt_and_maps_back(monkeypatch):
    m = Model.from_config(small_config("msa"))
    seen = {}

    def fake_generate(text, images=None, max_new_tokens=64, **kw):
        seen["text"], seen["images"] = text, images
        return '{"kind": "click", "x": 20, "y": 3, "text": null, "direction": null}'

    monkeypatch.setattr(m, "generate", fake_generate)
    img = Image.new("RGBA", (300, 100))
    act = m.act(img, "Click the 'OK' button")
    assert seen["text"] == "<image>\nClick the 'OK' button"  # the msa_lab.tasks GUI prompt format
    assert act.kind == "click" and act.model_xy == (20, 3)
    assert (act.x, act.y) == (int(20.5 * 300 / 16), int(3.5 * 100 / 16))  # image_size 16 in the small config
    assert act.in_image is False  # x=384 > 300: reported, not clamped
    with pytest.raises(ValueError, match="non-empty instruction"):
        m.act(img, " ")
