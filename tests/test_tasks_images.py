"""Image QA and video-frame needle: answers agree with what was drawn."""
import json

import pytest

from msa_lab.tasks import iter_image_qa, iter_video
from msa_lab.tasks.draw import COLOURS, PLURALS, centre, overlaps


def _inside(box, size):
    return 0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1]


def _colours_in(img, box):
    return set(img.crop(tuple(box)).get_flattened_data())


def _fingerprint(exs):
    return [(ex["prompt"], ex["answer"], ex["meta"], [im.tobytes() for im in ex["images"]]) for ex in exs]


# ---------------------------------------------------------------------------- image QA
def test_image_qa_answers_match_the_drawn_record():
    seen = set()
    for ex in iter_image_qa(60, 0, min_size=80, max_size=200):
        meta, (img,) = json.loads(ex["meta"]), ex["images"]
        assert ex["prompt"].startswith("<image>\n") and img.size == tuple(meta["size"])
        assert 80 <= img.width <= 200 and 80 <= img.height <= 200
        objs, kind, tgt = meta["objects"], meta["kind"], meta["target"]
        seen.add(kind)
        for a in objs:
            assert _inside(a["box"], img.size)
            assert img.getpixel(centre(a["box"])) == COLOURS[a["colour"]]  # really drawn there, in that colour
            assert not any(overlaps(a["box"], b["box"]) for b in objs if b is not a)
        if kind == "count":
            count = sum((tgt["shape"] in (None, o["shape"])) and (tgt["colour"] in (None, o["colour"])) for o in objs)
            assert ex["answer"] == str(count)
            if tgt["shape"]:
                assert PLURALS[tgt["shape"]] in ex["prompt"]
        elif kind == "colour":
            (obj,) = [o for o in objs if o["shape"] == tgt["shape"]]
            assert ex["answer"] == obj["colour"] and tgt["shape"] in ex["prompt"]
        elif kind == "shape":
            (obj,) = [o for o in objs if o["colour"] == tgt["colour"]]
            assert ex["answer"] == obj["shape"] and tgt["colour"] in ex["prompt"]
        else:
            word = meta["word"]
            assert ex["answer"] == word["text"] and _inside(word["box"], img.size)
            assert COLOURS[word["colour"]] in _colours_in(img, word["box"])
            assert not any(overlaps(word["box"], o["box"]) for o in objs)
    assert seen == {"count", "colour", "shape", "word"}


def test_image_qa_kinds_option_and_determinism():
    exs = list(iter_image_qa(8, 1, kinds=["count"]))
    assert {json.loads(ex["meta"])["kind"] for ex in exs} == {"count"}
    assert _fingerprint(exs) == _fingerprint(iter_image_qa(8, 1, kinds=["count"]))
    assert _fingerprint(exs) != _fingerprint(iter_image_qa(8, 2, kinds=["count"]))


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(kinds=["size"]), "kinds"),
        (dict(kinds=[]), "kinds"),
        (dict(min_size=300, max_size=100), "swap"),
        (dict(min_size=10), "min_size"),
        (dict(max_objects=0), "max_objects"),
    ],
)
def test_image_qa_bad_options_raise(opts, match):
    with pytest.raises(ValueError, match=match):
        iter_image_qa(1, 0, **opts)


# ---------------------------------------------------------------------------- video
def test_video_exactly_one_frame_shows_the_target():
    seen = set()
    for ex in iter_video(20, 0, num_frames=6):
        meta = json.loads(ex["meta"])
        frames, images, tgt = meta["frames"], ex["images"], meta["target"]
        seen.add(tgt["kind"])
        assert len(images) == len(frames) == 6 == ex["prompt"].count("<image>")
        assert len({im.size for im in images}) == 1 and images[0].size == tuple(meta["size"])
        if tgt["kind"] == "shape":
            hits = [k for k, f in enumerate(frames) if (f["shape"], f["colour"]) == (tgt["shape"], tgt["colour"])]
            assert f"a {tgt['colour']} {tgt['shape']}" in ex["prompt"]
        else:
            hits = [k for k, f in enumerate(frames) if f["word"] == tgt["word"]]
            assert f"'{tgt['word']}'" in ex["prompt"]
        assert len(hits) == 1 and ex["answer"] == str(hits[0] + 1)
        for f, im in zip(frames, images):
            assert _inside(f["box"], im.size)
            if f["shape"]:
                assert im.getpixel(centre(f["box"])) == COLOURS[f["colour"]]
            else:
                assert COLOURS[f["colour"]] in _colours_in(im, f["box"])
    assert seen == {"shape", "word"}


def test_video_determinism_and_bad_options():
    a = _fingerprint(iter_video(3, 5, num_frames=4))
    assert a == _fingerprint(iter_video(3, 5, num_frames=4))
    assert a != _fingerprint(iter_video(3, 6, num_frames=4))
    for opts, match in [
        (dict(num_frames=1), "num_frames"),
        (dict(num_frames=1000), "num_frames"),
        (dict(targets=["sound"]), "targets"),
        (dict(min_size=200, max_size=100), "swap"),
    ]:
        with pytest.raises(ValueError, match=match):
            iter_video(1, 0, **opts)
