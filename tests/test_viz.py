"""viz figures (block level, bounded payloads) and demo_data (sampled-row selection == reference)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("plotly", reason="viz needs plotly: pip install 'msa-lab[lab]'")

from msa_lab import M3, MSAConfig, cost, demo_data, reference, viz  # noqa: E402

CFG = MSAConfig(block_size=4, top_k=3, init_blocks=1, local_blocks=1)


def hand_made_idx():
    """16 queries, 4 blocks: forced [0, own]; even queries of blocks 2 and 3 also pick own - 1."""
    rows = []
    for p in range(16):
        own = p // 4
        row = [0, own] if own else [0, -1]
        row.append(own - 1 if own >= 2 and p % 2 == 0 else -1)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int32).view(1, 1, 16, 3)


def brute_grid(idx, n_keys, cfg, positions, max_cells):
    """Loops over rows and blocks: the shares selection_grid must reproduce."""
    nb = cfg.num_blocks(n_keys)
    fx = -(-nb // max_cells)
    own = np.asarray(positions) // cfg.block_size
    q0 = own.min()
    fy = -(-(own.max() - q0 + 1) // min(max_cells, np.unique(own).size))
    ny, nx = -(-(own.max() - q0 + 1) // fy), -(-nb // fx)
    vis, frc, dyn = (np.zeros((ny, nx)) for _ in range(3))
    for r, o in enumerate(own):
        for b in range(o + 1):
            cell = ((o - q0) // fy, b // fx)
            vis[cell] += 1
            if b in idx[r]:
                forced = b < cfg.init_blocks or o - cfg.local_blocks < b <= o
                (frc if forced else dyn)[cell] += 1
    with np.errstate(invalid="ignore"):
        return np.where(vis > 0, frc / vis, np.nan), np.where(vis > 0, dyn / vis, np.nan)


def test_forced_and_dynamic_cells_on_a_hand_made_selection():
    grid = viz.selection_grid(hand_made_idx(), 16, CFG)
    nan = np.nan
    want_forced = np.array([[1, nan, nan, nan], [1, 1, nan, nan], [1, 0, 1, nan], [1, 0, 0, 1]])
    want_dynamic = np.array([[0, nan, nan, nan], [0, 0, nan, nan], [0, 0.5, 0, nan], [0, 0, 0.5, 0]])
    np.testing.assert_array_equal(grid.forced, want_forced)
    np.testing.assert_array_equal(grid.dynamic, want_dynamic)
    dyn, frc = viz.selection_map(hand_made_idx(), 16, CFG).data
    assert (dyn.name, frc.name) == ("dynamic", "forced")
    forced_cells = ~np.isnan(np.asarray(frc.z, dtype=float))
    np.testing.assert_array_equal(forced_cells, want_forced == 1)
    np.testing.assert_array_equal(np.nan_to_num(np.asarray(dyn.z, dtype=float)) > 0, want_dynamic == 0.5)
    # shares of the whole selection: 16 + 12 + 4 picks... counted against hand-counted visible blocks
    picks = int((hand_made_idx() >= 0).sum())
    assert grid.selected_share == pytest.approx(picks / (4 * (1 + 2 + 3 + 4)))


@pytest.mark.parametrize("max_cells", [1, 2, 3, 5, 64])
def test_binned_grid_matches_brute_force(max_cells):
    cfg = MSAConfig(block_size=8, top_k=4, init_blocks=1, local_blocks=2)
    n = 203
    g = torch.Generator().manual_seed(3)
    idx = reference.select_blocks(torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 1, n, 4, generator=g), cfg)
    for group in (0, 1):
        grid = viz.selection_grid(idx, n, cfg, group=group, max_cells=max_cells)
        f, d = brute_grid(idx[0, group].numpy(), n, cfg, np.arange(n), max_cells)
        np.testing.assert_allclose(grid.forced, f)
        np.testing.assert_allclose(grid.dynamic, d)
        assert grid.forced.shape[0] <= max_cells and grid.forced.shape[1] <= max_cells
        mask = reference.selection_to_key_mask(idx, n, cfg)[0, group]
        assert grid.key_share == pytest.approx(float(mask.sum()) / (n * (n + 1) / 2), rel=1e-12)


def test_sampled_rows_use_their_positions():
    n, cfg = 100, MSAConfig(block_size=8, top_k=3)
    g = torch.Generator().manual_seed(0)
    iq, ik = torch.randn(1, 1, n, 4, generator=g), torch.randn(1, 1, n, 4, generator=g)
    full = reference.select_blocks(iq, ik, cfg)
    pos = np.array([5, 40, 41, 99])
    grid = viz.selection_grid(full[:, :, pos], n, cfg, positions=pos)
    f, d = brute_grid(full[0, 0, pos].numpy(), n, cfg, pos, 256)
    np.testing.assert_allclose(grid.forced, f)
    np.testing.assert_allclose(grid.dynamic, d)
    with pytest.raises(ValueError, match="after its own block"):
        viz.selection_grid(full[:, :, pos], n, cfg, positions=pos - 40 * (pos >= 40))  # wrong positions


def test_full_prefill_at_1m_tokens_sends_at_most_256x256_cells():
    n, cfg = 1 << 20, MSAConfig(block_size=128, top_k=2)
    own = np.arange(n) // 128
    idx = np.stack([np.zeros(n), np.where(own > 0, own, -1)], -1).astype(np.int32)[None, None]  # forced only
    fig = viz.selection_map(idx, n, cfg)
    for tr in fig.data:
        assert np.asarray(tr.z).shape == (256, 256)
    assert viz.payload_size(fig) <= 2 * (256 * 256 + 2 * 256)
    assert np.nansum(np.asarray(fig.data[0].z, dtype=float)) == 0  # nothing dynamic in a forced-only selection


def test_sampled_1m_selection_and_frequency_are_bounded():
    n, cfg = 1 << 20, MSAConfig(block_size=128, top_k=16)
    pos = demo_data.sample_positions(n, 300)
    nb = cfg.num_blocks(n)
    scores = torch.rand(1, 2, pos.size, nb, generator=torch.Generator().manual_seed(0))
    scores = scores.masked_fill(torch.arange(nb)[None, :] > torch.from_numpy(pos // 128)[:, None], -float("inf"))
    idx = demo_data.select_from_scores(scores, pos, cfg)
    fig = viz.selection_map(idx, n, cfg, positions=pos, max_cells=128)
    assert all(np.asarray(tr.z).size <= 128 * 128 for tr in fig.data)
    freq = viz.selection_frequency(idx, n, cfg, positions=pos, max_points=500)
    assert len(freq.data) == 2 and all(len(tr.y) <= 500 for tr in freq.data)
    assert viz.payload_size(fig) + viz.payload_size(freq) < 50_000


def test_selection_frequency_by_hand():
    fig = viz.selection_frequency(hand_made_idx(), 16, CFG)
    np.testing.assert_allclose(fig.data[0].y, [16 / 16, 6 / 12, 6 / 8, 4 / 4])
    fig = viz.selection_frequency(hand_made_idx(), 16, CFG, dynamic_only=True)
    np.testing.assert_allclose(fig.data[0].y, [0, 2 / 12, 2 / 8, 0])


def test_cost_figure_plots_the_cost_model():
    lengths = cost.log_lengths(1024, 1 << 20, 50)
    fig = viz.cost_figure(M3, lengths, marker=65536)
    pts = cost.cost_curve(M3, lengths)
    by_name = {tr.name: tr for tr in fig.data}
    np.testing.assert_allclose(by_name["dense"].y, [p.dense_flops for p in pts])
    np.testing.assert_allclose(by_name["MSA (index + sparse)"].y, [p.msa_flops for p in pts])
    assert by_name["dense / MSA"].yaxis == "y2" and by_name["dense"].yaxis == "y"
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert viz.payload_size(fig) == 4 * 2 * len(lengths)


def test_bad_idx_gives_a_clear_error():
    with pytest.raises(ValueError, match=r"\[B, Hkv, Nq, top_k\]"):
        viz.selection_map(np.zeros((3, 2), dtype=np.int32), 16, CFG)
    with pytest.raises(ValueError, match="block numbers"):
        viz.selection_map(hand_made_idx() + 5, 16, CFG)
    with pytest.raises(ValueError, match="group=3"):
        viz.selection_map(hand_made_idx(), 16, CFG, group=3)


def test_missing_plotly_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=r"pip install 'msa-lab\[lab\]'"):
        viz.selection_map(hand_made_idx(), 16, CFG)


def test_import_msa_lab_stays_light():
    heavy = ('plotly', 'ipywidgets', 'msa_lab.viz', 'msa_lab.widgets.mask_explorer')
    code = f"import sys, msa_lab, msa_lab.widgets; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- demo_data
@pytest.mark.parametrize("cfg", [
    MSAConfig(block_size=16, top_k=4),
    MSAConfig(block_size=8, top_k=6, init_blocks=2, local_blocks=2),
    MSAConfig(block_size=32, top_k=3, init_blocks=0, local_blocks=1, index_scale=0.7),
    MSAConfig(block_size=5, top_k=9, init_blocks=1, local_blocks=0),
])
@pytest.mark.parametrize("hik", [1, 3])
def test_sampled_selection_matches_the_reference(cfg, hik, monkeypatch):
    monkeypatch.setattr(demo_data, "_KEY_CHUNK", 40)  # many key chunks, a ragged last one
    n = 301
    g = torch.Generator().manual_seed(hik)
    iq, ik = torch.randn(2, 3, n, 6, generator=g), torch.randn(2, hik, n, 6, generator=g)
    ik[1, 0, 77] = float("nan")  # one NaN key: its dot products count as -inf
    ref = reference.select_blocks(iq, ik, cfg)
    pos = np.array([300, 0, 17, 150, 79, 80, 81, 159, 160, 299, 5])  # unsorted, on block/chunk edges
    got = demo_data.select_blocks_sampled(iq[:, :, pos], ik, pos, cfg)
    assert got.dtype == torch.int32 and got.shape == (2, 3, pos.size, cfg.top_k)
    assert torch.equal(got.sort(-1).values, ref[:, :, pos].sort(-1).values)


def test_sampled_selection_on_explorer_data_matches_the_reference():
    cfg = MSAConfig(block_size=64, top_k=6, init_blocks=1, local_blocks=2)
    n, demo = 3000, demo_data.IndexDemo(n_groups=2)
    ik = demo.index_keys(n, "structured", 64)
    iq = torch.cat([demo.index_queries(np.arange(n), g, "structured", n, 64) for g in range(2)], 1)
    rows = demo_data.sample_positions(n, 37)
    ref = reference.select_blocks(iq, ik, cfg)[:, :, rows]
    assert torch.equal(demo_data.select_blocks_sampled(iq[:, :, rows], ik, rows, cfg).sort(-1).values,
                       ref.sort(-1).values)


def test_sample_positions():
    p = demo_data.sample_positions(65536, 256)
    assert p.size == 256 and p[0] == 0 and p[-1] == 65535 and np.all(np.diff(p) > 0)
    np.testing.assert_array_equal(demo_data.sample_positions(10, 50), np.arange(10))
    with pytest.raises(ValueError, match="rows"):
        demo_data.sample_positions(10, 0)


def test_demo_keys_are_prefix_consistent_and_seeded():
    a, b = demo_data.IndexDemo(2, seed=5), demo_data.IndexDemo(2, seed=5)
    long = a.index_keys(70_000)  # crosses two generation chunks
    assert torch.equal(b.index_keys(1000), long[:, :, :1000])
    assert torch.equal(a.index_keys(40_000), long[:, :, :40_000])
    assert not torch.equal(demo_data.IndexDemo(2, seed=6).index_keys(1000), long[:, :, :1000])
    q1 = a.index_queries([3, 900, 5000], group=1)
    q2 = b.index_queries([5000, 3], group=1)
    assert torch.equal(q1[:, :, [2, 0]], q2)


def test_planted_needles_are_found_and_random_data_has_none():
    n, cfg = 1 << 14, MSAConfig(block_size=64, top_k=8)
    demo = demo_data.IndexDemo(n_groups=2)
    pos = demo_data.sample_positions(n, 128)
    recalls = {}
    for kind in ("structured", "random"):
        ik = demo.index_keys(n, kind, 64)
        found = wanted = 0
        for g in range(2):
            blocks = demo.needles(n, 64).blocks[g]
            assert len(blocks) == 2
            idx = demo_data.select_blocks_sampled(demo.index_queries(pos, g, kind, n, 64), ik, pos, cfg)
            f, w = demo_data.needle_recall(idx[0, 0], pos, blocks, cfg)
            found, wanted = found + f, wanted + w
        recalls[kind] = found / wanted
    assert recalls["structured"] >= 0.9
    assert recalls["random"] <= 0.3


def test_sampled_selection_rejects_bad_positions():
    iq, ik = torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 10, 4)
    with pytest.raises(ValueError, match="positions must lie in"):
        demo_data.select_blocks_sampled(iq, ik, [3, 10], MSAConfig(block_size=4, top_k=2))
    with pytest.raises(ValueError, match="one position per row"):
        demo_data.select_blocks_sampled(iq, ik, [3], MSAConfig(block_size=4, top_k=2))


def test_training_curves_per_task_runs_and_sparse_shading(tmp_path):
    import json

    from msa_lab.viz import payload_size, training_curves

    rows = [{"run": "1" if s <= 600 else "2", "step": s, "task": ("copy", "niah_single")[s % 2],
             "phase": "dense" if s <= 300 else "sparse", "lm_loss": 3.0 / s, "kl": 0.1} for s in range(1, 1001)]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = training_curves(log, max_points=100, window=10)
    names = [t.name for t in fig.data]
    assert names == ["copy", "niah_single", "KL"]
    assert payload_size(fig) <= 3 * 2 * 100  # downsampled: never one point per step
    copy = fig.data[0]
    assert list(copy.y) == sorted(copy.y, reverse=True)  # the loss falls, and the running mean keeps it so
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(lines) == 2 and {ln.x0 for ln in lines} == {601}  # one run boundary, drawn on both panels
    assert len(rects) == 2 and {(r.x0, r.x1) for r in rects} == {(301, 1000)}  # the sparse stretch
    assert [a.text for a in fig.layout.annotations if a.text.startswith("run")] == ["run 1", "run 2"]
    with pytest.raises(FileNotFoundError, match="no training log"):
        training_curves("no-such-model")


def test_training_curves_of_the_shipped_models():
    from msa_lab.viz import training_curves

    for name in ("msa-tiny", "dense-200k"):
        fig = training_curves(name)
        assert {"niah_single", "KL"} <= {t.name for t in fig.data}
