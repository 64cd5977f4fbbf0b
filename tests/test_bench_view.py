"""BenchView and bench_figure on the committed H100 results, driven through the controls' traitlets."""
import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ipywidgets", reason="widgets need ipywidgets: pip install 'msa-lab[lab]'")
pytest.importorskip("plotly", reason="widgets need plotly: pip install 'msa-lab[lab]'")

from msa_lab import bench as B  # noqa: E402
from msa_lab.widgets import bench_view as BV  # noqa: E402
from msa_lab.widgets.bench_view import BenchView, bench_figure, scan_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
H100 = ROOT / "data" / "bench" / "2026-11-27-nvidia-h100-80gb-hbm3.json"


def _h200(d: dict, scale: float = 0.5) -> dict:
    """The H100 results relabelled as an H200 run with every time scaled: a second card to switch to."""
    d = copy.deepcopy(d)
    d["device"] = dict(d["device"], name="NVIDIA H200", slug="nvidia-h200")
    d["date"] = "2026-12-01"
    for r in d["rows"]:
        if r.get("ms"):
            r["ms"] *= scale
    return d


@pytest.fixture
def folder(tmp_path):
    shutil.copy(H100, tmp_path / H100.name)
    shutil.copy(ROOT / "data" / "bench" / "2026-11-27-nvidia-h100-80gb-hbm3-prefill.json", tmp_path)
    B.write_json(_h200(B.load_json(H100)), tmp_path / "2026-12-01-nvidia-h200.json")
    (tmp_path / "mask_explorer-2026-11-27.json").write_text(json.dumps({"benchmark": "mask_explorer"}))
    (tmp_path / "broken.json").write_text("{not json")
    return tmp_path


@pytest.fixture
def view(folder):
    return BenchView(folder, file=H100.name)


def trace(fig, name, col=None):
    hits = [t for t in fig.data if t.name == name]
    assert hits, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return hits[0]


def rows(d):
    return d["rows"]


def test_scan_skips_other_json_and_labels_card_and_date(folder):
    files = scan_results(folder)
    assert [f.path.name for f in files] == ["2026-12-01-nvidia-h200.json", H100.name,
                                            "2026-11-27-nvidia-h100-80gb-hbm3-prefill.json"]  # newest, then most rows
    assert files[0].label == "NVIDIA H200 · 2026-12-01 · 2 runs merged"
    assert files[2].label == "NVIDIA H100 80GB HBM3 · 2026-11-27 · prefill"


def test_prefill_panels_plot_the_rows(view):
    d, fig = view.results, view.figure
    for name, label, *_ in BV.PREFILL_LINES[:5]:
        t = trace(fig, label)
        assert list(t.x) == [8192, 32768, 131072, 524288, 1 << 20]
        assert t.y[-1] == pytest.approx(B.find_row(rows(d), name, "m3", 1 << 20)["ms"])
    assert "FlexAttention (same selection)" not in [t.name for t in fig.data]  # no ok Flex row in this run
    tflops = [t for t in fig.data if t.name == "dense SDPA"][1]
    assert tflops.y[-1] == pytest.approx(486, rel=0.01) and tflops.xaxis == "x2"
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.type == "log"
    ceiling = [s for s in fig.layout.shapes if s.yref == "y2"]
    matmul = [r for r in rows(d) if r["name"] == "matmul"]
    assert len(matmul) == 2 and ceiling and ceiling[0].y0 == pytest.approx(matmul[-1]["tflops"])  # later run wins
    title = fig.layout.title.text
    assert "NVIDIA H100 80GB HBM3" in title and "torch 2.11.0+cu130" in title and "triton 3.6.0" in title


def test_speedup_panel_has_both_targets_and_the_measured_ratios(view):
    fig = view.figure
    pre = trace(fig, "prefill dense / MSA")
    assert pre.y[-1] == pytest.approx(37060.16 / 2114.0, rel=1e-3)  # README: 17.5x at 1M
    assert trace(fig, "prefill target 20x").y == (20, 20) and trace(fig, "decode target 7.6x").y == (7.6, 7.6)
    b8 = trace(fig, "decode b8, 1 tok")
    assert list(b8.x) == [131072, 1 << 20] and b8.y[-1] == pytest.approx(7.58, abs=0.01)
    assert fig.layout.yaxis3.type == "log"


def test_decode_panels_use_the_later_ok_rows_of_a_merged_file(view):
    # the merged file holds the first run's skipped decode rows and the second run's ok ones
    fig = view.figure
    dense, msa = trace(fig, "dense decode ms"), trace(fig, "MSA decode ms")
    assert list(dense.x) == ["128K b1 t1", "128K b1 t16", "128K b8 t1", "128K b8 t16",
                             "1M b1 t1", "1M b1 t16", "1M b8 t1", "1M b8 t16"]
    assert None not in dense.y and None not in msa.y
    assert msa.y[4] == pytest.approx(0.527, abs=1e-3)
    idx = trace(fig, "MSA indexer: index-key GB/s")
    assert idx.y[-2] == pytest.approx(3037, rel=1e-3)
    copy_line = [s for s in fig.layout.shapes if s.yref == "y5"]
    assert copy_line[0].y0 == pytest.approx(3006, rel=1e-3)  # the second run's copy row wins
    table = [t for t in fig.data if t.type == "table"][0]
    assert "17.5" in table.cells.values[2] and "no" in table.cells.values[3]


def test_file_dropdown_switches_card_and_never_mixes(view, folder):
    before = [t.y for t in view.figure.data if t.name == "dense SDPA"][0]
    view.file.value = folder / "2026-12-01-nvidia-h200.json"
    assert "NVIDIA H200" in view.figure.layout.title.text and "H100" not in view.figure.layout.title.text
    after = trace(view.figure, "dense SDPA").y
    np.testing.assert_allclose(after, np.array(before) * 0.5)  # every number is the H200 file's
    assert "NVIDIA H200" in view.message
    view.file.value = folder / "2026-11-27-nvidia-h100-80gb-hbm3-prefill.json"
    names = [t.name for t in view.figure.data]
    assert "dense decode ms" not in names and "MSA decode ms" not in names  # skipped in this run (time budget)
    assert list(trace(view.figure, "MSA indexer: index-key GB/s").x) == ["1M b1 t1"]  # its one ok decode row
    assert "no decode timings" in view.figure.layout.annotations[3].text  # the empty panel says why
    assert "no decode timings" not in view.figure.layout.annotations[4].text
    assert list(view.batches.options) == [1, 8]


def test_shape_fp8_and_batch_controls_change_the_figure(folder):
    d = B.load_json(H100)
    extra = [dict(r, shape="llama3_8b", ms=r["ms"] * 3) for r in d["rows"]
             if r["mode"] == "prefill" and r["status"] == "ok"]
    B.write_json(dict(d, rows=d["rows"] + extra), folder / "2026-11-27-nvidia-h100-80gb-hbm3-two.json")
    v = BenchView(folder, file="2026-11-27-nvidia-h100-80gb-hbm3-two.json")
    assert list(v.shape.options) == ["m3", "llama3_8b"]
    m3 = trace(v.figure, "MSA total").y
    v.shape.value = "llama3_8b"
    np.testing.assert_allclose(trace(v.figure, "MSA total").y, np.array(m3) * 3)
    assert "llama3_8b shapes" in v.figure.layout.title.text
    assert "dense decode ms" not in [t.name for t in v.figure.data]  # llama rows are prefill only here
    v.shape.value = "m3"
    v.fp8.value = False
    assert "MSA indexer, fp8" not in [t.name for t in v.figure.data]
    v.batches.value = (8,)
    assert all(c.endswith(("b8 t1", "b8 t16")) for c in trace(v.figure, "dense decode ms").x)
    assert "decode b1, 1 tok" not in [t.name for t in v.figure.data]


def test_save_html_from_call_and_button(view, tmp_path):
    text = Path(view.save_html(str(tmp_path / "a.html"))).read_text()
    assert "Plotly.newPlot" in text and "<script src=\"https://cdn" not in text  # self-contained
    view.save_path.value = str(tmp_path / "b.html")
    view.save_button.click()
    assert (tmp_path / "b.html").exists() and "saved" in view.status.value
    view.save_path.value = str(tmp_path / "missing" / "c.html")
    view.save_button.click()
    assert "could not save" in view.status.value


def test_rerun_on_a_cpu_shows_a_note_and_runs_nothing(view, monkeypatch):
    import subprocess

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("no subprocess on a CPU"))
    assert view.rerun() is None
    view.rerun_button.click()
    assert "No CUDA GPU here" in view.message and "python -m msa_lab.bench --quick" in view.message


def test_rerun_on_a_gpu_runs_the_command_and_shows_the_new_file(view, folder, tmp_path_factory, monkeypatch):
    tmp_path = tmp_path_factory.mktemp("staged")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert view.command[1:4] == ["-m", "msa_lab.bench", "--quick"] and view.command[-1] == str(folder) + "/"
    new = folder / "2026-12-02-nvidia-h200-quick.json"
    staged = tmp_path / "staged.json"
    B.write_json(dict(_h200(B.load_json(H100)), date="2026-12-02"), staged)
    code = f"import shutil; print('bench says hi'); shutil.copy({str(staged)!r}, {str(new)!r})"
    view.command = [sys.executable, "-c", code]  # stands in for the GPU run
    view.rerun(wait=True)
    assert view.file.value == new and "2026-12-02" in view.figure.layout.title.text
    assert "exit code 0" in view.message and "bench says hi" in view.log.value
    assert not view.rerun_button.disabled


def test_no_results_and_unknown_file_name_the_fix(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="msa_lab.bench"):
        BenchView(tmp_path / "empty")
    with pytest.raises(ValueError, match="choose one of"):
        BenchView(folder, file="nope.json")


def test_default_folder_from_repo_root_and_notebooks(monkeypatch):
    for cwd in (ROOT, ROOT / "notebooks"):
        monkeypatch.chdir(cwd)
        assert BV.default_results_dir() == ROOT / "data" / "bench"


def test_default_view_opens_the_full_h100_run():
    v = BenchView(ROOT / "data" / "bench")
    assert v.file.value == ROOT / "data" / "bench" / "2026-11-27-nvidia-h100-80gb-hbm3-full.json"  # most rows, newest date
    assert "mask_explorer" not in " ".join(label for label, _ in v.file.options)
    assert "application/vnd.jupyter.widget-view+json" in v._repr_mimebundle_()
