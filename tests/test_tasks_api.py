"""Task registry, the shared datasets schema, and the committed samples."""
import importlib.util
import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from msa_lab.tasks import TASKS, features, iter_task, make_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"niah_single": {"length": 800}, "niah_multi_key": {"length": 800}, "niah_multi_value": {"length": 800},
         "niah_multi_query": {"length": 800}, "variable_tracking": {"length": 800},
         "image_qa": {"max_size": 96}, "gui": {"max_width": 480, "max_height": 320}, "video": {"num_frames": 3, "max_size": 64}}


def test_registry_covers_every_family():
    assert set(TASKS) == set(SMALL)
    with pytest.raises(ValueError, match="known tasks: .*niah_single.*video"):
        make_task("niah", 1, 0)
    with pytest.raises(ValueError, match="known tasks"):
        iter_task("ocr", 1, 0)


@pytest.mark.parametrize("name", ["niah_multi_key", "gui", "video"])
def test_make_task_dataset_matches_iter_task(name, tmp_path):
    ds = make_task(name, 3, 11, cache_dir=str(tmp_path), **SMALL[name])
    assert ds.features == features() and len(ds) == 3
    rows = list(iter_task(name, 3, 11, **SMALL[name]))
    for got, want in zip(ds, rows):
        for col in ("id", "task", "prompt", "answer", "meta"):
            assert got[col] == want[col]
        assert [im.convert("RGB").tobytes() for im in got["images"]] == [im.tobytes() for im in want["images"]]
    assert len(set(ds["id"])) == 3
    other = make_task(name, 3, 12, cache_dir=str(tmp_path), **SMALL[name])
    assert other._fingerprint != ds._fingerprint  # the seed is in the cache key
    assert other["meta"] != ds["meta"]


def test_a_generator_revision_renews_the_cache_and_keeps_the_examples(tmp_path, monkeypatch):
    """A module's REVISION (msa_lab.tasks.schema) is in the cache key but not in the examples' RNG."""
    import msa_lab.tasks.gui as gui

    ds = make_task("gui", 2, 11, cache_dir=str(tmp_path), **SMALL["gui"])
    fields = [e for row in ds for e in json.loads(row["meta"])["elements"] if e["kind"] == "field"]
    assert gui.REVISION == 2 and fields and all("label_box" in e for e in fields)
    monkeypatch.setattr(gui, "REVISION", gui.REVISION + 1)
    again = make_task("gui", 2, 11, cache_dir=str(tmp_path), **SMALL["gui"])
    assert again._fingerprint != ds._fingerprint and again["meta"] == ds["meta"]


def test_make_task_bad_options_raise_before_building(tmp_path):
    with pytest.raises(ValueError, match="depth"):
        make_task("niah_single", 2, 0, cache_dir=str(tmp_path), depth=2.0)
    assert not any(tmp_path.iterdir())  # nothing was built


def test_every_task_row_has_the_common_schema():
    for name, opts in SMALL.items():
        for i, ex in enumerate(iter_task(name, 2, 0, **opts)):
            assert set(ex) == {"id", "task", "prompt", "images", "answer", "meta"}
            assert ex["task"] == name and ex["id"] == f"{name}-s0-{i:06d}"
            assert ex["prompt"].count("<image>") == len(ex["images"])
            assert all(isinstance(im, Image.Image) for im in ex["images"])
            assert isinstance(ex["answer"], str) and ex["answer"]
            assert isinstance(json.loads(ex["meta"]), dict)


def _load_script():
    spec = importlib.util.spec_from_file_location("make_samples", os.path.join(ROOT, "scripts", "make_samples.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_samples_exist_are_small_and_current():
    script = _load_script()
    total = 0
    for name in TASKS:
        path = os.path.join(ROOT, "data", "samples", f"{name}.parquet")
        assert os.path.exists(path), f"missing {path}: run .venv/bin/python scripts/make_samples.py"
        total += os.path.getsize(path)
        rows = pq.read_table(path).to_pylist()
        assert len(rows) == script.N and [r["task"] for r in rows] == [name] * script.N
        for r in rows:
            assert r["prompt"].count("<image>") == len(r["images"])
            for im in r["images"]:
                Image.open(io.BytesIO(im["bytes"])).verify()
        if name in ("image_qa", "video"):  # answers depend only on the seed: a stale sample shows here
            fresh = iter_task(name, script.N, script.SEED, **script.SAMPLE_OPTS[name])
            assert [r["answer"] for r in rows] == [ex["answer"] for ex in fresh], "stale samples: rerun make_samples.py"
    assert total < script.MAX_TOTAL_BYTES
