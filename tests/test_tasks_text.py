"""Long-context text tasks: NIAH variants, variable tracking and the haystack source."""
import json
import math
import os
import re
import time

import pytest

from msa_lab.tasks import iter_niah, iter_task, iter_variable_tracking, text_tokens
from msa_lab.tasks.haystack import HaystackSource, insert_at_depths, snap_window, stdlib_dir

VARIANTS = ("single", "multi_key", "multi_value", "multi_query")


def _rows(it):
    return [(ex["id"], ex["prompt"], ex["answer"], ex["meta"]) for ex in it]


def _haystack_of(ex):
    """Prompt bytes with every insert removed and the question cut off: the haystack as taken."""
    meta = json.loads(ex["meta"])
    spans = [nd["byte_span"] for nd in meta.get("needles", [])]
    spans += [st["byte_span"] for ch in meta.get("chains", []) for st in ch["statements"]]
    data = ex["prompt"].encode()
    out, cursor = [], 0
    for s, e in sorted(spans):
        out.append(data[cursor:s])
        cursor = e
    out.append(data[cursor:])
    hay = b"".join(out)[: meta["haystack"]["bytes"]]
    return hay, meta


# ---------------------------------------------------------------------------- NIAH
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length", [700, 5000])
def test_niah_exact_length_and_needles_present(variant, length):
    for ex in iter_niah(3, 0, variant=variant, length=length):
        meta = json.loads(ex["meta"])
        assert text_tokens(ex["prompt"]) == length
        data = ex["prompt"].encode()
        for nd in meta["needles"]:
            s, e = nd["char_span"]
            assert ex["prompt"][s:e] == nd["text"] + "\n"
            bs, be = nd["byte_span"]
            assert data[bs:be] == (nd["text"] + "\n").encode()
            assert ex["prompt"].count(nd["text"]) == 1
            assert nd["value"] in nd["text"] and nd["key"] in nd["text"]
        assert ex["prompt"].endswith(meta["question"])


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_niah_depth_within_snap_tolerance(depth):
    length = 6000
    for ex in iter_niah(4, 1, length=length, depth=depth):
        hay, meta = _haystack_of(ex)
        size = meta["haystack"]["bytes"]
        (nd,) = meta["needles"]
        # measured independently: haystack bytes that precede the needle in the prompt
        before = nd["byte_span"][0]
        assert abs(before / size - depth) <= (snap_window(size) + 1) / size
        assert math.isclose(nd["actual_depth"], before / size)


def test_niah_list_of_depths_one_per_needle():
    depths = [0.2, 0.4, 0.6, 0.8]
    ex = next(iter_niah(1, 2, variant="multi_query", length=8000, depth=depths))
    meta = json.loads(ex["meta"])
    size = meta["haystack"]["bytes"]
    for want, nd in zip(depths, meta["needles"]):
        assert abs(nd["actual_depth"] - want) <= (snap_window(size) + 1) / size


def test_niah_answers_match_the_question():
    for variant in VARIANTS:
        for ex in iter_niah(4, 3, variant=variant, length=3000):
            meta = json.loads(ex["meta"])
            needles, q = meta["needles"], meta["question"]
            if variant in ("single", "multi_key"):
                (asked,) = [nd for nd in needles if nd["key"] in q]
                assert ex["answer"] == asked["value"]
            elif variant == "multi_value":
                assert len({nd["key"] for nd in needles}) == 1
                in_order = sorted(needles, key=lambda nd: ex["prompt"].index(nd["text"]))
                assert ex["answer"] == ", ".join(nd["value"] for nd in in_order)
            else:
                in_question = sorted(needles, key=lambda nd: q.index(nd["key"]))
                assert ex["answer"] == ", ".join(nd["value"] for nd in in_question)


def test_niah_haystack_is_real_stdlib_text():
    root = stdlib_dir()
    for ex in iter_niah(3, 4, length=20000):
        hay, meta = _haystack_of(ex)
        assert meta["haystack"]["source"] == "stdlib" and meta["haystack"]["root"] == root
        cursor = 0
        for piece in meta["haystack"]["pieces"]:
            assert piece["file"].endswith(".py") and "site-packages" not in piece["file"]
            with open(os.path.join(root, piece["file"]), "rb") as f:
                src = f.read()[piece["start"]:]
            got = hay[cursor:cursor + piece["bytes"]]
            n = min(len(got), len(src))
            assert n > 0 and got[:n] == src[:n]
            cursor += piece["bytes"]
        assert hay.endswith(b"\n") and len(hay) == meta["haystack"]["bytes"]


def test_niah_directory_haystack_with_multibyte_text(tmp_path):
    for k in range(5):
        (tmp_path / f"doc{k}.txt").write_text("".join(f"Ligne {k}.{j}: café, 漢字, ß and ✓.\n" for j in range(60)))
    (tmp_path / "skip.txt").write_text("has an <image> placeholder\n" * 200)
    (tmp_path / "binary.txt").write_bytes(b"\0\1\2" * 500)
    for ex in iter_niah(6, 5, variant="multi_key", length=2500, haystack_dir=str(tmp_path)):
        meta = json.loads(ex["meta"])
        assert text_tokens(ex["prompt"]) == 2500
        assert {p["file"] for p in meta["haystack"]["pieces"]} <= {f"doc{k}.txt" for k in range(5)}
        for nd in meta["needles"]:
            s, e = nd["char_span"]
            assert ex["prompt"][s:e] == nd["text"] + "\n"
        assert "<image>" not in ex["prompt"]
    with pytest.raises(ValueError, match="only .* bytes"):
        next(iter_niah(1, 0, length=200_000, haystack_dir=str(tmp_path)))


def test_niah_one_million_tokens_is_quick():
    t0 = time.perf_counter()
    ex = next(iter_niah(1, 6, length=1_000_000, depth=0.37))
    elapsed = time.perf_counter() - t0
    meta = json.loads(ex["meta"])
    assert text_tokens(ex["prompt"]) == 1_000_000
    (nd,) = meta["needles"]
    assert abs(nd["actual_depth"] - 0.37) < 1e-3
    assert elapsed < 10, f"1M-token NIAH example took {elapsed:.1f}s"


def test_niah_synthetic_filler_only_for_training():
    with pytest.raises(ValueError, match="training only"):
        iter_niah(1, 0, synthetic_filler=True)
    ex = next(iter_niah(1, 0, length=1500, synthetic_filler=True, split="train"))
    meta = json.loads(ex["meta"])
    assert meta["haystack"]["source"] == "synthetic" and text_tokens(ex["prompt"]) == 1500


def test_niah_deterministic_and_seed_dependent():
    a = _rows(iter_niah(3, 7, variant="multi_value", length=2000))
    assert a == _rows(iter_niah(3, 7, variant="multi_value", length=2000))
    assert a[:2] == _rows(iter_niah(2, 7, variant="multi_value", length=2000))  # example i does not depend on n
    b = _rows(iter_niah(3, 8, variant="multi_value", length=2000))
    assert all(x[1] != y[1] and x[2] != y[2] for x, y in zip(a, b))


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(depth=1.5), "depth"),
        (dict(depth=-0.1), "depth"),
        (dict(depth=float("nan")), "depth"),
        (dict(depth=[0.1, 0.2]), "one per needle"),
        (dict(length=150), "too small"),
        (dict(length=0), "length"),
        (dict(variant="multi"), "variant"),
        (dict(variant="multi_key", num_needles=1), "num_needles"),
        (dict(num_needles=3), "num_needles"),
        (dict(value_kind="word"), "value_kind"),
        (dict(haystack_dir="/no/such/dir"), "not a directory"),
        (dict(split="test"), "split"),
    ],
)
def test_niah_bad_options_raise(opts, match):
    with pytest.raises(ValueError, match=match):
        iter_niah(1, 0, **opts)


def test_bad_n_and_seed_raise():
    with pytest.raises(ValueError, match="n must be"):
        iter_niah(-1, 0)
    with pytest.raises(ValueError, match="seed must be"):
        iter_niah(1, 1.5)


# ---------------------------------------------------------------------------- variable tracking
def test_variable_tracking_answer_follows_the_chain_in_the_text():
    for ex in iter_variable_tracking(4, 0, length=4000, num_chains=3, num_hops=3):
        meta = json.loads(ex["meta"])
        assert text_tokens(ex["prompt"]) == 4000
        value = re.search(r"assigned the value (\d+)", meta["question"]).group(1)
        # resolve every assignment found in the prompt, top to bottom, like a reader would
        bound: dict[str, str] = {}
        for name, rhs in re.findall(r"^VAR ([A-Z]{5}) = (\w+)\.$", ex["prompt"], flags=re.M):
            bound[name] = bound.get(rhs, rhs)
        holders = [n for n, v in bound.items() if v == value]
        assert sorted(holders) == sorted(ex["answer"].split(", "))
        assert len(holders) == 4
        for ch in meta["chains"]:
            starts = [st["byte_span"][0] for st in ch["statements"]]
            assert starts == sorted(starts)  # each chain reads top to bottom


def test_variable_tracking_depth_range_and_bad_options():
    ex = next(iter_variable_tracking(1, 1, length=6000, depth_range=(0.5, 0.75)))
    meta = json.loads(ex["meta"])
    size = meta["haystack"]["bytes"]
    tol = (snap_window(size) + 1) / size
    for st in meta["chains"][0]["statements"]:
        assert 0.5 - tol <= st["actual_depth"] <= 0.75 + tol
    for opts, match in [
        (dict(depth_range=(0.8, 0.2)), "lo > hi"),
        (dict(depth_range=(0.0, 2.0)), "depth_range"),
        (dict(num_hops=-1), "num_hops"),
        (dict(length=100), "too small"),
    ]:
        with pytest.raises(ValueError, match=match):
            iter_variable_tracking(1, 0, **opts)


def test_variable_tracking_deterministic():
    a = _rows(iter_task("variable_tracking", 2, 3, length=2000))
    assert a == _rows(iter_task("variable_tracking", 2, 3, length=2000))
    assert a != _rows(iter_task("variable_tracking", 2, 4, length=2000))


# ---------------------------------------------------------------------------- haystack internals
def test_insert_at_depths_keeps_order_and_offsets():
    hay = b"".join(b"line %03d of the haystack\n" % i for i in range(100))
    inserts = [(0.5, b"B\n"), (0.5, b"C\n"), (0.1, b"A\n")]
    ctx, spans = insert_at_depths(hay, inserts)
    assert len(ctx) == len(hay) + 6
    assert [ctx[s["byte_span"][0]:s["byte_span"][1]] for s in spans] == [b"B\n", b"C\n", b"A\n"]
    assert spans[0]["byte_span"][0] < spans[1]["byte_span"][0]  # tie keeps input order
    for s in spans:
        assert s["haystack_offset"] == 0 or hay[s["haystack_offset"] - 1:s["haystack_offset"]] == b"\n"


def test_haystack_source_take_is_exact():
    import random

    src = HaystackSource()
    for n in (1, 2, 50, 4097):
        text, pieces = src.take(n, random.Random(n))
        assert len(text) == n and text.endswith(b"\n")
        text.decode("utf-8")


@pytest.mark.parametrize("variant", ["single", "multi_key", "multi_query"])
def test_keyed_answer_scores_like_the_plain_answer(variant):
    """The trainer's "<key> is: <value>" targets hold every expected value, in the question's order."""
    from msa_lab.eval import answer_ok
    from msa_lab.tasks.niah import iter_niah, keyed_answer

    for ex in iter_niah(3, 11, variant=variant, length=1500):
        meta = json.loads(ex["meta"])
        keyed = keyed_answer(ex)
        assert answer_ok(keyed, ex["answer"])
        assert [p.split(" is: ")[1] for p in keyed.split(", ")] == ex["answer"].split(", ")
        assert all(f"{n['key']} is: {n['value']}" in n["text"] for n in meta["needles"] if n["queried"])
        assert not answer_ok(keyed.replace(meta["answers"][0], "0000000"), ex["answer"])
