"""msa_lab.migration (prices, decision, measured-vs-projected series, measuring) and the MigrationView widget."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from msa_lab import cost
from msa_lab import migration as M
from msa_lab.api import Model
from msa_lab.model.config import DENSE_200K_LIMIT, small_config

ROOT = Path(__file__).resolve().parent.parent
LIM = DENSE_200K_LIMIT


# ----------------------------------------------------------------------------- tokens and prices
def test_billed_tokens_within_and_past_the_limit():
    assert M.billed_tokens(100_000, "dense-200k", "error", output_tokens=256) == M.BilledTokens(100_000, 256, 1, True,
                                                                                              100_000)
    assert not M.billed_tokens(300_000, "dense-200k", "error", output_tokens=256).served
    for p in ("truncate_left", "truncate_middle"):
        b = M.billed_tokens(300_000, "dense-200k", p, output_tokens=256)
        assert (b.input_tokens, b.output_tokens, b.calls) == (LIM - 256, 256, 1)
    # chunk: keep = 204,544, tail = 1024, window = 203,519; body = 1M - 1 - 1024 -> 5 windows
    b = M.billed_tokens(1_000_000, "dense-200k", "chunk", output_tokens=256)
    assert b.calls == math.ceil((1_000_000 - 1 - 1024) / (LIM - 256 - 1 - 1024)) == 5
    assert b.input_tokens == 1_000_000 - 1 - 1024 + 5 * (1 + 1024)  # every window repeats BOS and the question
    assert b.output_tokens == 5 * 256
    # msa-tiny has no limit: every policy bills the whole prompt
    assert M.billed_tokens(1_000_000, "msa-tiny", "error").input_tokens == 1_000_000
    with pytest.raises(ValueError, match="overflow policy"):
        M.billed_tokens(10, "dense-200k", "drop")


def test_chunk_billing_matches_the_engine():
    """The window count billed is the number of windows Engine._generate_chunked really answers."""
    model = Model.from_config(small_config("dense", name="dense-200k", max_context=300))
    text = "abcdefghij\n" * 120  # 1,320 bytes
    res = model.generate(text, max_new_tokens=4, overflow="chunk", return_result=True)
    b = M.billed_tokens(res.input_tokens, "dense-200k", "chunk", output_tokens=4, limit=300)
    assert b.calls == res.windows >= 4


def test_request_price_math_and_long_context_tier():
    p = M.Price(1.0, 2.0)
    assert M.request_price(500_000, "msa-tiny", price=p, output_tokens=1000) == pytest.approx(0.5 + 0.002)
    # the default msa-tiny price doubles above 512K input tokens
    d = M.DEFAULT_PRICES["msa-tiny"]
    lo = M.request_price(512_000, "msa-tiny", output_tokens=1000)
    hi = M.request_price(600_000, "msa-tiny", output_tokens=1000)
    assert lo == pytest.approx((512_000 * d.input_per_mtok + 1000 * d.output_per_mtok) / 1e6)
    assert hi == pytest.approx(2 * (600_000 * d.input_per_mtok + 1000 * d.output_per_mtok) / 1e6)
    # dense past the limit: refused under "error", capped under truncation, paid per window when chunking
    dp = M.Price(0.3, 1.2)
    assert M.request_price(300_000, "dense-200k", "error", dp) is None
    trunc = M.request_price(300_000, "dense-200k", "truncate_left", dp, output_tokens=256)
    assert trunc == pytest.approx(cost.request_cost(LIM - 256, 256, 0.3, 1.2).total)
    chunk = M.request_price(300_000, "dense-200k", "chunk", dp, output_tokens=256)
    assert chunk > trunc
    with pytest.raises(ValueError, match="price_in_per_mtok"):
        M.request_price(1000, "msa-tiny", price=M.Price(-1.0, 1.0))


def test_default_prices_are_labelled_assumptions_with_sources():
    for name, p in M.DEFAULT_PRICES.items():
        assert p.assumption and p.source.startswith("assumption:"), name
        assert "minimax" in p.source.lower()


# ----------------------------------------------------------------------------- decision
def test_recommend_verdicts_follow_the_signals():
    assert M.recommend().verdict == "stay"
    assert M.recommend(docs_over_200k=True).verdict == "migrate"
    assert M.recommend(multimodal=True).verdict == "pilot"
    assert M.recommend(iterative_code=True).verdict == "pilot"
    assert M.recommend(multimodal=True, iterative_code=True).verdict == "migrate"
    blocked = M.recommend(docs_over_200k=True, multimodal=True, vendor_viable=False)
    assert blocked.verdict == "stay" and "vendor" in blocked.reasons[0].lower()
    assert "Revisit" in blocked.headline
    with pytest.raises(TypeError, match="multimodal"):
        M.recommend(multimodal="yes")


def test_recommend_reasons_quote_the_evidence():
    ev = {"msa_accuracy_past_limit": 0.97, "dense_policy_accuracy_past_limit": {"error": None, "chunk": 0.5,
                                                                                "truncate_left": 0.25},
          "price_ratio": 2.5, "typical_tokens": 300_000, "limit": LIM}
    rec = M.recommend(docs_over_200k=True, iterative_code=True, evidence=ev)
    text = rec.to_text()
    assert "chunk, gets 50%" in text and "97%" in text and "2.5x" in text
    assert len(rec.reasons) == 2


def _results(**over):
    """A results dict as measure_migration writes it, with made-up but self-consistent numbers."""
    r = {
        "schema": M.SCHEMA, "device": {"name": "Test Card", "slug": "test-card", "type": "cuda"}, "torch": "2.x",
        "date": "2026-11-28", "created": "2026-11-28T00:00:00Z", "limit": LIM, "limit_scaled": False,
        "settings": {"chunk_size": 4096, "max_new_tokens": 16},
        "models": {"msa-tiny": {"n_params": 6_000_000, "weight_bytes": 24_000_000, "dtype": "float32"},
                   "dense-200k": {"n_params": 5_800_000, "weight_bytes": 23_200_000, "dtype": "float32"}},
        "prefill": [
            {"model": "msa-tiny", "length": 4096, "status": "ok", "seconds": 0.05, "peak_bytes": 3e8},
            {"model": "msa-tiny", "length": 65536, "status": "ok", "seconds": 1.0, "peak_bytes": 9e8},
            {"model": "dense-200k", "length": 4096, "status": "ok", "seconds": 0.02, "peak_bytes": 2.5e8},
            {"model": "dense-200k", "length": 65536, "status": "ok", "seconds": 0.9, "peak_bytes": 8e8},
            {"model": "dense-200k", "length": 524288, "status": "refused", "reason": "over the limit"},
        ],
        "niah": [
            {"model": "msa-tiny", "policy": "none", "length": 4096, "depth": 0.5, "accuracy": 1.0, "status": "ok"},
            {"model": "msa-tiny", "policy": "none", "length": 524288, "depth": 0.5, "accuracy": 1.0, "status": "ok"},
            {"model": "dense-200k", "policy": "fits", "length": 4096, "depth": 0.5, "accuracy": 1.0, "status": "ok"},
            {"model": "dense-200k", "policy": "error", "length": 524288, "depth": 0.5, "accuracy": None,
             "status": "refused"},
            {"model": "dense-200k", "policy": "chunk", "length": 524288, "depth": 0.5, "accuracy": 0.5,
             "status": "ok"},
        ],
    }
    r.update(over)
    return r


# ----------------------------------------------------------------------------- measured vs projected
def test_latency_series_label_measured_and_projected():
    lengths = cost.log_lengths(1024, 1 << 20, 30)
    series = M.latency_series(_results(), lengths)
    by = {(s.name, s.kind): s for s in series}
    meas = by[("msa-tiny", M.MEASURED)]
    assert meas.x == [4096, 65536] and meas.y == [0.05, 1.0] and meas.dash == "solid"
    assert meas.label == "msa-tiny (measured)"
    proj = by[("msa-tiny", M.PROJECTED)]
    assert proj.dash == "dash" and proj.label.endswith("(projected)") and proj.x == lengths
    # two measured points, two coefficients: the fit passes through them
    fit = M.fit_latency(_results(), "msa-tiny")
    assert fit(4096) == pytest.approx(0.05, rel=1e-6) and fit(65536) == pytest.approx(1.0, rel=1e-6)
    assert fit.a > 0 and fit.b > 0
    # sub-linear timings (overheads) would need a negative term: the fit keeps both >= 0 instead
    slow = _results()
    slow["prefill"][1]["seconds"] = 0.4
    f2 = M.fit_latency(slow, "msa-tiny")
    assert min(f2.a, f2.b) == 0 and max(f2.a, f2.b) > 0 and f2(1 << 20) > f2(65536)
    dense = by[("dense-200k", M.PROJECTED)]
    assert max(dense.x) <= LIM  # dense cannot be projected past its hard limit ...
    chunk = by[("dense-200k · chunk", M.PROJECTED)]
    assert min(chunk.x) > LIM and all(y > 0 for y in chunk.y)  # ... but its policies can
    assert all(s.kind == M.PROJECTED for s in series if s.policy)
    # a refused prefill is never drawn as measured
    assert 524288 not in by[("dense-200k", M.MEASURED)].x


def test_memory_series_projection_is_anchored_on_the_measurements():
    from msa_lab.model.cache import estimate_prefill
    from msa_lab.model.config import MSA_TINY

    r = _results()
    est = {n: estimate_prefill(MSA_TINY, n, 4096, dtype_bytes=4, weight_bytes=24_000_000).total_bytes
           for n in (4096, 65536, 1 << 20)}
    base = 100 * 2**20  # what the process holds besides the model
    for row in r["prefill"]:
        if row["model"] == "msa-tiny":
            row["peak_bytes"] = est[row["length"]] + base
    series = M.memory_series(r, [4096, 65536, 1 << 20])
    meas = next(s for s in series if s.model == "msa-tiny" and s.kind == M.MEASURED)
    proj = next(s for s in series if s.model == "msa-tiny" and s.kind == M.PROJECTED)
    assert meas.x == [4096, 65536] and meas.dash == "solid"
    assert proj.dash == "dash" and "estimate" in proj.note and "100 MiB" in proj.note
    assert proj.y == [est[n] + base for n in (4096, 65536, 1 << 20)]
    assert proj.y[-1] > 5 * proj.y[0]  # the caches grow with length


def test_accuracy_and_price_series_kinds():
    acc = M.accuracy_series(_results())
    names = {s.name for s in acc}
    assert "dense-200k · error (refused: ContextTooLong)" in names and "dense-200k · chunk" in names
    assert all(s.kind == M.MEASURED for s in acc)
    chunk = next(s for s in acc if s.name == "dense-200k · chunk")
    assert chunk.x == [4096, 524288] and chunk.y == [1.0, 0.5]  # in-limit point, then the policy
    price = M.price_series([1000, 300_000], output_tokens=100)
    assert all(s.kind == M.COMPUTED and s.dash == "dot" for s in price)


def test_evidence_from_results():
    ev = M.evidence_from_results(_results(), typical_tokens=300_000)
    assert ev["msa_accuracy_past_limit"] == 1.0
    assert ev["dense_policy_accuracy_past_limit"] == {"error": None, "chunk": 0.5}
    assert ev["price_ratio"] > 0


# ----------------------------------------------------------------------------- measuring and files
@pytest.fixture(scope="module")
def small_models():
    return {"msa-tiny": Model.from_config(small_config("msa", name="msa-tiny")),
            "dense-200k": Model.from_config(small_config("dense", name="dense-200k", max_context=LIM))}


def test_measure_migration_writes_every_policy_and_refusal(small_models, tmp_path):
    ticks = []
    res = M.measure_migration([256, 512], loaded=small_models, limit=384, max_new_tokens=4, chunk_size=128,
                              out=tmp_path, progress=lambda d, t, w: ticks.append((d, t)))
    path = tmp_path / f"migration-{res['device']['slug']}.json"
    assert res["path"] == str(path) and path.exists()
    d = M.load_results(path)
    assert d["device"]["name"] and d["torch"] and d["date"] and d["limit"] == 384 and d["limit_scaled"]
    pol = {(r["model"], r["policy"], r["length"]): r for r in d["niah"]}
    assert pol[("msa-tiny", "none", 512)]["status"] == "ok"
    assert pol[("dense-200k", "fits", 256)]["status"] == "ok"
    assert pol[("dense-200k", "error", 512)]["status"] == "refused"
    assert pol[("dense-200k", "error", 512)]["accuracy"] is None
    for p in ("truncate_left", "truncate_middle", "chunk"):
        r = pol[("dense-200k", p, 512)]
        assert r["status"] == "ok" and r["used_tokens"] <= 384
    assert pol[("dense-200k", "chunk", 512)]["windows"] >= 2
    pre = {(r["model"], r["length"]): r for r in d["prefill"]}
    assert pre[("msa-tiny", 512)]["seconds"] > 0 and pre[("dense-200k", 512)]["status"] == "refused"
    assert ticks[-1][0] == ticks[-1][1] == len(ticks)  # the progress total was exact
    assert d["partial"] is False and "stopped_before" not in d
    assert d["shared_card"] is False and "upper bound" not in M.summary_text(d)


def test_a_run_on_a_shared_card_says_its_times_are_upper_bounds(small_models, tmp_path):
    res = M.measure_migration([256], loaded=small_models, limit=384, max_new_tokens=4, chunk_size=128, out=tmp_path,
                              shared_card=True)
    d = M.load_results(res["path"])
    assert d["shared_card"] is True and "upper bounds" in M.summary_text(d).splitlines()[0]
    measured = [s for s in M.latency_series(d, [256, 1024]) if s.kind == M.MEASURED]
    assert measured and all("upper bounds" in s.note for s in measured)


def test_a_run_killed_mid_way_leaves_a_file_marked_partial(small_models, tmp_path):
    """The file is rewritten after each length: a run that dies during a later length (here: the
    progress callback raises, as a timeout's kill would stop it) leaves one that says what it lacks."""
    def die_at_512(done, total, what):
        if "512" in what:
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        M.measure_migration([256, 512], loaded=small_models, limit=384, max_new_tokens=4, chunk_size=128,
                            out=tmp_path, progress=die_at_512)
    (path,) = tmp_path.glob("migration-*.json")
    d = M.load_results(path)
    assert d["partial"] is True and d["stopped_before"] == 512
    assert {r["length"] for r in d["niah"]} == {256}


def test_measure_migration_rejects_bad_input(small_models):
    with pytest.raises(ValueError, match="lengths"):
        M.measure_migration([100], loaded=small_models)
    with pytest.raises(ValueError, match="overflow policies"):
        M.measure_migration([256], loaded=small_models, policies=["drop"])
    with pytest.raises(ValueError, match="limit"):
        M.measure_migration([256], loaded=small_models, limit=10)


def test_find_results_picks_the_newest_and_load_or_measure_says_so(tmp_path):
    M.write_results(_results(created="2026-11-28T00:00:00Z"), tmp_path / "migration-old.json")
    M.write_results(_results(created="2026-11-29T00:00:00Z", device={"name": "H200", "slug": "h200", "type": "cuda"}),
                    tmp_path / "migration-h200.json")
    (tmp_path / "migration-broken.json").write_text("{nope")
    (tmp_path / "migration-other.json").write_text(json.dumps({"schema": "else"}))
    assert [p.name for p in M.find_results(tmp_path)] == ["migration-h200.json", "migration-old.json"]
    res = M.load_or_measure(folder=tmp_path)
    assert "migration-h200.json" in res["source"] and "H200" in res["source"]
    with pytest.raises(ValueError, match="not a migration results file"):
        M.load_results(tmp_path / "migration-other.json")


def test_module_and_cli_need_no_plotly_or_widgets():
    code = ("import sys, msa_lab.migration as m; bad = [k for k in sys.modules if k.split('.')[0] in "
            "('plotly', 'ipywidgets', 'matplotlib')]; assert not bad, bad; m.main(['--help'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--lengths" in out.stdout and "--out" in out.stdout


def test_cli_runs_on_the_shipped_checkpoints(tmp_path, torch_path_models):
    out = subprocess.run([sys.executable, "-m", "msa_lab.migration", "--lengths", "512", "--depths", "0.5",
                          "--limit", "400", "--max-new-tokens", "8", "--out", str(tmp_path) + "/"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={k: v for k, v in __import__("os").environ.items() if k != "MSA_LAB_CHECKPOINTS"})
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = tmp_path.glob("migration-*.json")
    assert M.load_results(path)["niah"]


# ----------------------------------------------------------------------------- the widget
def test_migration_view_is_driven_by_its_controls(tmp_path):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("plotly")
    from msa_lab.widgets.migration import MigrationView

    v = MigrationView(_results(), typical_tokens=300_000, output_tokens=256)
    fig = v.figure
    names = [t.name for t in fig.data]
    for label in ("msa-tiny (measured)", "msa-tiny (projected)", "dense-200k · chunk (projected)"):
        assert label in names
    for t in fig.data:
        if t.name.endswith("(measured)"):
            assert t.line.dash == "solid" and "markers" in t.mode
        elif t.name.endswith("(projected)"):
            assert t.line.dash == "dash" and t.mode == "lines"
    # editing a price redraws the price panel only
    i = v._price_index
    before, lat = list(fig.data[i].y), list(fig.data[1].y)
    v.price_in["msa-tiny"].value = 3.0
    assert list(fig.data[i].y) != before and list(fig.data[1].y) == lat
    edited = M.Price(3.0, 2.4, 512_000, 2.0)
    assert fig.data[i].y[-1] == pytest.approx(M.request_price(1 << 20, "msa-tiny", price=edited, output_tokens=256))
    assert v.prices()["msa-tiny"].source == "your price"
    # toggles -> recommendation
    assert v.recommendation.verdict == "stay"
    v.docs_over_200k.value = True
    assert v.recommendation.verdict == "migrate" and "chunk, gets 50%" in v.verdict.value
    v.vendor_viable.value = False
    assert v.recommendation.verdict == "stay" and "vendor" in v.verdict.value.lower()
    assert "refused" in v.price_line.value  # 300K tokens: dense-200k refuses under "error"
    path = v.save_html(str(tmp_path / "m.html"))
    assert Path(path).stat().st_size > 100_000  # plotly.js embedded


def test_migration_view_rejects_a_non_results_dict():
    pytest.importorskip("ipywidgets")
    from msa_lab.widgets.migration import MigrationView

    with pytest.raises(ValueError, match="measure_migration"):
        MigrationView({"niah": []})


def test_results_measured_with_other_checkpoints_are_flagged(tmp_path):
    """A results file names the sha256 of each model it measured; when data/checkpoints holds another
    checkpoint now, the source line says so instead of passing old figures off as the current models'."""
    from msa_lab.model.checkpoint import read_meta

    now = read_meta("msa-tiny")["sha256"]
    res = _results(created="2026-11-28T00:00:00Z")
    res["models"] = {"msa-tiny": {"sha256": now}, "dense-200k": {"sha256": "0" * 64}}
    M.write_results(res, tmp_path / "migration-x.json")
    out = M.load_or_measure(folder=tmp_path)
    assert out["stale_models"] == ["dense-200k"] and "earlier checkpoints of dense-200k" in out["source"]
    res["models"]["dense-200k"]["sha256"] = read_meta("dense-200k")["sha256"]
    M.write_results(res, tmp_path / "migration-x.json")
    assert "stale_models" not in M.load_or_measure(folder=tmp_path)
