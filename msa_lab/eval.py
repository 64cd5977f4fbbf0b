"""Evaluate a model: `python -m msa_lab.eval --model msa-tiny [--quick]`.

  niah_grid        NIAH accuracy over a depth x length grid -> pandas DataFrame; niah_heatmap -> plotly figure
  gui_click_accuracy   share of GUI actions of the right kind whose point lies inside the target box
  image_qa_accuracy    exact-match accuracy on image QA
  indexer_recall   share of the dense attention mass inside the selected blocks (where dense fits)
  position_probe   the answer's accuracy/log-prob when the needle sits a simulated distance d back
                   (position ids jumped by d, PoSE-style): the long-context hook of msa_lab.model.net
Results go to data/eval/<model>.json (+ CSV per table) with the checkpoint card and library versions.
pandas and plotly are imported lazily; the tasks come from msa_lab.tasks (fallback: synthetic NIAH).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from .api import ActionParseError, Model, load_model
from .model.checkpoint import REPO_ROOT
from .model.tokens import EOS, encode_example

EVAL_DIR = REPO_ROOT / "data" / "eval"


def _examples(task: str, n: int, seed: int, **opts) -> List[dict]:
    try:
        from .tasks import iter_task
    except Exception:  # noqa: BLE001 - fall back to the built-in generator for NIAH only
        if not task.startswith("niah"):
            raise RuntimeError(f"msa_lab.tasks is unavailable, so task {task!r} cannot be evaluated here.") from None
        from .model.synthetic import iter_synthetic_niah

        return list(iter_synthetic_niah(n, seed, length=opts.get("length", 1024), depth=opts.get("depth")))
    return list(iter_task(task, n, seed, **opts))


# Room for a keyed NIAH answer, "<key> is: <value>" (~35 bytes; msa_lab.tasks.niah.keyed_answer), which the
# trained models give. Generation stops at EOS, so the headroom costs nothing.
NIAH_MAX_NEW_TOKENS = 48


def answer_ok(pred: str, answer: str) -> bool:
    """NIAH scoring: every comma-separated expected value appears in the prediction.

    Containment, not equality, so an answer phrased "zesty-canyon is: 4551793" scores like "4551793"
    (RULER scores the same way). Every NIAH check in msa-lab (eval, migration, widgets) uses this.
    """
    return all(part.strip() in pred for part in answer.split(",") if part.strip())



def niah_grid(model: Model, lengths: Sequence[int] = (1024, 4096, 16384), depths: Sequence[float] = (0.0, 0.25, 0.5,
              0.75, 1.0), n: int = 2, seed: int = 0, variant: str = "single", chunk_size: int = 4096,
              overflow: str = "error", max_new_tokens: int = NIAH_MAX_NEW_TOKENS):
    """DataFrame [length, depth, n, accuracy, seconds]: greedy answers, exact value match."""
    import pandas as pd

    rows = []
    for length in lengths:
        for depth in depths:
            exs = _examples(f"niah_{variant}", n, seed, length=length, depth=depth)
            t0, hits = time.perf_counter(), 0
            for ex in exs:
                pred = model.generate(ex["prompt"], max_new_tokens=max_new_tokens, chunk_size=chunk_size,
                                      overflow=overflow)
                hits += answer_ok(pred, ex["answer"])
            rows.append({"length": length, "depth": depth, "n": len(exs), "accuracy": hits / max(1, len(exs)),
                         "seconds": (time.perf_counter() - t0) / max(1, len(exs))})
    return pd.DataFrame(rows)


def niah_heatmap(df, title: str = "NIAH accuracy"):
    """Plotly heatmap of a niah_grid DataFrame (depth down, length across)."""
    import plotly.graph_objects as go

    piv = df.pivot_table(index="depth", columns="length", values="accuracy")
    fig = go.Figure(go.Heatmap(z=piv.values, x=[f"{c:,}" for c in piv.columns], y=[f"{d:.2f}" for d in piv.index],
                               zmin=0, zmax=1, colorscale="RdYlGn", colorbar={"title": "accuracy"}))
    fig.update_layout(title=title, xaxis_title="context length (tokens)", yaxis_title="needle depth")
    return fig


def gui_click_accuracy(model: Model, n: int = 50, seed: int = 0) -> dict:
    """{accuracy, kind_accuracy, parse_failures, n}: right kind and point inside the target box."""
    hits = kinds = fails = 0
    per_target: dict = {}  # element kind (button, field, list, ...) -> hits
    exs = _examples("gui", n, seed)
    for ex in exs:
        meta = json.loads(ex["meta"])
        want = json.loads(ex["answer"])
        target = per_target.setdefault(meta["elements"][meta["target_index"]]["kind"], [])
        try:
            act = model.act(ex["images"][0], meta["instruction"])
        except ActionParseError:
            fails += 1
            target.append(False)
            continue
        x0, y0, x1, y1 = meta["box"]  # x1, y1 exclusive
        kinds += act.kind == want["kind"]
        hit = act.kind == want["kind"] and act.x is not None and x0 <= act.x < x1 and y0 <= act.y < y1
        hits += hit
        target.append(bool(hit))
    return {"accuracy": hits / max(1, len(exs)), "kind_accuracy": kinds / max(1, len(exs)),
            "parse_failures": fails, "n": len(exs),
            "by_target": {k: round(sum(v) / len(v), 3) for k, v in sorted(per_target.items())}}


def _norm(s: str) -> str:
    return s.strip().strip(".").strip().lower()


def image_qa_accuracy(model: Model, n: int = 50, seed: int = 0) -> dict:
    """{accuracy, n, by_kind: {count|colour|shape|word: accuracy}}: exact match after trimming and lower-casing."""
    exs = _examples("image_qa", n, seed)
    per_kind: dict = {}
    for ex in exs:
        ok = _norm(model.generate(ex["prompt"], ex["images"], max_new_tokens=24)) == _norm(ex["answer"])
        per_kind.setdefault(json.loads(ex["meta"])["kind"], []).append(ok)
    hits = sum(sum(v) for v in per_kind.values())
    return {"accuracy": hits / max(1, len(exs)), "n": len(exs),
            "by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(per_kind.items())}}


@contextlib.contextmanager
def selecting_top_k(model: Model, top_k: Optional[int]):
    """Run ``model`` with ``top_k`` blocks per query (main branch and indexer) inside the block.

    The weights do not depend on k, so the trained indexer can be read at another k: the issue's
    recall is defined at k = 16, while msa-tiny's config (block 64, 8 blocks) was trained at 8.
    """
    old = model.config.top_k
    if top_k is None or top_k == old:
        yield model
        return
    try:
        model.engine.cfg = model.net.set_inference_config(top_k=top_k)  # the engine sizes caches by it
        yield model
    finally:
        model.engine.cfg = model.net.set_inference_config(top_k=old)


def indexer_recall(model: Model, lengths: Sequence[int] = (1024, 2048), n: int = 1, seed: int = 0,
                   top_k: Optional[int] = None):
    """DataFrame [length, top_k, layer, group, recall, ceiling] (MSA models).

    recall: the share of dense attention mass inside the selected blocks; ceiling: the most any
    top_k blocks could hold (api.selection_ceiling). ``top_k`` reads the indexer at another k
    (default: the model's own).
    """
    import pandas as pd

    from .api import selection_ceiling

    if not model.config.sparse:
        raise ValueError(f"{model.name} is dense: it selects no blocks, so it has no indexer recall.")
    rows = []
    with selecting_top_k(model, top_k):
        k = model.config.top_k
        for length in lengths:
            for ex in _examples("niah_single", n, seed, length=length):
                cap = model.capture(ex["prompt"], dense_limit=max(lengths) + 16)
                for layer, (per_group, mass) in enumerate(zip(cap.recall, cap.block_mass)):
                    for g, (r, c) in enumerate(zip(per_group, selection_ceiling(mass, k))):
                        rows.append({"length": length, "top_k": k, "layer": layer, "group": g, "recall": float(r),
                                     "ceiling": float(c)})
    return pd.DataFrame(rows).groupby(["length", "top_k", "layer", "group"], as_index=False)[
        ["recall", "ceiling"]].mean()


@torch.no_grad()
def position_probe(model: Model, distances: Iterable[int] = (0, 1_000, 10_000, 100_000, 1_000_000), n: int = 8,
                   length: int = 1024, seed: int = 0):
    """DataFrame [distance, n, accuracy, answer_logprob]: NIAH at ``length`` tokens with every position
    after the needle shifted by ``distance`` (a PoSE-style jump), scored teacher-forced in one forward.

    accuracy: the greedy next token equals the answer at every answer position.
    """
    import pandas as pd

    cfg, dev = model.config, model.device
    exs = _examples("niah_single", n, seed, length=length, depth=0.1)
    # teacher-force the answer in the format the model was trained to give (train.model_answer)
    fmt = model.card.get("train", {}).get("answer_format", "plain")
    rows = []
    for d in distances:
        ok, lp = 0, 0.0
        for ex in exs:
            answer = ex["answer"]
            if fmt == "keyed":
                from .tasks.niah import keyed_answer

                answer = keyed_answer(ex)
            enc, mask = encode_example(ex["prompt"], [], answer, image_size=cfg.image_size,
                                       patch_size=cfg.patch_size)
            meta = json.loads(ex["meta"])
            cut = _needle_end(ex, meta, len(enc))
            pos = torch.arange(len(enc))
            pos[cut:] += int(d)
            logits = model.net(enc.ids[None].to(dev), positions=pos.to(dev))[0, :-1].float().cpu()
            tgt = enc.ids[1:]
            m = mask[1:] & (tgt != EOS)
            ok += bool((logits.argmax(-1)[m] == tgt[m]).all())
            lp += float(torch.log_softmax(logits, -1)[m, tgt[m]].mean())
        rows.append({"distance": int(d), "n": len(exs), "accuracy": ok / len(exs), "answer_logprob": lp / len(exs)})
    return pd.DataFrame(rows)


def _copied_mask(answer: str, cue: int) -> List[bool]:
    """Per answer byte (+ EOS): True past each string's cue, where only a copy from the source line helps."""
    out: List[bool] = []
    for j, s in enumerate(answer.split(", ")):
        out += [False, False] if j else []  # the ", " separator
        out += [i >= cue for i in range(len(s))]
    return out + [False]  # EOS


@torch.no_grad()
def copy_scores(model: Model, task: str = "copy_lines", length: int = 1024, n: int = 4, seed: int = 777,
                mode: str = "msa") -> dict:
    """Teacher-forced copy check (one forward per example, no generation): greedy next-byte accuracy
    and loss on the answer, and on the "copied" bytes alone (past each string's 4-byte cue).

    task: "copy_lines" | "copy_random" | "copy" (msa_lab.model.synthetic.iter_copy with no haystack, a
    random-ASCII one or a stdlib one). mode: "msa" (the model's attention through the public ops) or
    "dense" (every key; msa-tiny's training warm-up). Chance on a copied byte: accuracy 1/36, ln 36 nats.
    """
    import torch.nn.functional as F

    from .model.synthetic import iter_copy

    hay = {"copy_lines": "none", "copy_random": "random", "copy": "stdlib"}
    if task not in hay:
        raise ValueError(f"task must be one of {sorted(hay)}, got {task!r}")
    if mode not in ("msa", "dense"):
        raise ValueError(f"mode must be 'msa' or 'dense', got {mode!r}")
    cfg, net = model.config, model.net
    rows = []
    for ex in iter_copy(n, seed, length=length, num_strings=4, haystack=hay[task]):
        enc, amask = encode_example(ex["prompt"], [], ex["answer"], image_size=cfg.image_size,
                                    patch_size=cfg.patch_size)
        ids = enc.ids[None].to(model.device)
        logits = net(ids, mode="train_dense" if mode == "dense" else "ops")[0, :-1].float().cpu()
        tgt, m = enc.ids[1:], amask[1:]
        ce = F.cross_entropy(logits, tgt, reduction="none")
        hit = (logits.argmax(-1) == tgt).float()
        cm = torch.zeros_like(m)
        cm[m.nonzero()[:, 0]] = torch.tensor(_copied_mask(ex["answer"], 4))
        rows.append((hit[m].mean(), ce[m].mean(), hit[cm].mean(), ce[cm].mean()))
    acc, loss, cacc, closs = (round(float(torch.stack(c).mean()), 4) for c in zip(*rows))
    return {"task": task, "length": length, "mode": mode, "n": n, "acc": acc, "loss": loss, "copied_acc": cacc,
            "copied_loss": closs}


def _needle_end(ex: dict, meta: dict, n_tokens: int) -> int:
    """Token index just after the (first) needle: the jump goes between needle and question."""
    spans = meta.get("needles") or meta.get("spans") or []
    for s in spans if isinstance(spans, list) else []:
        span = s.get("byte_span") or s.get("span") if isinstance(s, dict) else None
        if span:
            return 1 + int(span[1])  # +1 for BOS
    return max(1, int(0.2 * n_tokens))  # depth 0.1: the needle sits in the first fifth


def _versions() -> dict:
    import msa_lab

    v = {"msa_lab": msa_lab.__version__, "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
    return v


def default_lengths(model: Model, quick: bool = False) -> Tuple[int, ...]:
    """The NIAH grid's lengths: to 64K on a CPU; on a GPU to 1M (MSA) or to the dense model's limit."""
    if quick:
        return (1024, 4096)
    if model.device.type != "cuda":
        return (1024, 4096, 16384, 65536)
    # the dense model's longest prompt leaves room for the answer inside its limit, so nothing is truncated
    top = model.config.max_context - NIAH_MAX_NEW_TOKENS if model.config.max_context else 1 << 20
    return tuple(n for n in (4096, 16384, 65536, 262144) if n < top) + (top,)


def recall_lengths(model: Model, quick: bool = False) -> Tuple[int, ...]:
    """The eval's indexer-recall lengths: each longer than 16 blocks, so that k = 16 leaves blocks out.

    At 16 * block_size tokens or fewer, k = 16 selects every block and recall is 1 by construction; a mean
    that took such a length in would report more than the indexer does (msa-tiny: 1,024 tokens, which the
    eval averaged in until the ninth session).
    """
    shortest = 17 * model.config.block_size
    lengths = tuple(n for n in (2048, 4096, 8192) if n >= shortest) or (2 * shortest,)
    return lengths[:1] if quick else lengths


def run_eval(name: str, *, quick: bool = False, device=None, out_dir: Optional[Path] = None,
             checkpoint_dir=None, lengths: Optional[Sequence[int]] = None, n: Optional[int] = None,
             long_n: Optional[int] = None, niah_from=None, niah_device: Optional[str] = None) -> dict:
    """Run the evals that apply to ``name``; save data/eval/<name>.json (+ CSVs); refresh the model card.

    NIAH: ``n`` examples per (length, depth) up to 64K and ``long_n`` beyond (a 1M-token answer takes
    seconds even on a GPU). The dense model's lengths stop at its limit; past it, msa_lab.migration
    measures each truncation/chunking policy.
    niah_from: a NIAH grid CSV (<name>.niah.partial.csv or .niah.csv) that an eval of the same weights already
    measured, used instead of measuring it again, for instance a GPU run whose time box ended after its grid;
    ``niah_device`` (required with it) says where it was measured, and both go into the JSON and the card.
    """
    import pandas as pd

    earlier = None
    if niah_from is not None:
        if not niah_device:
            raise ValueError("niah_from needs niah_device: say where that grid was measured (card, torch, triton).")
        if lengths or n or long_n:
            raise ValueError("niah_from takes the whole NIAH grid from its file: leave out lengths, n and long_n.")
        earlier = pd.read_csv(niah_from)
        want = ["length", "depth", "n", "accuracy", "seconds"]
        if list(earlier.columns) != want or earlier.empty:
            raise ValueError(f"{niah_from}: not a NIAH grid (columns {want}, one row per length and depth); "
                             f"got columns {list(earlier.columns)} and {len(earlier)} rows.")
    model = load_model(name, device, checkpoint_dir=checkpoint_dir)
    out_dir = Path(out_dir or EVAL_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    lengths = tuple(lengths or default_lengths(model, quick))
    n = n or (1 if quick else 4)
    long_n = long_n or max(1, n // 2)
    chunk = 16384 if model.device.type == "cuda" else 4096
    grids = [] if earlier is None else [earlier]
    for length in lengths if earlier is None else ():
        grids.append(niah_grid(model, lengths=[length], n=n if length <= 65536 else long_n, chunk_size=chunk,
                               overflow="error" if model.config.sparse else "truncate_middle"))
        # a long grid killed by a time box still leaves the lengths it finished
        pd.concat(grids, ignore_index=True).to_csv(out_dir / f"{name}.niah.partial.csv", index=False)

    tables = {"niah": pd.concat(grids, ignore_index=True),
              "position_probe": position_probe(model, n=2 if quick else 8)}
    summary = {"niah_accuracy": round(float(tables["niah"]["accuracy"].mean()), 3)}
    if model.config.sparse:
        # at the model's own k and at the k = 16 (the same trained indexer, read at 16 blocks)
        rec_lengths = recall_lengths(model, quick)
        rec = pd.concat([indexer_recall(model, lengths=rec_lengths, top_k=k)
                         for k in sorted({model.config.top_k, 16})], ignore_index=True)
        tables["indexer_recall"] = rec
        for k, part in rec.groupby("top_k"):
            tag = "" if k == model.config.top_k else f"_k{k}"
            summary[f"indexer_recall{tag}"] = round(float(part["recall"].mean()), 3)
            summary[f"indexer_recall_ceiling{tag}"] = round(float(part["ceiling"].mean()), 3)
    gui = gui_click_accuracy(model, n=10 if quick else 100)
    iqa = image_qa_accuracy(model, n=10 if quick else 100)
    summary.update({"gui_click_accuracy": round(gui["accuracy"], 3), "image_qa_accuracy": round(iqa["accuracy"], 3)})
    for k, df in tables.items():
        df.to_csv(out_dir / f"{name}.{k}.csv", index=False)
    partial = out_dir / f"{name}.niah.partial.csv"
    if earlier is None or partial.resolve() != Path(niah_from).resolve():  # never delete the grid it was given
        partial.unlink(missing_ok=True)
    result = {"model": name, "summary": summary, "gui": gui, "image_qa": iqa,
              "tables": {k: df.to_dict(orient="records") for k, df in tables.items()},
              "card": model.card, "versions": _versions(), "quick": quick,
              **({"niah_source": {"file": Path(niah_from).name, "device": niah_device}} if earlier is not None else {}),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    from .train import render_card

    ck = Path(checkpoint_dir) if checkpoint_dir else REPO_ROOT / "data" / "checkpoints"
    render_card(ck, out_dir)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="msa-lab eval", description="Evaluate a trained msa-lab model.")
    ap.add_argument("--model", default="msa-tiny", choices=["msa-tiny", "dense-200k"])
    ap.add_argument("--quick", action="store_true", help="small grid (minutes on a CPU)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--lengths", default=None, help="NIAH lengths, e.g. 4K,64K,1M (default: by device and model)")
    ap.add_argument("--n", type=int, default=None, help="NIAH examples per length and depth up to 64K (default 4)")
    ap.add_argument("--long-n", type=int, default=None, help="... and past 64K (default n // 2)")
    ap.add_argument("--niah-from", default=None, metavar="CSV",
                    help="take the NIAH grid from an earlier eval of the same weights (e.g. a GPU run's "
                         "<name>.niah.partial.csv) instead of measuring it; needs --niah-device")
    ap.add_argument("--niah-device", default=None, help="where --niah-from's grid was measured (card, torch, triton)")
    a = ap.parse_args(argv)
    lengths = None
    if a.lengths:
        from .bench import parse_lengths

        lengths = parse_lengths(a.lengths)
    res = run_eval(a.model, quick=a.quick, device=a.device, out_dir=a.out_dir, checkpoint_dir=a.checkpoint_dir,
                   lengths=lengths, n=a.n, long_n=a.long_n, niah_from=a.niah_from, niah_device=a.niah_device)
    print(json.dumps(res["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
