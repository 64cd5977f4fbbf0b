"""PrefillStepper: step a long chunked prefill of a NIAH document and watch time, memory and selection.

The document is a needle-in-a-haystack prompt (``msa_lab.tasks`` ``niah_single``, the stdlib's source as
the haystack) of exactly ``target_length`` model tokens. Each Step feeds one chunk through
``model.engine.prefill_steps`` (the generator behind ``Model.prefill_steps``) and records what the
``PrefillStep`` reports. Six panels:

    ms per chunk                | tokens/s                          | memory allocated and peak
    cumulative block density    | picks per key bin (layer x group) | prefill time: measured and projected

Run is an asyncio task that awaits between chunks, so the kernel handles Pause (and anything else)
between them; the figure is redrawn at most every ``redraw_every_s`` seconds while running (a manual
Step always redraws). At the end the question is answered from the prefilled cache (sparse decode,
no second prefill) and the needle's block is checked against the answer positions' selections.

Dense cost: measured by prefilling a prefix of the same document with a dense model (dense-200k, same
backbone) at a few lengths, and projected to longer ones with the FLOP counts of ``msa_lab.cost``
(attention) plus the model's matmul weights; measured points are markers, projections dashed lines.
"""
from __future__ import annotations

import asyncio
import html
import json
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

try:
    import ipywidgets as W
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as e:  # optional extra
    raise ImportError("PrefillStepper needs ipywidgets and plotly: pip install 'msa-lab[lab]'") from e

from .. import cost
from ..eval import NIAH_MAX_NEW_TOKENS, answer_ok
from ..model.tokens import decode
from ..tasks import iter_task
from ..tasks.niah import _worst_case_tokens
from ..tasks.haystack import MIN_HAYSTACK_BYTES
from ._common import FigureExport, torch_threads as _torch_threads

GPU_LENGTH, CPU_LENGTH = 1 << 20, 16 << 10
GPU_CHUNK, CPU_CHUNK = 16 << 10, 1 << 10  # small CPU chunks: a Step answers within seconds
GPU_DENSE_LENGTHS = (32 << 10, 64 << 10, 128 << 10, 200_000)  # dense-200k's limit is 204,800 tokens
CPU_DENSE_LENGTHS = (2 << 10, 4 << 10, 8 << 10)
MIN_LENGTH = _worst_case_tokens("single", 1, "number") + MIN_HAYSTACK_BYTES  # a needle, the question, some hay
CPU_NOTE = ("No CUDA GPU here, so the default target is {cpu:,} tokens instead of {gpu:,}: on a CPU the torch "
            "path prefills a few thousand tokens per second at best, and the indexer's work per chunk grows with "
            "the length, so 1M tokens would take hours. Raise <i>target tokens</i> if you have the time, or run "
            "this notebook on an H100/H200, where 1M is the default.")
PANELS = ("ms per chunk", "tokens / s", "memory (MiB)", "cumulative selected-block density",
          "selection per key bin (picks / visible pairs)", "prefill time: measured and projected")
LAYER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


# ----------------------------------------------------------------------------- document
@dataclass(frozen=True)
class Needle:
    """Where the needle sits, in model tokens (BOS is token 0, so token = prompt byte + 1)."""

    key: str
    value: str
    question: str
    tokens: Tuple[int, int]  # [start, end) of the needle sentence
    value_token: int  # first digit of the value
    blocks: Tuple[int, ...]  # key blocks the sentence overlaps
    value_block: int  # the block holding the value's first digit
    depth: float


def niah_document(length: int, block_size: int, *, depth: float = 0.5, seed: int = 0) -> Tuple[str, Needle]:
    """A niah_single prompt of exactly ``length`` model tokens (stdlib haystack) and its needle."""
    ex = next(iter_task("niah_single", 1, seed, length=length, depth=depth))
    meta = json.loads(ex["meta"])
    nd = meta["needles"][0]
    s, e = nd["byte_span"]
    raw = ex["prompt"].encode("utf-8")
    if not raw[s:e].decode("utf-8").startswith(nd["text"]):  # the token mapping relies on byte offsets
        raise RuntimeError("the NIAH needle's byte span does not match its text; msa_lab.tasks changed its meta.")
    v0 = s + raw[s:e].rfind(nd["value"].encode())
    t0, t1, tv = s + 1, e + 1, v0 + 1  # + BOS
    blocks = tuple(range(t0 // block_size, (t1 - 1) // block_size + 1))
    return ex["prompt"], Needle(nd["key"], nd["value"], meta["question"], (t0, t1), tv, blocks, tv // block_size,
                                nd["depth"])


# ----------------------------------------------------------------------------- cost
def matmul_params(model) -> int:
    """Weights the transformer layers multiply each token by (2-D tensors of ``net.layers``)."""
    return sum(p.numel() for p in model.net.layers.parameters() if p.dim() == 2)


def prefill_flops(model, n: int, attention: str) -> float:
    """FLOPs of prefilling n tokens with this model's shapes: attention ("dense" | "msa", msa_lab.cost) + matmuls."""
    cfg = model.config
    attn = cost.request_flops(cfg.msa_config(), int(n), 0)[attention] * cfg.n_layers
    return attn + 2.0 * matmul_params(model) * n


# ----------------------------------------------------------------------------- records
@dataclass
class ChunkRecord:
    """The numbers kept per chunk (a PrefillStep without its logits and raw selections)."""

    tokens_done: int
    ms: float
    tokens_per_s: float
    elapsed_s: float
    mem_allocated_mib: float
    mem_peak_mib: float
    density: Optional[np.ndarray]  # float [L] cumulative selected-block density per layer (None: dense model)


@dataclass
class Answer:
    """The model's answer from the prefilled cache and whether the answer positions picked the needle."""

    text: str
    expected: str
    correct: bool
    seconds: float
    needle_blocks: Tuple[int, ...]
    # picked[l, g]: share of answer positions (SEP + fed answer tokens) whose selection holds a needle block
    picked: Optional[np.ndarray] = None
    picked_at_sep: Optional[np.ndarray] = None  # bool [L, G], the position that predicts the first answer byte
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def answer_from_cache(engine, cache, logits: torch.Tensor, max_new_tokens: int) -> Tuple[List[int], List[np.ndarray]]:
    """Greedy decode continuing a prefilled cache (no second prefill), recording each fed-back token's picks.

    logits float32 [vocab]: the prefill's last logits. Returns (ids, selections), selections[i] int
    [L, Hkv, top_k] for each token fed back (empty lists for dense models).
    """
    got: List[torch.Tensor] = []  # one [Hkv, top_k] per layer per decode step
    record = (lambda layer, idx=None, **_: got.append(idx[0, :, -1].cpu())) if engine.cfg.sparse else None
    out, _ = engine.decode_from(cache, logits, max_new_tokens, record=record)
    L = engine.cfg.n_layers
    return out, [torch.stack(got[i:i + L]).numpy() for i in range(0, len(got), L)]


# ----------------------------------------------------------------------------- widget
class PrefillStepper(FigureExport):
    """Step / Run / Pause / Reset a chunked prefill of a NIAH document; six live panels; the answer at the end.

    model: a loaded ``msa_lab.api.Model`` (``load_model("msa-tiny")``). target_length / chunk_size: None =
    1M / 16K on a GPU, 16K / 2K on a CPU (a note says why). dense_model: a dense model of the same
    backbone (``load_model("dense-200k")``) timed by ``measure_dense`` at ``dense_lengths``.
    Controls are attributes (``target_length``, ``chunk_size``; buttons ``step_button`` ...). ``records``
    holds one ChunkRecord per chunk, ``answer`` the Answer once the prefill is done, ``message`` the status.
    ``redraw_seconds`` is the wall time spent redrawing (the redraw-overhead target compares it with
    the prefill time). While running, redraws come at most every ``redraw_every_s`` seconds, and less
    often when one redraw costs more than ``redraw_budget`` (2%) of that interval; with
    ``redraw_every_chunks`` also every that many chunks (not throttled). ``torch_threads``: CPU threads
    during the model's work (None: torch's setting; 1 is several times faster on a busy 2-core machine,
    where OpenMP hand-offs cost more than they save).
    """

    def __init__(self, model, target_length: Optional[int] = None, chunk_size: Optional[int] = None, *,
                 dense_model=None, dense_lengths: Optional[Sequence[int]] = None, depth: float = 0.5, seed: int = 0,
                 max_new_tokens: int = NIAH_MAX_NEW_TOKENS, key_bins: int = 64, redraw_every_s: float = 0.5,
                 redraw_every_chunks: Optional[int] = None, auto_answer: bool = True,
                 torch_threads: Optional[int] = None, redraw_budget: float = 0.02):
        self.model, self.dense_model = model, dense_model
        self.on_gpu = model.device.type == "cuda"
        self.block_size = model.config.block_size
        self.depth, self.seed, self.max_new_tokens, self.key_bins = depth, seed, max_new_tokens, key_bins
        self.redraw_every_s, self.redraw_every_chunks, self.auto_answer = redraw_every_s, redraw_every_chunks, auto_answer
        self.torch_threads = torch_threads
        if target_length is None:
            target_length = GPU_LENGTH if self.on_gpu else CPU_LENGTH
        if chunk_size is None and isinstance(target_length, int):
            chunk_size = min(GPU_CHUNK if self.on_gpu else CPU_CHUNK, target_length)
        if not 0 < redraw_budget <= 1:
            raise ValueError(f"redraw_budget must be a share of the run in (0, 1], e.g. 0.02; got {redraw_budget!r}")
        self.validate(target_length, chunk_size)  # raise at construction: the notebook cell shows the fix
        if dense_lengths is None:
            dense_lengths = GPU_DENSE_LENGTHS if self.on_gpu else CPU_DENSE_LENGTHS
        self.dense_lengths = tuple(int(n) for n in dense_lengths)
        self._matmul = matmul_params(model)
        self.dense_points: List[Tuple[int, float]] = []  # (tokens, seconds) measured with dense_model
        self._dense_warm = False  # set after the one untimed warm-up prefill of dense_model
        self.message = ""
        self.redraw_seconds = 0.0
        self.redraws = 0
        self.redraw_budget = redraw_budget
        self._last_redraw_cost = 0.0
        self._task: Optional[asyncio.Task] = None
        self._pause = False
        self._busy = False

        style = {"description_width": "initial"}
        self.target_length = W.IntText(value=target_length, description="target tokens", style=style,
                                       layout=W.Layout(width="210px"))
        self.chunk_size = W.IntText(value=chunk_size, description="chunk size", style=style,
                                    layout=W.Layout(width="170px"))
        self.step_button = W.Button(description="Step", icon="step-forward", layout=W.Layout(width="90px"))
        self.run_button = W.Button(description="Run", icon="play", button_style="success",
                                   layout=W.Layout(width="90px"))
        self.pause_button = W.Button(description="Pause", icon="pause", layout=W.Layout(width="90px"))
        self.reset_button = W.Button(description="Reset", icon="undo", layout=W.Layout(width="90px"))
        self.dense_button = W.Button(description="Measure dense", icon="clock-o", layout=W.Layout(width="140px"),
                                     disabled=dense_model is None)
        self.progress = W.IntProgress(value=0, min=0, max=target_length, description="0%", style=style,
                                      layout=W.Layout(width="420px"))
        self.note = W.HTML("" if self.on_gpu else
                           f"<i>{CPU_NOTE.format(cpu=CPU_LENGTH, gpu=GPU_LENGTH)}</i>")
        self.status = W.HTML()
        self.answer_box = W.HTML()
        self.save_path = W.Text(value="prefill_stepper.html", description="save to", style=style,
                                layout=W.Layout(width="260px"))
        self.save_button = W.Button(description="Save HTML", icon="download")
        self.step_button.on_click(lambda _: self._clicked(self.step))
        self.run_button.on_click(lambda _: self._clicked(self.run))
        self.pause_button.on_click(lambda _: self.pause())
        self.reset_button.on_click(lambda _: self.reset())
        self.dense_button.on_click(lambda _: self._clicked(self.measure_dense))
        self.save_button.on_click(lambda _: self._save_clicked())
        for c in (self.target_length, self.chunk_size):
            c.observe(self._control_changed, names="value")
        self.figure = self._make_figure()
        self.widget = W.VBox([
            W.HBox([self.target_length, self.chunk_size, self.step_button, self.run_button, self.pause_button,
                    self.reset_button, self.dense_button]),
            W.HBox([self.progress]), self.note, self.status, self.figure, self.answer_box,
            W.HBox([self.save_path, self.save_button]),
        ])
        self.reset()

    # ------------------------------------------------------------------ validation
    def validate(self, target_length, chunk_size) -> None:
        """Raise ValueError naming the fix when the length or chunk size cannot be prefilled."""
        if not isinstance(target_length, int) or isinstance(target_length, bool) or target_length < MIN_LENGTH:
            raise ValueError(f"target length must be an int >= {MIN_LENGTH} tokens (room for the haystack, the "
                             f"needle and the question), got {target_length!r}; e.g. {CPU_LENGTH}.")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk size must be a positive int, got {chunk_size!r}; e.g. {CPU_CHUNK}.")
        if chunk_size > target_length:
            raise ValueError(f"chunk size {chunk_size:,} is larger than the target length {target_length:,}; "
                             f"use a chunk size <= the target (e.g. {min(CPU_CHUNK, target_length)}).")
        lim = self.model.config.max_context
        if lim is not None and target_length + self.max_new_tokens > lim:
            raise ValueError(f"{self.model.name} has a hard limit of {lim:,} tokens; a target of {target_length:,} "
                             f"+ {self.max_new_tokens} answer tokens does not fit. Lower the target or use msa-tiny.")
        est = self.model.estimate_memory(target_length + self.max_new_tokens, chunk_size)
        if not est.fits:
            raise ValueError(f"the prefill would not fit in memory: {est.describe()}. Lower the target length or "
                             f"the chunk size.")

    # ------------------------------------------------------------------ public
    @property
    def done(self) -> bool:
        return bool(self.records) and self.records[-1].tokens_done >= self._n

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def step(self, n: int = 1) -> int:
        """Prefill the next n chunks and redraw; returns the chunks done (0 at the end or on invalid controls)."""
        done = 0
        for _ in range(n):
            if not self._advance():
                break
            done += 1
        if not done:  # at the end, or invalid controls: keep the status that says why
            return 0
        self.redraw()
        if self.done and self.auto_answer and self.answer is None:
            self.ask()
        return done

    def run(self):
        """Prefill to the end as an asyncio task (the kernel stays responsive: Pause works); returns the task.

        Without a running event loop (a plain script) it runs to the end here and returns None.
        """
        if self.running:
            self._show("already running; press Pause to stop.")
            return self._task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.run_to_end()
            return None
        self._pause = False
        self._task = loop.create_task(self._run_async())
        return self._task

    def run_to_end(self) -> Optional[Answer]:
        """Prefill to the end in this call (headless notebooks, scripts), redrawing as Run does; then answer."""
        self._pause = False
        self._last_draw = time.perf_counter()
        while not self._pause and self._advance():
            self._maybe_redraw()
        self.redraw()
        if self.done and self.auto_answer and self.answer is None:
            self.ask()
        return self.answer

    def pause(self) -> None:
        """Stop a Run after the chunk in flight (Step or Run resume from there)."""
        self._pause = True
        if self.running:
            self._show("pausing after this chunk ...")

    def reset(self) -> None:
        """Forget the prefill (cache, records, answer) and clear the plots; the controls' values are kept."""
        self._pause = True
        if self.running:
            self._task.cancel()
        self._task = None
        self._steps = None  # the engine's generator; dropping it frees the cache
        self.model.engine.last_cache = None
        self.records: List[ChunkRecord] = []
        self.answer: Optional[Answer] = None
        self._last_logits = None
        self._last_sel = None
        self._hist = None  # int64 [L, G, bins] cumulative picks per key bin
        self._sel = None  # int64 [L] cumulative picks per layer
        self._visible_pairs = 0  # (query, visible block) pairs so far, per group
        self._per_bin = 1
        self._doc = None
        self._n, self._chunk = self.target_length.value, self.chunk_size.value
        self.progress.max = max(1, self._n)
        self.progress.value = 0
        self.progress.description = "0%"
        self.answer_box.value = ""
        self._last_draw = 0.0
        self._since_draw = 0
        self.redraw()
        self._show(f"ready: {self._n:,} tokens in chunks of {self._chunk:,}; press Step or Run.")

    def measure_dense(self, lengths: Optional[Sequence[int]] = None) -> List[Tuple[int, float]]:
        """Time dense_model prefilling prefixes of the document at ``lengths`` (those that fit) and redraw."""
        if self.dense_model is None:
            raise ValueError("no dense model: pass dense_model=msa_lab.load_model('dense-200k') to measure dense.")
        lim = self.dense_model.config.max_context or float("inf")
        enc = self._document()[1]
        want = sorted({int(n) for n in (lengths or self.dense_lengths) if n <= min(lim, len(enc))})
        if not want:
            self._show(f"no dense length fits: {tuple(lengths or self.dense_lengths)} vs a document of "
                       f"{len(enc):,} tokens and a dense limit of {lim:,}.")
            return self.dense_points
        chunk = self._chunk
        done = dict(self.dense_points)
        # untimed warm-up (two chunks): the first dense call pays CUDA/cuBLAS set-up, 5.9 s on an H100 in
        # notebook 03 at 1M, which would otherwise be charged to the shortest length
        if not self._dense_warm:
            warm = min(want[0], 8192)
            with _torch_threads(self.torch_threads):
                for _ in self.dense_model.engine.prefill_steps(enc.slice(0, warm), max(1, min(chunk, warm // 2))):
                    pass
            self.dense_model.engine.last_cache = None
            self._dense_warm = True
        for n in want:
            self._show(f"measuring dense prefill at {n:,} tokens ...")
            with _torch_threads(self.torch_threads):
                secs = sum(s.seconds for s in self.dense_model.engine.prefill_steps(enc.slice(0, n), chunk))
            done[n] = secs
            self.dense_model.engine.last_cache = None
        self.dense_points = sorted(done.items())
        self.redraw()
        self._show("dense measured at " + ", ".join(f"{n:,} tokens {s:.3g} s" for n, s in self.dense_points))
        return self.dense_points

    def ask(self) -> Answer:
        """Answer the document's question from the prefilled cache and check the needle's block."""
        if not self.done:
            raise RuntimeError(f"the prefill is at {self._tokens_done():,} of {self._n:,} tokens; press Run (or call "
                               f"run_to_end()) before asking.")
        if self.answer is not None:
            return self.answer
        needle = self._document()[2]
        t0 = time.perf_counter()
        with _torch_threads(self.torch_threads):
            ids, sels = answer_from_cache(self.model.engine, self.model.engine.last_cache, self._last_logits,
                                          self.max_new_tokens)
        secs = time.perf_counter() - t0
        text = decode(ids).strip()
        ans = Answer(text=text, expected=needle.value, correct=answer_ok(text, needle.value), seconds=secs,
                     needle_blocks=needle.blocks)
        if self._last_sel is not None:  # the SEP position (predicts the first answer byte) + fed answer tokens
            every = [self._last_sel] + sels
            hit = [np.isin(s, needle.blocks).any(-1) for s in every]  # bool [L, G] each
            ans.picked = np.mean(hit, axis=0)
            ans.picked_at_sep = hit[0]
        self.answer = ans
        self.answer_box.value = self._answer_html(ans, needle)
        self.redraw()
        return ans

    def summary(self) -> dict:
        """Plain numbers for a report (lengths, times, memory, density, the answer)."""
        r = self.records[-1] if self.records else None
        out = {"model": self.model.name, "device": str(self.model.device), "target_tokens": self._n,
               "chunk_size": self._chunk, "tokens_done": self._tokens_done(),
               "chunks": len(self.records), "prefill_s": sum(x.ms for x in self.records) / 1e3,
               "redraw_s": self.redraw_seconds, "dense_measured": self.dense_points}
        if r is not None:
            out.update(peak_mib=max(x.mem_peak_mib for x in self.records), last_tokens_per_s=r.tokens_per_s,
                       density=None if r.density is None else float(r.density.mean()))
        if self.answer is not None:
            a = self.answer
            out["answer"] = {"text": a.text, "expected": a.expected, "correct": a.correct,
                             "needle_blocks": list(a.needle_blocks),
                             "picked_share": None if a.picked is None else float(a.picked.mean())}
        return out

    # ------------------------------------------------------------------ prefill
    def _document(self):
        """(prompt, Encoded, Needle) for the current target length, built once per reset."""
        if self._doc is None:
            prompt, needle = niah_document(self._n, self.block_size, depth=self.depth, seed=self.seed)
            enc = self.model.encode(prompt)
            self._doc = (prompt, enc, needle)
        return self._doc

    def _tokens_done(self) -> int:
        return self.records[-1].tokens_done if self.records else 0

    def _advance(self) -> bool:
        """One chunk; False when done or when the controls are invalid (the status says why)."""
        if self.done:
            self._show("the prefill is done; press Reset to start over.")
            return False
        controls = (self.target_length.value, self.chunk_size.value)
        if self._steps is None or controls != (self._n, self._chunk):  # valid changes reset: these are invalid
            try:
                self.validate(*controls)
            except ValueError as e:
                self._show(str(e), error=True)
                return False
        if self._steps is None:
            enc = self._document()[1]
            self._steps = self.model.engine.prefill_steps(enc, self._chunk, key_bins=self.key_bins,
                                                          extra_tokens=self.max_new_tokens)
        try:
            with _torch_threads(self.torch_threads):
                s = next(self._steps)
        except StopIteration:
            return False
        self._record(s)
        return True

    def _record(self, s) -> None:
        density = None
        a = self._tokens_done()
        b = s.tokens_done
        if s.selection_hist is not None:
            if self._hist is None:
                self._hist = np.zeros_like(s.selection_hist)
                self._sel = np.zeros(s.selection_hist.shape[0], dtype=np.int64)
                self._per_bin = s.blocks_per_bin
            self._hist += s.selection_hist
            self._sel += s.selection_hist.sum(axis=(1, 2))
            self._visible_pairs += _visible_block_pairs(b, self.block_size) - _visible_block_pairs(a, self.block_size)
            density = self._sel / (self._hist.shape[1] * self._visible_pairs)
            self._last_sel = s.last_selected
        self._last_logits = s.logits
        mib = 1 / 2**20
        self.records.append(ChunkRecord(b, s.seconds * 1e3, s.tokens_per_s, s.elapsed_s,
                                        s.mem_allocated_bytes * mib, s.mem_peak_bytes * mib, density))
        self._mem_source = s.mem_source
        self.progress.value = min(b, self.progress.max)
        self.progress.description = f"{b / self._n:.0%}"
        self._since_draw += 1

    async def _run_async(self) -> None:
        self._show("running ...")
        self._last_draw = time.perf_counter()
        try:
            while not self._pause and self._advance():
                self._maybe_redraw()
                await asyncio.sleep(0)  # hand the loop to the kernel: Pause / Reset clicks land here
            self.redraw()
            if self.done and self.auto_answer and self.answer is None:
                self.ask()
            elif self._pause:
                self._show(f"paused at {self._tokens_done():,} of {self._n:,} tokens; Step or Run to go on.")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a task's exception would vanish; show it
            self._show(f"the run stopped: {type(e).__name__}: {e}", error=True)

    # ------------------------------------------------------------------ drawing
    def _maybe_redraw(self) -> None:
        if self.redraw_every_chunks is not None and self._since_draw >= self.redraw_every_chunks:
            self.redraw()
            return
        # The interval also stretches with the cost of a redraw, so redraws stay under redraw_budget of
        # the run: on an H100 a 16K chunk takes ~80 ms and a redraw ~30 ms, and a fixed 0.5 s interval
        # cost 6.7% of a 1M prefill (measured 2026-11-27; the target is < 5%).
        interval = max(self.redraw_every_s, self._last_redraw_cost / self.redraw_budget)
        if time.perf_counter() - self._last_draw >= interval:
            self.redraw()

    def redraw(self) -> None:
        """Push the recorded numbers into the figure (one batched update) and the status line."""
        t0 = time.perf_counter()
        recs = self.records
        x = [r.tokens_done for r in recs]
        f, t = self.figure, self._tr
        with f.batch_update():
            f.data[t["ms"]].update(x=x, y=[r.ms for r in recs])
            f.data[t["tps"]].update(x=x, y=[r.tokens_per_s for r in recs])
            f.data[t["alloc"]].update(x=x, y=[r.mem_allocated_mib for r in recs])
            f.data[t["peak"]].update(x=x, y=[r.mem_peak_mib for r in recs])
            dens = [r.density for r in recs if r.density is not None]
            xd = [r.tokens_done for r in recs if r.density is not None]
            for layer in range(self.model.config.n_layers):
                f.data[t["dens"] + layer].update(x=xd, y=[d[layer] for d in dens])
            f.data[t["dens_mean"]].update(x=xd, y=[float(d.mean()) for d in dens])
            self._draw_heatmap()
            self._draw_time()
            for ax in ("xaxis", "xaxis2", "xaxis3", "xaxis4"):
                f.layout[ax].range = [0, self._n]
            f.layout.title.text = self._title()
            if recs:
                f.layout.yaxis3.title.text = f"MiB ({_short_source(self._mem_source)})"
        self._last_redraw_cost = time.perf_counter() - t0
        self.redraw_seconds += self._last_redraw_cost
        self.redraws += 1
        self._last_draw = time.perf_counter()
        self._since_draw = 0
        self._show_status()

    def _draw_heatmap(self) -> None:
        hm = self.figure.data[self._tr["heat"]]
        needle_x, rows = [], []
        if self._hist is None:
            hm.update(z=None, x=None, y=None)
        else:
            L, G, bins = self._hist.shape
            per = self._per_bin * self.block_size  # tokens per bin
            done = self._tokens_done()
            starts = np.arange(bins) * per
            visible_q = np.clip(done - starts, 0, None).astype(float)  # queries that see the bin's first key
            rate = self._hist / np.maximum(visible_q * self._per_bin, 1)
            rows = [f"L{layer} g{g}" for layer in range(L) for g in range(G)]
            hm.update(z=np.minimum(rate.reshape(L * G, bins), 1.0), x=starts, y=rows)
            if self._doc is not None:
                nb = self._doc[2].value_block * self.block_size
                needle_x = [nb // per * per] * 2
        self.figure.data[self._tr["needle"]].update(x=needle_x, y=[rows[0], rows[-1]] if needle_x else [])

    def _draw_time(self) -> None:
        f, t = self.figure, self._tr
        recs = self.records
        f.data[t["msa_meas"]].update(x=[r.tokens_done for r in recs], y=[r.elapsed_s for r in recs])
        f.data[t["dense_meas"]].update(x=[n for n, _ in self.dense_points], y=[s for _, s in self.dense_points])
        xs_m = ys_m = xs_d = ys_d = []
        if recs and recs[-1].elapsed_s > 0:
            n0, t0 = recs[-1].tokens_done, recs[-1].elapsed_s
            rate = t0 / prefill_flops(self.model, n0, "msa")  # seconds per FLOP measured so far
            xs_m = _span(n0, self._n)
            ys_m = [rate * prefill_flops(self.model, n, "msa") for n in xs_m]
        if self.dense_points:
            n0, t0 = self.dense_points[-1]
            rate = t0 / prefill_flops(self.model, n0, "dense")
            xs_d = _span(n0, max(self._n, n0))
            ys_d = [rate * prefill_flops(self.model, n, "dense") for n in xs_d]
        f.data[t["msa_proj"]].update(x=xs_m, y=ys_m)
        f.data[t["dense_proj"]].update(x=xs_d, y=ys_d)

    def _make_figure(self):
        fig = make_subplots(rows=2, cols=3, subplot_titles=PANELS, horizontal_spacing=0.1, vertical_spacing=0.17)
        self._tr = {}

        def add(key, trace, row, col):
            self._tr[key] = len(fig.data)
            fig.add_trace(trace, row=row, col=col)

        line = dict(mode="lines+markers", marker=dict(size=4))
        add("ms", go.Scatter(name="ms per chunk", line=dict(color="#d62728"), showlegend=False, **line), 1, 1)
        add("tps", go.Scatter(name="tokens/s", line=dict(color="#2ca02c"), showlegend=False, **line), 1, 2)
        add("alloc", go.Scatter(name="memory allocated", line=dict(color="#1f77b4"), legendgroup="mem", **line), 1, 3)
        add("peak", go.Scatter(name="memory peak", line=dict(color="#1f77b4", dash="dot"), legendgroup="mem",
                               **line), 1, 3)
        for layer in range(self.model.config.n_layers):
            add("dens" if layer == 0 else f"dens{layer}",
                go.Scatter(name=f"layer {layer}", mode="lines", showlegend=False, hoverlabel=dict(namelength=-1),
                           line=dict(width=1, color=LAYER_COLOURS[layer % len(LAYER_COLOURS)])), 2, 1)
        add("dens_mean", go.Scatter(name="density, mean over layers", mode="lines+markers", marker=dict(size=5),
                                    line=dict(width=3, color="black")), 2, 1)
        add("heat", go.Heatmap(z=None, colorscale="Oranges", zmin=0, zmax=1, showscale=True,
                               colorbar=dict(x=0.64, y=0.22, len=0.42, thickness=10, title=dict(text="rate")),
                               hovertemplate="%{y}, keys from %{x}: %{z:.2f}<extra></extra>"), 2, 2)
        add("needle", go.Scatter(name="needle's key bin", mode="lines", line=dict(color="#2ca02c", width=2)), 2, 2)
        add("msa_meas", go.Scatter(name="MSA measured (this run)", line=dict(color="#d62728"), **line), 2, 3)
        add("msa_proj", go.Scatter(name="MSA projected (cost model)", mode="lines",
                                   line=dict(color="#d62728", dash="dash")), 2, 3)
        add("dense_meas", go.Scatter(name="dense measured (dense model)", mode="markers",
                                     marker=dict(color="#444444", size=9, symbol="diamond")), 2, 3)
        add("dense_proj", go.Scatter(name="dense projected (cost model)", mode="lines",
                                     line=dict(color="#444444", dash="dash")), 2, 3)
        for col in (1, 2, 3):
            fig.update_xaxes(title="tokens prefilled", row=1, col=col)
        fig.update_xaxes(title="tokens prefilled", row=2, col=1)
        fig.update_xaxes(title="key position (bin start, tokens)", row=2, col=2)
        fig.update_yaxes(autorange="reversed", row=2, col=2)
        fig.update_xaxes(type="log", title="tokens (log)", row=2, col=3)
        fig.update_yaxes(type="log", title="seconds (log)", row=2, col=3)
        fig.update_yaxes(title="ms", rangemode="tozero", row=1, col=1)
        fig.update_yaxes(title="tokens/s", rangemode="tozero", row=1, col=2)
        fig.update_yaxes(title="MiB", rangemode="tozero", row=1, col=3)
        fig.update_yaxes(title="selected / visible blocks", range=[0, 1.02], row=2, col=1)
        fig.update_layout(height=760, width=1200, margin=dict(t=110, l=60, r=30, b=60), title=dict(font=dict(size=14)),
                          legend=dict(orientation="h", x=0, y=-0.12, font=dict(size=11)))
        return go.FigureWidget(fig)

    def _title(self) -> str:
        cfg = self.model.config
        done = self._tokens_done()
        ratio = cost.token_cost(cfg.msa_config(), self._n).ratio
        head = (f"{self.model.name} prefill: {done:,} / {self._n:,} tokens in chunks of {self._chunk:,} "
                f"on {self.model.device.type.upper()}")
        sub = (f"block {cfg.block_size}, top-{cfg.top_k}, {cfg.n_layers} layers x {cfg.n_kv_heads} KV groups; "
               f"dense / MSA attention FLOPs at {self._n:,} tokens: {ratio:.1f}x (msa_lab.cost, model shapes); "
               f"markers measured, dashed lines projected")
        return f"{head}<br><sup>{sub}</sup>"

    # ------------------------------------------------------------------ status
    def _show(self, text: str, error: bool = False) -> None:
        self.message = text
        colour = "#b00020" if error else "inherit"
        self.status.value = f"<div style='color:{colour}'>{'<b>Not run:</b> ' if error else ''}{html.escape(text)}</div>"

    def _show_status(self) -> None:
        if not self.records:
            return
        r = self.records[-1]
        parts = [f"{r.tokens_done:,} / {self._n:,} tokens in {len(self.records)} chunks, {r.elapsed_s:.3g} s",
                 f"last chunk {r.ms:.4g} ms ({r.tokens_per_s:,.0f} tokens/s)",
                 f"memory {r.mem_allocated_mib:,.0f} MiB allocated, {r.mem_peak_mib:,.0f} MiB peak"]
        if r.density is not None:
            parts.append(f"selected-block density {r.density.mean():.1%}")
        if self.dense_points:
            n, s = self.dense_points[-1]
            parts.append(f"dense measured up to {n:,} tokens ({s:.3g} s)")
        self._show(" | ".join(parts))

    def _answer_html(self, a: Answer, needle: Needle) -> str:
        mark = "correct" if a.correct else "wrong"
        rows = [f"<b>Q:</b> {html.escape(needle.question)}",
                f"<b>A:</b> <code>{html.escape(a.text) or '(empty)'}</code> ({mark}; expected "
                f"<code>{html.escape(a.expected)}</code>; decoded from the prefilled cache in {a.seconds:.2f} s)",
                f"<b>The needle</b> sits at tokens {needle.tokens[0]:,}-{needle.tokens[1]:,} (depth {needle.depth:.0%}), "
                f"key block{'s' if len(needle.blocks) > 1 else ''} {', '.join(map(str, needle.blocks))} "
                f"(the value in block {needle.value_block})."]
        if a.picked is not None:
            L, G = a.picked.shape
            at_sep = int(a.picked_at_sep.sum())
            rows.append(f"<b>Selected by the answer positions?</b> at the position that writes the first answer byte, "
                        f"{at_sep} of {L * G} (layer, group) pairs picked a needle block; over all answer positions "
                        f"{a.picked.mean():.0%} of (position, layer, group) selections hold it. Per layer (share of "
                        f"groups and positions): " + ", ".join(f"L{i} {a.picked[i].mean():.0%}" for i in range(L)))
        return "<div style='border-left:3px solid #888;padding-left:8px'>" + "<br>".join(rows) + "</div>"

    # ------------------------------------------------------------------ events
    def _clicked(self, action) -> None:
        if self._busy:
            return
        if self.running and action is not self.run:
            self._show("a Run is going; press Pause first.")
            return
        self._busy = True
        try:
            action()
        except (ValueError, RuntimeError, MemoryError) as e:
            self._show(str(e), error=True)
        finally:
            self._busy = False

    def _control_changed(self, change) -> None:
        try:
            self.validate(self.target_length.value, self.chunk_size.value)
        except ValueError as e:
            self._show(str(e), error=True)
            return
        self.reset()  # a new length or chunk size is a new prefill

    def _save_clicked(self) -> None:
        try:
            path = self.save_html(self.save_path.value)
        except OSError as e:
            self._show(f"could not save {self.save_path.value!r}: {e}", error=True)
            return
        self.status.value += f"<br>saved {html.escape(path)}"


def _visible_block_pairs(n: int, block_size: int) -> int:
    """Sum over query positions p < n of the key blocks p sees (p // block_size + 1)."""
    m, r = divmod(n, block_size)
    return block_size * m * (m + 1) // 2 + r * (m + 1)


def _span(lo: int, hi: int, points: int = 24) -> List[int]:
    if hi <= lo:
        return [lo]
    return sorted({round(lo * (hi / lo) ** (i / (points - 1))) for i in range(points)})


def _short_source(src: str) -> str:
    return "CUDA allocator" if src == "cuda" else "process RSS"
