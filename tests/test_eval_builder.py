"""EvalBuilder: the custom NIAH task (validation, needle placement) and the widget driven through its traitlets."""
import json
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets", reason="widgets need ipywidgets: pip install 'msa-lab[lab]'")
pytest.importorskip("plotly", reason="widgets need plotly: pip install 'msa-lab[lab]'")

from msa_lab.api import Model  # noqa: E402
from msa_lab.model.config import small_config  # noqa: E402
from msa_lab.tasks.haystack import snap_window  # noqa: E402
from msa_lab.widgets.eval_builder import EvalBuilder, NeedleTask, accuracy_table  # noqa: E402


# ----------------------------------------------------------------------------- the task
@pytest.mark.parametrize("kw, match", [
    (dict(template="The code for {key} is here."), r"needs a \{value\} placeholder"),
    (dict(question="Is it {value}?"), "give the answer away"),
    (dict(template="The {colour} code is {value}."), r"placeholder \{colour\}; only \{key\} and \{value\}"),
    (dict(template="The code is {value:>9}."), r"placeholder \{value:>9\}"),
    (dict(template="The code is {value!r}."), r"placeholder \{value!r\}"),
    (dict(template="The code is {value."), "not a valid template"),
    (dict(template="The code } is {value}."), "not a valid template"),
    (dict(template="  "), "template is empty"),
    (dict(template="line one {value}\nline two"), "one line"),
    (dict(template="The code is {value}.", question="What is the code for {key}?"), "never states it"),
    (dict(values="emoji"), "values must be one of"),
    (dict(lengths=(64,)), r"too small .* >= \d+ tokens"),
    (dict(depths=(1.5,)), r"in \[0, 1\]"),
    (dict(n=0), "n must be an int >= 1"),
    (dict(haystack="/nonexistent/dir"), "not a directory"),
])
def test_template_validation_errors_are_clear(kw, match):
    with pytest.raises(ValueError, match=match):
        NeedleTask(**kw)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_needle_lands_at_the_requested_depth(depth):
    task = NeedleTask(template="The vault PIN of {key} is {value}.", question="What is the vault PIN of {key}?",
                      lengths=(3000,), depths=(depth,), n=2, seed=3)
    for ex in task.examples(3000, depth):
        meta = json.loads(ex["meta"])
        p = ex["prompt"]
        assert len(p.encode()) + 2 == 3000  # exact length in model tokens (bytes + BOS + SEP)
        s, e = meta["char_span"]
        assert p[s:e] == meta["needle"] + "\n" and ex["answer"] in meta["needle"]
        assert meta["needle"] == f"The vault PIN of {meta['key']} is {ex['answer']}."
        assert p.endswith(meta["question"]) and ex["answer"] not in meta["question"]
        hay = meta["haystack"]["bytes"]
        assert abs(meta["actual_depth"] - depth) <= snap_window(hay) / hay + 1e-9
        before = len(p[:s].encode())  # the haystack bytes that precede the needle
        assert before == round(meta["actual_depth"] * hay)
        assert p.count(ex["answer"]) == 1


def test_task_is_seeded_and_takes_a_directory_haystack(tmp_path):
    a = NeedleTask(lengths=(600,), depths=(0.5,), n=2)
    assert [x["prompt"] for x in a.examples(600, 0.5)] == [x["prompt"] for x in a.examples(600, 0.5)]
    b = NeedleTask(lengths=(600,), depths=(0.5,), n=2, seed=1)
    assert a.examples(600, 0.5)[0]["prompt"] != b.examples(600, 0.5)[0]["prompt"]
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(f"zebra crossing number {i}\n" * 80)
    (tmp_path / "skip.md").write_text("never used\n" * 80)
    t = NeedleTask(haystack=str(tmp_path), suffixes=".txt", lengths=(700,), depths=(0.3,), values="word")
    ex = t.examples(700, 0.3)[0]
    meta = json.loads(ex["meta"])
    assert meta["haystack"]["source"] == "dir" and "zebra crossing" in ex["prompt"]
    assert "never used" not in ex["prompt"] and "-" in ex["answer"]


def test_accuracy_table_groups_examples():
    rows = [{"model": "m", "length": 10, "depth": 0.0, "correct": c, "seconds": 1.0} for c in (True, False)]
    t = accuracy_table(rows)
    assert t.to_dict(orient="records") == [{"model": "m", "length": 10, "depth": 0.0, "n": 2, "accuracy": 0.5,
                                            "seconds": 1.0}]


# ----------------------------------------------------------------------------- the widget
@pytest.fixture(scope="module")
def models():
    return {"msa-tiny": Model.from_config(small_config("msa", name="msa-tiny")),
            "dense-200k": Model.from_config(small_config("dense", name="dense-200k", max_context=400))}


@pytest.fixture
def builder(models, tmp_path):
    task = NeedleTask(lengths=(256,), depths=(0.5,))
    return EvalBuilder(task, models=models, max_new_tokens=4, chunk_size=128, out_dir=tmp_path)


def heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def test_run_button_fills_one_heatmap_per_model(builder):
    assert heatmaps(builder.figure) == []
    builder.lengths.value = "256, 320"
    builder.depths.value = "0, 1"
    builder.run_button.click()  # runs in a background thread
    builder.wait(120)
    assert builder.message.startswith("finished: 8 / 8"), builder.message
    hm = heatmaps(builder.figure)
    assert len(hm) == 2 and all(h.z.shape == (2, 2) for h in hm)
    assert list(hm[0].x) == ["256", "320"] and list(hm[0].y) == ["0.00", "1.00"]
    assert builder.progress.value == builder.progress.max == 8
    # one model only: one heatmap, and the grid follows the controls
    builder.models.value = ("msa-tiny",)
    builder.lengths.value = "256"
    builder.depths.value = "0, 0.5, 1"
    builder.run()
    hm = heatmaps(builder.figure)
    assert len(hm) == 1 and hm[0].z.shape == (3, 1)


def test_invalid_template_shows_the_error_and_keeps_the_figure(builder):
    builder.run()
    before = [h.z.tolist() for h in heatmaps(builder.figure)]
    builder.template.value = "The door code is secret."
    builder.run_button.click()
    builder.wait(30)
    assert "needs a {value} placeholder" in builder.message and "color:#b00" in builder.status.value
    assert [h.z.tolist() for h in heatmaps(builder.figure)] == before


def test_stop_button_interrupts_and_keeps_partial_results(builder):
    builder.depths.value = "0, 0.5, 1"
    builder.lengths.value = "256, 300"  # 6 cells x 2 models = 12 examples

    def press_stop(change):
        if change["new"] == 1:
            builder.stop_button.click()

    builder.progress.observe(press_stop, names="value")
    builder.run_button.click()
    builder.wait(120)
    assert builder.message.startswith("stopped: 1 / 12"), builder.message
    assert len(builder.rows) == 1 and len(builder.table) == 1
    assert not builder.run_button.disabled and builder.stop_button.disabled


def test_dense_past_its_limit_follows_the_overflow_policy(builder):
    builder.lengths.value = "512"  # the test dense model's limit is 400
    builder.overflow.value = "error"
    builder.run()
    dense = [r for r in builder.rows if r["model"] == "dense-200k"]
    assert dense and all(r["status"] == "refused (ContextTooLong)" and not r["correct"] for r in dense)
    builder.overflow.value = "truncate_left"
    builder.run()
    dense = [r for r in builder.rows if r["model"] == "dense-200k"]
    assert all(r["status"] == "ok" and r["policy"] == "truncate_left" for r in dense)


def test_preview_and_saving(builder, tmp_path):
    builder.preview_button.click()
    assert "door code for" in builder.preview.value and "background:#fff59d" in builder.preview.value
    with pytest.raises(ValueError, match="run the task first"):
        builder.save_results()
    builder.run()
    csv, js = builder.save_results()
    assert Path(csv).parent == tmp_path and Path(csv).read_text().count("\n") == 1 + len(builder.rows)
    saved = json.loads(Path(js).read_text())
    assert saved["task"]["template"] == builder.template.value and len(saved["rows"]) == 2
    builder.save_path.value = str(tmp_path / "mine.json")
    builder.save_button.click()
    assert (tmp_path / "mine.csv").exists() and (tmp_path / "mine.json").exists()
    builder.html_button.click()
    assert (tmp_path / "mine.html").stat().st_size > 100_000 and "saved" in builder.message
