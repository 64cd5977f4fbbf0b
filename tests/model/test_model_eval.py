"""Eval helpers on a random-init tiny model: they run and return well-formed tables (not accuracy claims)."""
import pytest
import torch

from msa_lab import eval as E
from msa_lab.api import Model
from msa_lab.model import small_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    m = Model.from_config(small_config("msa"))
    m.net.backend = "torch"
    return m


def test_niah_grid_and_heatmap(model):
    df = E.niah_grid(model, lengths=(300, 400), depths=(0.0, 1.0), n=1, max_new_tokens=4)
    assert list(df.columns) == ["length", "depth", "n", "accuracy", "seconds"] and len(df) == 4
    assert df["accuracy"].between(0, 1).all()
    fig = E.niah_heatmap(df)
    assert fig.data[0].z.shape == (2, 2)


def test_answer_matching():
    assert E.answer_ok("the numbers are 12, 34.", "12, 34")
    assert not E.answer_ok("12 only", "12, 34")


def test_position_probe(model):
    df = E.position_probe(model, distances=(0, 1_000_000), n=1, length=300)
    assert df["distance"].tolist() == [0, 1_000_000] and (df["answer_logprob"] < 0).all()


def test_gui_and_image_qa(model):
    g = E.gui_click_accuracy(model, n=2)
    assert g["n"] == 2 and 0 <= g["accuracy"] <= g["kind_accuracy"] <= 1
    assert set(g["by_target"]) <= {"button", "menu", "icon", "checkbox", "close", "field", "list"}
    assert sum(1 for _ in g["by_target"]) >= 1
    q = E.image_qa_accuracy(model, n=4)
    assert 0 <= q["accuracy"] <= 1 and set(q["by_kind"]) <= {"count", "colour", "shape", "word"} and q["by_kind"]


def test_indexer_recall(model):
    df = E.indexer_recall(model, lengths=(300,))
    assert len(df) == model.config.n_layers * model.config.n_kv_heads and df["recall"].between(0, 1).all()
    assert (df["recall"] <= df["ceiling"] + 1e-6).all()  # no selection beats the best k blocks
    wide = E.indexer_recall(model, lengths=(300,), top_k=2 * model.config.top_k)
    assert (wide["top_k"] == 2 * model.config.top_k).all() and wide["recall"].mean() > df["recall"].mean()
    assert wide["ceiling"].mean() > df["ceiling"].mean()
    # the override ends with the block: the model selects its own k again
    assert all(m.msa.top_k == model.config.top_k for m in model.net.modules() if hasattr(m, "msa"))
    assert model.engine.cfg.top_k == model.config.top_k == 4
    with pytest.raises(ValueError, match="is dense"):
        E.indexer_recall(Model.from_config(small_config("dense")))


def test_copy_scores_are_chance_for_an_untrained_model(model):
    r = E.copy_scores(model, "copy_random", length=300, n=1, mode="dense")
    assert r["copied_acc"] < 0.2 and r["copied_loss"] > 3.0  # ln 36 = 3.58 for a byte among a-z0-9
    with pytest.raises(ValueError, match="task must be"):
        E.copy_scores(model, "niah_single")
    with pytest.raises(ValueError, match="mode must be"):
        E.copy_scores(model, mode="sparse")


def test_copied_mask_marks_string_bytes_past_the_cue():
    assert E._copied_mask("abcdef, ghijk", 4) == [False] * 4 + [True] * 2 + [False] * 2 + [False] * 4 + [True, False]


def test_default_niah_lengths_by_device_and_model():
    from types import SimpleNamespace

    def fake(device, limit):
        return SimpleNamespace(device=torch.device(device), config=SimpleNamespace(max_context=limit))

    assert E.default_lengths(fake("cpu", None)) == (1024, 4096, 16384, 65536)
    assert E.default_lengths(fake("cuda", None)) == (4096, 16384, 65536, 262144, 1 << 20)
    # dense-200k: up to its limit, with room for the answer (a longer prompt would be truncated)
    assert E.default_lengths(fake("cuda", 204_800)) == (4096, 16384, 65536, 204_800 - E.NIAH_MAX_NEW_TOKENS)
    assert E.default_lengths(fake("cuda", 204_800), quick=True) == (1024, 4096)


@pytest.mark.parametrize("block, quick, expected", [
    (64, False, (2048, 4096, 8192)), (64, True, (2048,)),  # msa-tiny: 1,024 tokens would be all 16 blocks
    (128, False, (4096, 8192)), (512, False, (17408,)),
])
def test_recall_lengths_leave_blocks_out_at_k16(block, quick, expected):
    from types import SimpleNamespace

    lengths = E.recall_lengths(SimpleNamespace(config=SimpleNamespace(block_size=block)), quick)
    assert lengths == expected
    assert all(n > 16 * block for n in lengths)


def test_eval_can_take_its_niah_grid_from_an_earlier_run(tmp_path, torch_path_models):
    """--niah-from: the grid comes from the file (with where it was measured, in the JSON and the card), the rest is
    measured; a grid without its device, with other columns, or with lengths to measure is refused."""
    import json
    import shutil

    from msa_lab.model.checkpoint import REPO_ROOT

    ck = tmp_path / "ck"
    ck.mkdir()
    for f in ("msa-tiny.json", "msa-tiny.safetensors"):
        shutil.copy(REPO_ROOT / "data" / "checkpoints" / f, ck / f)
    grid = tmp_path / "grid.csv"
    grid.write_text("length,depth,n,accuracy,seconds\n4096,0.5,2,1.0,0.7\n1048576,0.5,2,0.5,14.0\n")
    with pytest.raises(ValueError, match="niah_device"):
        E.run_eval("msa-tiny", quick=True, device="cpu", out_dir=tmp_path, checkpoint_dir=ck, niah_from=grid)
    with pytest.raises(ValueError, match="leave out lengths"):
        E.run_eval("msa-tiny", quick=True, device="cpu", out_dir=tmp_path, checkpoint_dir=ck, niah_from=grid,
                   niah_device="X", lengths=(1024,))
    bad = tmp_path / "bad.csv"
    bad.write_text("length,accuracy\n4096,1.0\n")
    with pytest.raises(ValueError, match="not a NIAH grid"):
        E.run_eval("msa-tiny", quick=True, device="cpu", out_dir=tmp_path, checkpoint_dir=ck, niah_from=bad,
                   niah_device="X")
    res = E.run_eval("msa-tiny", quick=True, device="cpu", out_dir=tmp_path, checkpoint_dir=ck, niah_from=grid,
                     niah_device="Some GPU (torch 9)")
    assert res["niah_source"] == {"file": "grid.csv", "device": "Some GPU (torch 9)"}
    assert [r["length"] for r in res["tables"]["niah"]] == [4096, 1048576] and res["summary"]["niah_accuracy"] == 0.75
    assert "indexer_recall_k16" in res["summary"] and json.loads((tmp_path / "msa-tiny.json").read_text())["niah_source"]
    card = (ck / "README.md").read_text()
    assert "measured on Some GPU (torch 9) (`grid.csv`): 4,096: 1.00 (2), 1,048,576: 0.50 (2)" in card
