"""Migrating from a 200K dense model (``dense-200k``) to MSA (``msa-tiny``): measure, project, price, decide.

    python -m msa_lab.migration --lengths 4K,16K,64K,200000,256K,512K,1M --out data/eval/

Four parts, none of which needs plotly or ipywidgets (the widget is msa_lab.widgets.migration):

  measure_migration  NIAH accuracy per model / overflow policy / length, prefill seconds and peak memory per
                     model / length, on this device -> a results dict (schema ``msa-lab-migration/1``), written
                     to ``<out>/migration-<device>.json`` after every length (a stopped run keeps what it did).
  projections        prefill latency past the measured lengths: t(n) = a*n + b*F(n), fitted to the measured
                     points, where F(n) is the attention FLOPs of msa_lab.cost (dense: every visible key; MSA:
                     index branch + top_k blocks) and a*n the per-token work (weights); memory: the engine's
                     estimate (msa_lab.model.cache) plus the measured baseline. Every series says whether it
                     is "measured" or "projected".
  prices             price per request from prices per million tokens (msa_lab.cost.request_cost), with the
                     tokens each overflow policy really bills (chunking pays every window and every answer).
  recommend          the decision signals (documents over 200K, multimodal inputs, iterative code work,
                     vendor viability) -> a verdict with its reasons.

A CPU cannot prefill 204,800 tokens of a dense model in reasonable time, so ``limit=`` scales the dense
model's hard limit down (e.g. to 1,536 tokens) to show what each policy does at small lengths; results
made that way carry ``limit_scaled: true`` and the plots say so. The real figures come from a GPU run.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from . import cost
from .bench import fmt_length, parse_lengths, slugify
from .eval import NIAH_MAX_NEW_TOKENS, answer_ok
from .model.checkpoint import REPO_ROOT
from .model.config import DENSE_200K_LIMIT, MODEL_CONFIGS, ModelConfig
from .model.engine import OVERFLOW_POLICIES, ContextTooLong

SCHEMA = "msa-lab-migration/1"
EVAL_DIR = REPO_ROOT / "data" / "eval"
MODELS = ("msa-tiny", "dense-200k")
PAST_LIMIT_POLICIES = OVERFLOW_POLICIES  # error, truncate_left, truncate_middle, chunk
FITS = "fits"  # policy label of a dense row that needed no policy (input within the limit)
NONE = "none"  # policy label of msa-tiny rows (no hard limit)
MEASURED, PROJECTED, COMPUTED = "measured", "projected", "computed"  # COMPUTED: arithmetic on your prices


# ============================================================================ prices
@dataclass(frozen=True)
class Price:
    """Prices per million tokens of one model, and where they come from.

    long_context_threshold / long_context_multiplier: a request whose input exceeds the threshold is billed
    at ``multiplier`` times every rate (MiniMax bills M3 requests over 512K input tokens at 2x).
    """

    input_per_mtok: float
    output_per_mtok: float
    long_context_threshold: Optional[int] = None
    long_context_multiplier: float = 1.0
    assumption: bool = True
    source: str = ""

    def rates(self, input_tokens: int):
        """(input, output) price per million tokens for one call with ``input_tokens``."""
        m = self.long_context_multiplier if (self.long_context_threshold is not None
                                             and input_tokens > self.long_context_threshold) else 1.0
        return self.input_per_mtok * m, self.output_per_mtok * m


# Defaults: ASSUMPTIONS for illustration, not quotes. Edit them in the widget or pass your own.
DEFAULT_PRICES: Dict[str, Price] = {
    "dense-200k": Price(
        0.30, 1.20, source="assumption: MiniMax-M2 list price at its October 2025 launch ($0.30 in / $1.20 out per "
        "million tokens, MiniMax's announcement), standing in for an M2.7-class 204,800-token model; check "
        "platform.minimax.io/docs/guides/pricing-paygo for today's M2.7 price"),
    "msa-tiny": Price(
        0.60, 2.40, long_context_threshold=512_000, long_context_multiplier=2.0,
        source="assumption: MiniMax-M3 standard pay-as-you-go list price ($0.60 in / $2.40 out per million tokens "
        "for inputs up to 512K, 2x above; the June 2026 launch week was 50% off), as summarised from "
        "platform.minimax.io pricing by third-party write-ups in June 2026; check the vendor page"),
}


@dataclass(frozen=True)
class BilledTokens:
    """What one request costs in tokens under an overflow policy; ``served`` False: refused (ContextTooLong)."""

    input_tokens: int
    output_tokens: int
    calls: int = 1
    served: bool = True
    largest_call: int = 0  # input tokens of the largest single call (for long-context price tiers)


def billed_tokens(n: int, model: str, policy: str = "error", *, output_tokens: int = 256,
                  limit: Optional[int] = None, tail_tokens: int = 1024) -> BilledTokens:
    """Tokens billed for a prompt of ``n`` tokens answered with ``output_tokens``, mirroring msa_lab.model.engine.

    dense-200k past its limit: "error" is refused; truncate_* bill ``limit - output_tokens`` input tokens;
    "chunk" bills every window (BOS + window + the question tail repeated) and one answer per window.
    ``limit`` defaults to the model's own (204,800 for dense-200k, none for msa-tiny).
    """
    cost._check_int("n", n, minimum=1)
    cost._check_int("output_tokens", output_tokens, minimum=1)
    if policy not in OVERFLOW_POLICIES:
        raise ValueError(f"unknown overflow policy {policy!r}; choose one of {', '.join(OVERFLOW_POLICIES)}.")
    if limit is None:
        limit = MODEL_CONFIGS[model].max_context if model in MODEL_CONFIGS else None
    if limit is None or n + output_tokens <= limit:
        return BilledTokens(n, output_tokens, 1, True, n)
    if policy == "error":
        return BilledTokens(0, 0, 0, False, 0)
    keep = limit - output_tokens
    if keep < 2:
        raise ValueError(f"output_tokens={output_tokens} leaves no room for input in {limit} tokens; lower it.")
    if policy in ("truncate_left", "truncate_middle"):
        return BilledTokens(keep, output_tokens, 1, True, keep)
    tail = min(tail_tokens, keep // 4)  # as Engine._generate_chunked: BOS + window + question tail per call
    window = keep - 1 - tail
    body = n - 1 - tail
    calls = math.ceil(body / window)
    return BilledTokens(body + calls * (1 + tail), calls * output_tokens, calls, True, min(keep, 1 + body + tail))


def request_price(n: int, model: str, policy: str = "error", price: Optional[Price] = None, *,
                  output_tokens: int = 256, limit: Optional[int] = None) -> Optional[float]:
    """Price of one request (currency of ``price``), None when the policy refuses it.

    Uses msa_lab.cost.request_cost per call; a chunked request is ``calls`` equal-ish calls, each under the
    limit, so the long-context tier never applies to them.
    """
    price = price or DEFAULT_PRICES[model]
    b = billed_tokens(n, model, policy, output_tokens=output_tokens, limit=limit)
    if not b.served:
        return None
    rin, rout = price.rates(b.largest_call)
    return cost.request_cost(b.input_tokens, b.output_tokens, rin, rout).total


# ============================================================================ decision
VERDICTS = ("migrate", "pilot", "stay")
SIGNALS = {  # name -> what the toggle means (the widget's labels)
    "docs_over_200k": "documents or repositories over 200K tokens",
    "multimodal": "multimodal inputs (screenshots, images, video frames)",
    "iterative_code": "iterative code work (many turns over a growing code context)",
    "vendor_viable": "the new model's vendor (or its open weights) is viable for us",
}


@dataclass
class Recommendation:
    verdict: str  # one of VERDICTS
    headline: str
    reasons: List[str] = field(default_factory=list)
    score: int = 0

    def to_text(self) -> str:
        return self.headline + "\n" + "\n".join(f"- {r}" for r in self.reasons)


def recommend(docs_over_200k: bool = False, multimodal: bool = False, iterative_code: bool = False,
              vendor_viable: bool = True, evidence: Optional[dict] = None) -> Recommendation:
    """The decision signals -> migrate / pilot / stay, with reasons (pure: no model, no I/O).

    Scoring: documents over 200K is decisive (+2: the dense model must truncate or chunk them);
    multimodal inputs (+1: images and frames eat context fast) and iterative code work (+1: repeated
    long contexts, where per-request latency and price compound) add weight. A non-viable vendor blocks
    migration whatever the score. Score >= 2: migrate; 1: pilot (run both on your own eval, notebook 06);
    0: stay. ``evidence`` (optional, from :func:`evidence_from_results`) adds measured numbers to the
    reasons: ``msa_accuracy_past_limit``, ``dense_policy_accuracy_past_limit`` {policy: acc},
    ``price_ratio`` (msa / dense price per request at ``typical_tokens``), ``limit``, ``limit_scaled``.
    """
    for name, v in (("docs_over_200k", docs_over_200k), ("multimodal", multimodal),
                    ("iterative_code", iterative_code), ("vendor_viable", vendor_viable)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False, got {v!r}")
    ev = evidence or {}
    reasons: List[str] = []
    score = 0
    lim = ev.get("limit", DENSE_200K_LIMIT)
    scaled = " (limit scaled down for a CPU demo)" if ev.get("limit_scaled") else ""
    if docs_over_200k:
        score += 2
        r = (f"Documents over {DENSE_200K_LIMIT:,} tokens: dense-200k refuses them (ContextTooLong) or must "
             f"truncate or chunk, and whatever falls outside its window is invisible to it.")
        pol = ev.get("dense_policy_accuracy_past_limit") or {}
        served = {p: a for p, a in pol.items() if a is not None}
        if served:
            best = max(served, key=served.get)
            r += f" Measured past {lim:,} tokens{scaled}: its best policy, {best}, gets {served[best]:.0%} NIAH"
            if ev.get("msa_accuracy_past_limit") is not None:
                r += f" against {ev['msa_accuracy_past_limit']:.0%} for msa-tiny"
            r += "."
        reasons.append(r)
    else:
        reasons.append(f"No documents over {DENSE_200K_LIMIT:,} tokens: dense-200k's window holds every request, "
                       f"so the 1M context buys nothing yet.")
    if multimodal:
        score += 1
        reasons.append("Multimodal inputs: every image or video frame becomes patch tokens, so screenshots and "
                       "frames push requests toward the 200K wall; an M3-like model reads them natively in a 1M "
                       "context.")
    if iterative_code:
        score += 1
        r = ("Iterative code work: the same long code context is re-read every turn, so prefill latency and "
             "price per request compound; MSA's prefill grows close to linearly with length where dense grows "
             "quadratically.")
        if ev.get("price_ratio") is not None and ev.get("typical_tokens"):
            pr = ev["price_ratio"]
            r += (f" At {ev['typical_tokens']:,} tokens per request the assumed prices make msa-tiny "
                  f"{pr:.2g}x the price of dense-200k per request"
                  + (": weigh that against the speed." if pr > 1 else "."))
        reasons.append(r)
    if not vendor_viable:
        reasons.insert(0, "Vendor not viable for you (availability, terms, compliance or self-hosting): "
                          "this blocks a migration whatever the other signals say.")
        verdict = "stay"
        headline = "Stay on dense-200k for now: the vendor question blocks the move."
        if score >= 2:
            headline += " Revisit it: your workload needs more than 200K tokens."
    elif score >= 2:
        verdict, headline = "migrate", "Migrate to the MSA model (msa-tiny, M3-like, 1M context)."
    elif score == 1:
        verdict, headline = "pilot", ("Pilot: run both models on your own eval (notebook 06) before moving; "
                                      "one signal favours MSA, none is decisive.")
    else:
        verdict, headline = "stay", "Stay on dense-200k: none of the signals calls for a 1M-token model."
    return Recommendation(verdict, headline, reasons, score)


def evidence_from_results(results: dict, typical_tokens: Optional[int] = None,
                          prices: Optional[Dict[str, Price]] = None, output_tokens: int = 256) -> dict:
    """Measured numbers for :func:`recommend`: accuracies past the limit, and the price ratio at a length."""
    lim = results.get("limit", DENSE_200K_LIMIT)
    rows = [r for r in results.get("niah", []) if r["length"] > lim and r.get("accuracy") is not None]
    ev: dict = {"limit": lim, "limit_scaled": bool(results.get("limit_scaled"))}
    msa = [r["accuracy"] for r in rows if r["model"] == "msa-tiny"]
    if msa:
        ev["msa_accuracy_past_limit"] = sum(msa) / len(msa)
    pol: Dict[str, Optional[float]] = {}
    for p in PAST_LIMIT_POLICIES:
        got = [r for r in results.get("niah", []) if r["model"] == "dense-200k" and r["policy"] == p
               and r["length"] > lim]
        if got:
            acc = [r["accuracy"] for r in got if r.get("accuracy") is not None]
            pol[p] = sum(acc) / len(acc) if acc else None
    if pol:
        ev["dense_policy_accuracy_past_limit"] = pol
    if typical_tokens:
        prices = prices or DEFAULT_PRICES
        d = request_price(typical_tokens, "dense-200k", "chunk", prices["dense-200k"], output_tokens=output_tokens)
        m = request_price(typical_tokens, "msa-tiny", "error", prices["msa-tiny"], output_tokens=output_tokens)
        ev["typical_tokens"] = typical_tokens
        if d and m is not None:
            ev["price_ratio"] = m / d
    return ev


# ============================================================================ measuring
def _device_info(device) -> dict:
    import torch

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"name": name, "slug": "cpu" if dev.type == "cpu" else slugify(name), "type": dev.type}


def _cpu_peak_reset() -> bool:
    """Reset the process's peak RSS (Linux: clear_refs 5), so VmHWM measures from here on."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _engine(model, limit: Optional[int]):
    """The model's engine, or a copy whose hard limit is ``limit`` (a scaled-down demo of the policies)."""
    if limit is None or model.config.max_context is None:
        return model.engine
    from .model.engine import Engine

    eng = Engine(model.net)
    eng.cfg = model.config.replace(max_context=limit)
    return eng


def _prefill(model, enc, chunk_size: int) -> dict:
    """Time one prefill; peak memory as the device reports it (CUDA: allocator peak; CPU: peak RSS)."""
    import torch

    cpu = model.device.type != "cuda"
    reset = _cpu_peak_reset() if cpu else False
    t0 = time.perf_counter()
    step = None
    for step in model.engine.prefill_steps(enc, chunk_size, key_bins=8):
        pass
    seconds = time.perf_counter() - t0
    if cpu:
        peak = _cpu_peak_bytes() if reset else None
        src = "process peak RSS (VmHWM, reset before the prefill)" if peak else "unavailable on this OS"
    else:
        torch.cuda.synchronize(model.device)
        peak, src = step.mem_peak_bytes, "torch.cuda.max_memory_allocated"
    return {"seconds": seconds, "tokens_per_s": len(enc) / seconds, "peak_bytes": peak, "mem_source": src,
            "cache_bytes": step.cache_bytes}


def measure_migration(lengths: Sequence[int], *, models: Sequence[str] = MODELS,
                      policies: Sequence[str] = PAST_LIMIT_POLICIES, depths: Sequence[float] = (0.5,), n: int = 1,
                      seed: int = 0, chunk_size: int = 4096, dense_chunk_size: Optional[int] = None,
                      max_new_tokens: int = NIAH_MAX_NEW_TOKENS, limit: Optional[int] = None,
                      out=None, device=None, checkpoint_dir=None, loaded: Optional[dict] = None,
                      time_budget_s: Optional[float] = None, shared_card: bool = False,
                      progress: Optional[Callable[[int, int, str], None]] = None) -> dict:
    """Measure both models on this device and return (and with ``out``, write) the results dict.

    lengths: prompt lengths in tokens. For each length and depth, ``n`` NIAH examples (msa_lab.tasks,
    niah_single, the stdlib haystack) go to each model; dense-200k past its limit runs once per policy
    (``error`` records the refusal). One prefill per model and length is timed (after a warm-up) with its
    peak memory. chunk_size: msa-tiny's prefill chunk. dense_chunk_size: dense-200k's; None = the whole
    prompt in one chunk (one causal SDPA call per layer, as a server runs a dense prefill; the engine's
    chunked dense path masks explicitly and is far slower). limit: scale dense-200k's hard limit down (CPU
    demos; recorded as ``limit_scaled``). shared_card: other jobs ran on the device meanwhile (recorded: the
    prefill times are then upper bounds, and the plots say so).
    out: a directory (writes ``migration-<device>.json`` there) or a .json path; rewritten after every
    length. loaded: {name: Model} to use instead of msa_lab.load_model (tests). time_budget_s: stop
    before starting a length once this much time has passed (the file says ``partial``); an interrupt
    (Ctrl-C, the notebook's stop button) also returns what was measured, marked ``partial``.
    progress(done, total, what) is called after every unit of work.
    """
    from .api import load_model
    from .tasks import iter_task

    import torch

    lengths = sorted({int(x) for x in lengths})
    if not lengths or lengths[0] < 256:
        raise ValueError(f"lengths must be ints >= 256 (a NIAH prompt needs room for the haystack), got {lengths}")
    bad = [m for m in models if m not in MODEL_CONFIGS]
    if bad or not models:
        raise ValueError(f"models must be a non-empty subset of {MODELS}, got {list(models)}")
    bad = [p for p in policies if p not in OVERFLOW_POLICIES]
    if bad:
        raise ValueError(f"unknown overflow policies {bad}; choose from {', '.join(OVERFLOW_POLICIES)}")
    eff_limit = limit if limit is not None else DENSE_200K_LIMIT
    if limit is not None and (not isinstance(limit, int) or limit < 4 * max_new_tokens + 64):
        raise ValueError(f"limit={limit!r} is too small to run the policies; use >= {4 * max_new_tokens + 64}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    mods = dict(loaded or {})
    for name in models:
        if name not in mods:
            mods[name] = load_model(name, device, checkpoint_dir=checkpoint_dir)
    info = _device_info(next(iter(mods.values())).device)
    import msa_lab

    res = {
        "schema": SCHEMA, "device": info, "torch": torch.__version__, "msa_lab": msa_lab.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "limit": eff_limit, "limit_scaled": limit is not None and limit != DENSE_200K_LIMIT,
        "settings": {"lengths": lengths, "depths": [float(d) for d in depths], "n": n, "seed": seed,
                     "chunk_size": chunk_size, "dense_chunk_size": dense_chunk_size or "whole prompt",
                     "max_new_tokens": max_new_tokens, "policies": list(policies),
                     "task": "niah_single", "haystack": "stdlib"},
        "models": {name: _model_info(m) for name, m in mods.items() if name in models},
        "niah": [], "prefill": [], "partial": False, "shared_card": bool(shared_card),
    }
    path = _out_path(out, info["slug"]) if out is not None else None
    def runs_at(name, length):  # NIAH runs per example: one, or one per policy past the (dense) limit
        return len(policies) if mods[name].config.max_context is not None and length + max_new_tokens > eff_limit \
            else 1

    total = sum(len(models) + len(depths) * n * sum(runs_at(m, L) for m in models) for L in lengths)
    done, t_start = 0, time.perf_counter()

    def tick(what: str):
        nonlocal done
        done += 1
        if progress:
            progress(done, total, what)

    def chunk_of(m):  # the dense model's whole prompt fits one chunk: its limit plus the answer
        return chunk_size if m.config.sparse else (dense_chunk_size or eff_limit + max_new_tokens)

    for name in models:  # warm-up, not timed: compile the kernels of a first chunk, a later chunk and decode
        m = mods[name]
        warm = m.encode("x" * (min(lengths[0], 4096) if m.device.type == "cuda" else 256))
        m.engine.generate_ids(warm, 2, chunk_size=max(64, len(warm) // 2) if m.config.sparse else chunk_of(m))
    # partial until every length is done: the file is rewritten after each length, so a run killed in the
    # middle (a timeout, an OOM kill) leaves a file that says which lengths it lacks
    res["partial"] = True
    try:  # Ctrl-C / Interrupt keeps what was measured (the file too)
        for i, length in enumerate(lengths):
            res["stopped_before"] = length
            if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
                break
            exs = {d: list(iter_task("niah_single", n, seed, length=length, depth=d)) for d in depths}
            for name in models:
                m = mods[name]
                enc = m.encode(exs[depths[0]][0]["prompt"])
                row = {"model": name, "length": length}
                if m.config.max_context is not None and length > eff_limit:
                    row.update(status="refused", reason=f"over the {eff_limit:,}-token limit")
                else:
                    try:
                        row.update(status="ok", **_prefill(m, enc, chunk_of(m)))
                    except (MemoryError, RuntimeError) as e:  # PrefillTooLarge, CUDA OOM
                        row.update(status="failed", reason=f"{type(e).__name__}: {e}"[:300])
                res["prefill"].append(row)
                tick(f"{name} prefill {fmt_length(length)}")
                for d in depths:
                    runs = [NONE] if m.config.max_context is None else (
                        [FITS] if length + max_new_tokens <= eff_limit else list(policies))
                    for pol in runs:
                        res["niah"].append(_niah_row(m, _engine(m, limit), exs[d], name, pol, length, d,
                                                     chunk_of(m), max_new_tokens))
                        for _ in exs[d]:
                            tick(f"{name} NIAH {fmt_length(length)} depth {d:g} {pol}")
            if i + 1 < len(lengths):
                res["stopped_before"] = lengths[i + 1]
            else:
                res["partial"] = False
                del res["stopped_before"]
            if path is not None:
                write_results(res, path)
    except KeyboardInterrupt:
        res["partial"], res["interrupted"] = True, True
    res["seconds"] = time.perf_counter() - t_start
    if path is not None:
        write_results(res, path)
        res["path"] = str(path)
    return res


def _niah_row(model, engine, exs, name, policy, length, depth, chunk_size, max_new_tokens) -> dict:
    overflow = "error" if policy in (NONE, FITS) else policy
    hits, secs, used, windows, preds, status = 0, 0.0, 0, 1, [], "ok"
    for ex in exs:
        t0 = time.perf_counter()
        try:
            r = engine.generate(model.encode(ex["prompt"]), max_new_tokens, overflow=overflow, chunk_size=chunk_size)
        except ContextTooLong:
            status = "refused"
            break
        except (MemoryError, RuntimeError) as e:
            status = f"failed: {type(e).__name__}: {e}"[:300]
            break
        secs += time.perf_counter() - t0
        hits += answer_ok(r.text, ex["answer"])
        used, windows = r.used_tokens, r.windows
        preds.append(r.text[:40])
    ok = status == "ok"
    return {"model": name, "policy": policy, "length": length, "depth": float(depth), "n": len(exs),
            "correct": hits if ok else None, "accuracy": hits / len(exs) if ok else None,
            "seconds": secs / len(exs) if ok else None, "used_tokens": used if ok else None,
            "windows": windows if ok else None, "status": status, "predictions": preds}


def _model_info(m) -> dict:
    cfg = m.config
    wbytes = sum(p.numel() * p.element_size() for p in m.net.parameters())
    card = m.card or {}
    return {"attention": cfg.attention, "max_context": cfg.max_context, "n_params": m.net.n_params(),
            "weight_bytes": wbytes, "dtype": str(next(m.net.parameters()).dtype).replace("torch.", ""),
            "sha256": card.get("sha256"), "checkpoint_created": card.get("created"), "config": cfg.to_dict()}


def _out_path(out, slug: str) -> Path:
    p = Path(out)
    if p.suffix == ".json":
        return p
    return p / f"migration-{slug}.json"


def write_results(res: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: v for k, v in res.items() if k != "path"}, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_results(path) -> dict:
    """Read and check a migration results JSON (ValueError naming the problem)."""
    d = json.loads(Path(path).read_text())
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a migration results file (schema {SCHEMA!r}); make one with "
                         f"`python -m msa_lab.migration --out data/eval/`.")
    for key in ("device", "niah", "prefill", "limit", "models"):
        if key not in d:
            raise ValueError(f"{path}: migration results lack {key!r}; rerun `python -m msa_lab.migration`.")
    d["path"] = str(path)
    return d


def find_results(folder=None) -> List[Path]:
    """Migration results in ``folder`` (default data/eval), newest first (by their 'created' stamp)."""
    folder = Path(folder) if folder is not None else EVAL_DIR
    found = []
    for p in folder.glob("migration-*.json"):
        try:
            found.append((load_results(p)["created"], p))
        except (OSError, ValueError, KeyError):
            continue
    return [p for _, p in sorted(found, reverse=True)]


def stale_models(results: dict, checkpoint_dir=None) -> List[str]:
    """Models whose checkpoint (sha256) differs from the one these results were measured with."""
    from .model.checkpoint import CheckpointNotFound, read_meta

    out = []
    for name, info in results.get("models", {}).items():
        try:
            now = read_meta(name, Path(checkpoint_dir) if checkpoint_dir else None)["sha256"]
        except (CheckpointNotFound, OSError, ValueError, KeyError):
            continue
        if info.get("sha256") and info["sha256"] != now:
            out.append(name)
    return out


def load_or_measure(lengths: Sequence[int] = (1024, 2048), *, folder=None, limit: Optional[int] = 1536,
                    **measure_kw) -> dict:
    """The newest results file in ``folder`` (default data/eval) if any, else a live measurement here.

    The returned dict's ``source`` says which (e.g. "data/eval/migration-nvidia-h100-80gb-hbm3.json, measured
    on NVIDIA H100 80GB HBM3, 2026-11-28" or "measured live on CPU ...").
    """
    files = find_results(folder)
    if files:
        res = load_results(files[0])
        res["source"] = (f"{files[0].name}, measured on {res['device']['name']} on {res['date']} "
                         f"(torch {res['torch']})")
        stale = stale_models(res, measure_kw.get("checkpoint_dir"))
        if stale:
            res["stale_models"] = stale
            res["source"] += (f"; WARNING: measured with earlier checkpoints of {', '.join(stale)} than the ones in "
                              f"data/checkpoints now: rerun `python -m msa_lab.migration` on a GPU")
        return res
    res = measure_migration(lengths, limit=limit, **measure_kw)
    res["source"] = (f"measured live on {res['device']['name']} just now (no migration-*.json in "
                     f"{folder or 'data/eval'}; the lead's GPU run goes to 1M)")
    return res


# ============================================================================ projections
@dataclass
class Series:
    """One line of a plot: ``kind`` is "measured" (solid, markers), "projected" (dashed, no markers) or
    "computed" (dotted: price arithmetic, neither measured nor fitted)."""

    name: str
    model: str
    kind: str
    x: List[int]
    y: List[Optional[float]]
    policy: str = ""
    note: str = ""

    @property
    def dash(self) -> str:
        return {MEASURED: "solid", PROJECTED: "dash"}.get(self.kind, "dot")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.kind})"


def _config(results: dict, model: str) -> ModelConfig:
    d = (results.get("models") or {}).get(model, {}).get("config")
    return ModelConfig.from_dict(d) if d else MODEL_CONFIGS[model]


def model_flops(cfg: ModelConfig, n: int, n_params: int) -> tuple:
    """(per-token work 2 * params * n, attention FLOPs of all layers) of one prefill of n tokens (msa_lab.cost)."""
    c = cost.token_cost(cfg.msa_config(), int(n), "prefill")
    attn = (c.msa_flops if cfg.sparse else c.dense_flops) * n * cfg.n_layers
    return 2.0 * n_params * n, attn


@dataclass
class LatencyFit:
    """t(n) = a * linear(n) + b * attention(n): seconds as a fitted mix of the two kinds of work."""

    model: str
    a: float
    b: float
    points: int
    cfg: ModelConfig = field(repr=False, default=None)
    n_params: int = 0

    def __call__(self, n: int) -> float:
        lin, attn = model_flops(self.cfg, n, self.n_params)
        return self.a * lin + self.b * attn


def fit_latency(results: dict, model: str) -> Optional[LatencyFit]:
    """Least-squares fit (non-negative) of the measured prefill seconds; None without a measured point.

    One point: a single scale on total work (linear + attention). Two or more: both coefficients,
    falling back to the better single-term fit if one comes out negative.
    """
    import numpy as np

    pts = [(r["length"], r["seconds"]) for r in results.get("prefill", [])
           if r["model"] == model and r.get("status") == "ok" and r.get("seconds")]
    if not pts:
        return None
    cfg = _config(results, model)
    n_params = (results.get("models") or {}).get(model, {}).get("n_params") or 6_000_000
    X = np.array([model_flops(cfg, n, n_params) for n, _ in pts])
    y = np.array([s for _, s in pts])
    if len(pts) == 1:
        c = y[0] / X[0].sum()
        return LatencyFit(model, c, c, 1, cfg, n_params)
    w = 1.0 / y  # relative error: small and large lengths count alike
    coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
    if (coef < 0).any():
        best = None
        for j in (0, 1):
            c = float((X[:, j] * w * y * w).sum() / (X[:, j] * w * X[:, j] * w).sum())
            err = float((((X[:, j] * c) - y) * w) @ (((X[:, j] * c) - y) * w))
            if best is None or err < best[0]:
                best = (err, j, c)
        coef = np.zeros(2)
        coef[best[1]] = best[2]
    return LatencyFit(model, float(coef[0]), float(coef[1]), len(pts), cfg, n_params)


def _shared_note(results: dict, sep: str = "; ") -> str:
    """What a results file measured with other jobs on the card (``shared_card``) says next to its prefill times."""
    return f"{sep}card shared with other jobs: prefill times are upper bounds" if results.get("shared_card") else ""


def latency_series(results: dict, lengths: Sequence[int], *, policies: Sequence[str] = ("truncate_middle", "chunk"),
                   output_tokens: int = 16) -> List[Series]:
    """Measured prefill seconds per model, and the fitted projection over ``lengths``.

    dense-200k's projection stops at its real limit (204,800); past it, its policies are projected:
    truncation costs one prefill of the kept tokens, chunking one prefill per window.
    """
    out: List[Series] = []
    for model in MODELS:
        rows = sorted((r for r in results.get("prefill", []) if r["model"] == model and r.get("status") == "ok"),
                      key=lambda r: r["length"])
        if rows:
            out.append(Series(model, model, MEASURED, [r["length"] for r in rows], [r["seconds"] for r in rows],
                              note=f"prefill on {results['device']['name']}" + _shared_note(results)))
        fit = fit_latency(results, model)
        if fit is None:
            continue
        lim = MODEL_CONFIGS[model].max_context
        xs = [n for n in lengths if lim is None or n <= lim]
        out.append(Series(model, model, PROJECTED, xs, [fit(n) for n in xs],
                          note=f"fit to {fit.points} measured point(s); shape from msa_lab.cost" + _shared_note(results)))
        if lim is not None:
            past = [n for n in lengths if n > lim]
            for p in policies:
                ys = []
                for n in past:
                    b = billed_tokens(n, model, p, output_tokens=output_tokens)
                    ys.append(b.calls * fit(b.largest_call) if b.served else None)
                if past:
                    out.append(Series(f"{model} · {p}", model, PROJECTED, past, ys, policy=p,
                                      note="past the limit: " + ("one prefill per window" if p == "chunk"
                                                                 else "one prefill of the kept tokens")))
    return out


def memory_series(results: dict, lengths: Sequence[int]) -> List[Series]:
    """Measured peak memory per model, and the engine's estimate (plus the measured baseline) over lengths."""
    from .model.cache import estimate_prefill

    out: List[Series] = []
    settings = results.get("settings", {})
    for model in MODELS:
        rows = sorted((r for r in results.get("prefill", []) if r["model"] == model and r.get("status") == "ok"
                       and r.get("peak_bytes")), key=lambda r: r["length"])
        info = (results.get("models") or {}).get(model, {})
        cfg = _config(results, model)
        wbytes = info.get("weight_bytes") or 0
        dbytes = 2 if info.get("dtype") in ("float16", "bfloat16") else 4

        def est(n):
            dense_chunk = settings.get("dense_chunk_size")
            chunk = settings.get("chunk_size", 4096) if cfg.sparse else (
                dense_chunk if isinstance(dense_chunk, int) else n)
            return estimate_prefill(cfg, n, chunk, dtype_bytes=dbytes, weight_bytes=wbytes).total_bytes

        base = 0.0
        if rows:
            out.append(Series(model, model, MEASURED, [r["length"] for r in rows], [r["peak_bytes"] for r in rows],
                              note=rows[0].get("mem_source", "")))
            gaps = sorted(r["peak_bytes"] - est(r["length"]) for r in rows)
            base = max(0.0, gaps[len(gaps) // 2])  # what the process holds besides the model (runtime, allocator)
        lim = MODEL_CONFIGS[model].max_context
        xs = [n for n in lengths if lim is None or n <= lim]
        if rows or info:
            out.append(Series(model, model, PROJECTED, xs, [est(n) + base for n in xs],
                              note=f"engine estimate (weights + caches + one chunk) + {base / 2**20:.0f} MiB "
                                   f"measured baseline"))
    return out


def accuracy_series(results: dict) -> List[Series]:
    """Measured NIAH accuracy vs length: msa-tiny, dense-200k within its limit, and each policy past it.

    A refused point ("error" past the limit) is drawn at 0 and named as refused.
    """
    out: List[Series] = []
    rows = results.get("niah", [])
    lim = results.get("limit", DENSE_200K_LIMIT)

    def mean_by_length(sel):
        by: Dict[int, List[float]] = {}
        for r in sel:
            by.setdefault(r["length"], []).append(0.0 if r.get("accuracy") is None else r["accuracy"])
        xs = sorted(by)
        return xs, [sum(by[x]) / len(by[x]) for x in xs]

    msa = [r for r in rows if r["model"] == "msa-tiny"]
    if msa:
        out.append(Series("msa-tiny", "msa-tiny", MEASURED, *mean_by_length(msa), policy=NONE))
    dense = [r for r in rows if r["model"] == "dense-200k"]
    fits = [r for r in dense if r["policy"] == FITS]
    for p in PAST_LIMIT_POLICIES:
        past = [r for r in dense if r["policy"] == p]
        if not past:
            continue
        xs, ys = mean_by_length(fits + past)  # the policy's line continues the in-limit line
        refused = all(r["status"] == "refused" for r in past)
        out.append(Series(f"dense-200k · {p}" + (" (refused: ContextTooLong)" if refused else ""), "dense-200k",
                          MEASURED, xs, ys, policy=p, note=f"limit {lim:,}"))
    if fits and not any(s.model == "dense-200k" for s in out):
        out.append(Series("dense-200k", "dense-200k", MEASURED, *mean_by_length(fits), policy=FITS))
    return out


def price_series(lengths: Sequence[int], prices: Optional[Dict[str, Price]] = None, output_tokens: int = 256,
                 policies: Sequence[str] = ("truncate_middle", "chunk")) -> List[Series]:
    """Price per request vs prompt length: msa-tiny, and dense-200k under each policy (None where refused)."""
    prices = {**DEFAULT_PRICES, **(prices or {})}
    out = [Series("msa-tiny", "msa-tiny", COMPUTED, list(lengths),
                  [request_price(n, "msa-tiny", "error", prices["msa-tiny"], output_tokens=output_tokens)
                   for n in lengths], note="computed from the prices")]
    for p in policies:
        out.append(Series(f"dense-200k · {p}", "dense-200k", COMPUTED, list(lengths),
                          [request_price(n, "dense-200k", p, prices["dense-200k"], output_tokens=output_tokens)
                           for n in lengths], policy=p, note="computed from the prices"))
    return out


# ============================================================================ CLI
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m msa_lab.migration",
                                 description="Measure dense-200k against msa-tiny (NIAH per overflow policy, prefill "
                                             "time and memory) and write migration-<device>.json.")
    ap.add_argument("--lengths", default="4K,16K,64K,200000,256K,512K,1M",
                    help="comma-separated prompt lengths (K = 1024, M = 1048576)")
    ap.add_argument("--out", default=str(EVAL_DIR) + "/", help="a directory or a .json path (default data/eval/)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--policies", default=",".join(PAST_LIMIT_POLICIES))
    ap.add_argument("--depths", default="0.1,0.5,0.9", help="needle depths in [0, 1]")
    ap.add_argument("--n", type=int, default=1, help="NIAH examples per (length, depth)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-size", type=int, default=8192, help="msa-tiny's prefill chunk")
    ap.add_argument("--dense-chunk-size", type=int, default=None,
                    help="dense-200k's prefill chunk (default: the whole prompt, one SDPA call per layer)")
    ap.add_argument("--max-new-tokens", type=int, default=NIAH_MAX_NEW_TOKENS)
    ap.add_argument("--limit", type=int, default=None,
                    help="scale dense-200k's limit down (CPU demos; the results say so)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds; stop before a new length after it")
    ap.add_argument("--shared-card", action="store_true",
                    help="other jobs run on the device meanwhile: record that the prefill times are upper bounds")
    a = ap.parse_args(argv)
    try:
        lengths = parse_lengths(a.lengths)
        depths = [float(x) for x in a.depths.split(",") if x.strip()]
    except ValueError as e:
        ap.error(str(e))
    t0 = time.perf_counter()

    def progress(done, total, what):
        print(f"[{time.perf_counter() - t0:7.1f}s] {done}/{total} {what}", flush=True)

    res = measure_migration(lengths, models=[m for m in a.models.split(",") if m],
                            policies=[p for p in a.policies.split(",") if p], depths=depths, n=a.n, seed=a.seed,
                            chunk_size=a.chunk_size, dense_chunk_size=a.dense_chunk_size,
                            max_new_tokens=a.max_new_tokens, limit=a.limit, out=a.out,
                            device=a.device, checkpoint_dir=a.checkpoint_dir, time_budget_s=a.time_budget,
                            shared_card=a.shared_card, progress=progress)
    print(summary_text(res))
    print(f"wrote {res['path']}")
    return 0


def summary_text(res: dict) -> str:
    """A plain-text table of the results (for logs and the CLI)."""
    lines = [f"{res['device']['name']} · torch {res['torch']} · {res['date']} · limit {res['limit']:,}"
             + (" (scaled)" if res.get("limit_scaled") else "") + (" · PARTIAL" if res.get("partial") else "")
             + _shared_note(res, " · ")]
    lines.append("NIAH accuracy (model · policy · length: accuracy over depths)")
    acc: Dict[tuple, List[float]] = {}
    for r in res["niah"]:
        acc.setdefault((r["model"], r["policy"], r["length"]), []).append(
            -1.0 if r["accuracy"] is None else r["accuracy"])
    for (m, p, n), v in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        shown = "refused" if min(v) < 0 else f"{sum(v) / len(v):.2f}"
        lines.append(f"  {m:10s} {p:16s} {fmt_length(n):>8s}: {shown}")
    lines.append("prefill (model · length: seconds, peak memory)")
    for r in res["prefill"]:
        if r.get("status") == "ok":
            peak = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r.get("peak_bytes") else "-"
            lines.append(f"  {r['model']:10s} {fmt_length(r['length']):>8s}: {r['seconds']:.3f} s, {peak}")
        else:
            lines.append(f"  {r['model']:10s} {fmt_length(r['length']):>8s}: {r['status']} ({r.get('reason', '')})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
