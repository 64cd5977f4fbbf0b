"""EvalBuilder: define a NIAH-style task in a few lines, run it on msa-tiny and/or dense-200k, see the heatmap.

    task = NeedleTask(template="The door code for {key} is {value}.", question="What is the door code for {key}?",
                      lengths=(2048, 8192), depths=(0.0, 0.5, 1.0))
    EvalBuilder(task)            # controls, Run / Stop, a progress bar, one depth x length heatmap per model

The task part (:class:`NeedleTask`) reuses msa_lab.tasks.haystack: the haystack is the Python standard
library's source, or any directory of text files; the needle is the template with a seeded key and value,
on its own line at the requested depth; the question ends the prompt. Prompts are exactly ``length``
model tokens. The heatmap is msa_lab.eval.niah_heatmap's. Results save as CSV + JSON (data/eval/ by
default) and the figure as HTML or PNG.
"""
from __future__ import annotations

import html
import json
import random
import string
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

try:
    import ipywidgets as W
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as e:  # optional extra
    raise ImportError("EvalBuilder needs ipywidgets and plotly: pip install 'msa-lab[lab]'") from e

from ..eval import NIAH_MAX_NEW_TOKENS, answer_ok
from ..model.engine import OVERFLOW_POLICIES, ContextTooLong
from ..tasks import vocab
from ..tasks.haystack import MIN_HAYSTACK_BYTES, build_context, make_source
from ..tasks.schema import IMAGE_TOKEN, PROMPT_SPECIALS, TASKS_VERSION
from ._common import FigureExport

MODELS = ("msa-tiny", "dense-200k")
VALUE_KINDS = ("number", "word", "uuid")
PLACEHOLDERS = ("key", "value")
_WORST_VALUE = {"number": "9" * 7, "word": max(vocab.WORDS, key=len) + "-" + max(vocab.WORDS, key=len),
                "uuid": "0" * 36}
_WORST_KEY = max(vocab.ADJECTIVES, key=len) + "-" + max(vocab.NOUNS, key=len)


# =============================================================================== the task
def _fields(name: str, text: str) -> List[str]:
    """Placeholder names in a format string, with errors that say how to write one."""
    if not isinstance(text, str) or not text.strip():
        example = "The door code for {key} is {value}." if name == "template" else "What is the door code for {key}?"
        raise ValueError(f"{name} is empty; write a sentence such as {example!r}")
    if "\n" in text:
        raise ValueError(f"{name} must be one line (the needle and the question each sit on their own line).")
    if IMAGE_TOKEN in text:
        raise ValueError(f"{name} contains {IMAGE_TOKEN!r}, the image placeholder; NIAH tasks are text only.")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"{name} {text!r} is not a valid template ({e}); write placeholders as {{key}} and "
                         f"{{value}}, and a literal brace as {{{{ or }}}}.") from None
    names = []
    for _, fname, spec, conv in parsed:
        if fname is None:
            continue
        if fname not in PLACEHOLDERS or spec or conv:
            shown = "{" + fname + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"{name} has placeholder {shown}; only {{key}} and {{value}} are allowed "
                             f"(no format specs or conversions).")
        names.append(fname)
    return names


@dataclass(frozen=True)
class NeedleTask:
    """A NIAH-style task: a needle sentence, a question, a haystack, and the grid of lengths x depths.

    template: the needle, with ``{value}`` (the answer) and optionally ``{key}`` (what the question asks about).
    question: asks for the value; may use ``{key}``, never ``{value}``.
    haystack: None = the Python standard library's source; else a directory of text files (``suffixes``
        restricts the file endings, e.g. (".md", ".txt")).
    values: "number" (7 digits), "word" (two words joined by "-"), "uuid".
    lengths: prompt lengths in model tokens (exact). depths: needle depths in [0, 1] (0 = start).
    n: examples per (length, depth). Everything is seeded: the same task gives the same prompts anywhere
    the haystack files are the same.
    """

    template: str = "The door code for {key} is {value}."
    question: str = "What is the door code for {key}?"
    haystack: Optional[str] = None
    suffixes: Optional[Tuple[str, ...]] = None
    values: str = "number"
    lengths: Tuple[int, ...] = (1024, 2048)
    depths: Tuple[float, ...] = (0.0, 0.5, 1.0)
    n: int = 1
    seed: int = 0
    name: str = "custom"

    def __post_init__(self):
        t_fields, q_fields = _fields("template", self.template), _fields("question", self.question)
        if "value" not in t_fields:
            raise ValueError("template needs a {value} placeholder: the value is the answer the model must find, "
                             "e.g. 'The door code for {key} is {value}.'")
        if "value" in q_fields:
            raise ValueError("question must not contain {value}: it would give the answer away.")
        if "key" in q_fields and "key" not in t_fields:
            raise ValueError("question asks about {key} but the template never states it; add {key} to the "
                             "template or drop it from the question.")
        if self.values not in VALUE_KINDS:
            raise ValueError(f"values must be one of {VALUE_KINDS}, got {self.values!r}")
        for f, lo in (("n", 1), ("seed", 0)):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{f} must be an int >= {lo}, got {v!r}")
        lengths = tuple(self.lengths) if not isinstance(self.lengths, (int, str)) else (self.lengths,)
        depths = tuple(self.depths) if not isinstance(self.depths, (int, float, str)) else (self.depths,)
        if not lengths or not depths:
            raise ValueError("give at least one length and one depth, e.g. lengths=(2048,), depths=(0.5,)")
        need = self.min_length()
        for L in lengths:
            if not isinstance(L, int) or isinstance(L, bool) or L < need:
                raise ValueError(f"length {L!r} is too small for this needle and question: each length must be an "
                                 f"int >= {need} tokens (needle + question + {MIN_HAYSTACK_BYTES} bytes of haystack).")
        for d in depths:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1:
                raise ValueError(f"depth {d!r} must be a number in [0, 1] (0 = start of the context, 1 = end).")
        object.__setattr__(self, "lengths", tuple(sorted(set(lengths))))
        object.__setattr__(self, "depths", tuple(sorted({float(d) for d in depths})))
        suffixes = self.suffixes
        if isinstance(suffixes, str):
            suffixes = tuple(s.strip() for s in suffixes.split(",") if s.strip()) or None
        object.__setattr__(self, "suffixes", tuple(suffixes) if suffixes else None)
        object.__setattr__(self, "haystack", self.haystack or None)
        make_source(self.haystack, self.suffixes, False, "eval")  # a bad directory fails here, not mid-run

    def min_length(self) -> int:
        """Shortest prompt (tokens) that fits the needle and question with the longest key and value."""
        needle = self.template.format(key=_WORST_KEY, value=_WORST_VALUE[self.values])
        question = self.question.format(key=_WORST_KEY)
        return len(needle.encode()) + 1 + len(question.encode()) + 1 + PROMPT_SPECIALS + MIN_HAYSTACK_BYTES

    def examples(self, length: int, depth: float) -> List[dict]:
        """``n`` examples of the common task schema (id, task, prompt, images, answer, meta) at this cell."""
        source = make_source(self.haystack, self.suffixes, False, "eval")
        out = []
        for i in range(self.n):
            rng = random.Random(f"msa-lab/custom/{self.name}/v{TASKS_VERSION}/{self.seed}/{length}/{depth}/{i}")
            key = f"{rng.choice(vocab.ADJECTIVES)}-{rng.choice(vocab.NOUNS)}"
            value = _value(rng, self.values)
            needle = self.template.format(key=key, value=value)
            question = self.question.format(key=key)
            prompt, spans, hay = build_context(source, rng, length, [(depth, needle)], question)
            meta = {"task": asdict(self), "key": key, "value": value, "needle": needle, "question": question,
                    "depth": depth, "actual_depth": spans[0]["actual_depth"], "byte_span": spans[0]["byte_span"],
                    "char_span": spans[0]["char_span"], "length": length,
                    "haystack": {k: v for k, v in hay.items() if k != "pieces"}}
            out.append({"id": f"{self.name}-s{self.seed}-{length}-{depth:g}-{i:04d}", "task": self.name,
                        "prompt": prompt, "images": [], "answer": value, "meta": json.dumps(meta, sort_keys=True)})
        return out

    def cells(self) -> Iterator[Tuple[int, float]]:
        for length in self.lengths:
            for depth in self.depths:
                yield length, depth

    def to_dict(self) -> dict:
        return asdict(self)


def _value(rng: random.Random, kind: str) -> str:
    if kind == "number":
        return str(rng.randrange(1_000_000, 10_000_000))
    if kind == "word":
        return f"{rng.choice(vocab.WORDS)}-{rng.choice(vocab.WORDS)}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def accuracy_table(rows: Sequence[dict]):
    """Per-example rows -> DataFrame [model, length, depth, n, accuracy, seconds] (pandas, lazily)."""
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=["model", "length", "depth", "correct", "seconds"])
    if df.empty:
        return pd.DataFrame(columns=["model", "length", "depth", "n", "accuracy", "seconds"])
    g = df.groupby(["model", "length", "depth"], as_index=False)
    return g.agg(n=("correct", "size"), accuracy=("correct", "mean"), seconds=("seconds", "mean"))


# =============================================================================== the widget
class EvalBuilder(FigureExport):
    """Controls for a :class:`NeedleTask`, Run / Stop with a progress bar, heatmaps, and saving.

    Controls are attributes (``template``, ``question``, ``haystack``, ``suffixes``, ``values``, ``lengths``
    and ``depths`` as comma-separated text, ``n``, ``seed``, ``models``, ``overflow``, ``max_new_tokens``,
    ``chunk_size``); ``task()`` builds the task they describe (ValueError with the fix if invalid).
    ``run()`` runs it here and returns the accuracy table; the Run button runs it in a background thread
    (``wait()`` joins it) so Stop can interrupt between examples. ``rows`` holds one dict per example,
    ``table`` the accuracy per model/length/depth, ``message`` the status line.
    models: {name: Model} to use (tests); otherwise msa_lab.load_model(name) on first use.
    """

    def __init__(self, task: Optional[NeedleTask] = None, models: Optional[Dict[str, object]] = None,
                 run_on: Sequence[str] = MODELS, overflow: str = "truncate_middle", max_new_tokens: int = NIAH_MAX_NEW_TOKENS,
                 chunk_size: int = 4096, out_dir=None):
        task = task or NeedleTask()
        self._models = dict(models or {})
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.rows: List[dict] = []
        self.table = accuracy_table([])
        self.message = ""
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._run_task: Optional[NeedleTask] = None
        style = {"description_width": "initial"}
        wide = W.Layout(width="720px")
        self.template = W.Text(value=task.template, description="needle template", style=style, layout=wide)
        self.question = W.Text(value=task.question, description="question", style=style, layout=wide)
        self.haystack = W.Text(value=task.haystack or "", placeholder="empty = the Python standard library",
                               description="haystack folder", style=style, layout=W.Layout(width="460px"))
        self.suffixes = W.Text(value=",".join(task.suffixes or ()), placeholder=".txt,.md (empty: all)",
                               description="file endings", style=style, layout=W.Layout(width="250px"))
        self.values = W.Dropdown(options=VALUE_KINDS, value=task.values, description="values", style=style,
                                 layout=W.Layout(width="180px"))
        self.lengths = W.Text(value=", ".join(map(str, task.lengths)), description="lengths", style=style,
                              layout=W.Layout(width="300px"))
        self.depths = W.Text(value=", ".join(f"{d:g}" for d in task.depths), description="depths", style=style,
                             layout=W.Layout(width="240px"))
        self.n = W.IntText(value=task.n, description="examples per cell", style=style, layout=W.Layout(width="170px"))
        self.seed = W.IntText(value=task.seed, description="seed", style=style, layout=W.Layout(width="120px"))
        self.models = W.SelectMultiple(options=MODELS, value=tuple(run_on), description="models", rows=2,
                                       style=style, layout=W.Layout(width="230px"))
        self.overflow = W.Dropdown(options=OVERFLOW_POLICIES, value=overflow, description="dense-200k past its limit",
                                   style=style, layout=W.Layout(width="330px"))
        self.max_new_tokens = W.IntText(value=max_new_tokens, description="max new tokens", style=style,
                                        layout=W.Layout(width="160px"))
        self.chunk_size = W.IntText(value=chunk_size, description="chunk", style=style,
                                    layout=W.Layout(width="130px"))
        self.preview_button = W.Button(description="Preview", icon="eye")
        self.run_button = W.Button(description="Run", icon="play", button_style="primary")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.progress = W.IntProgress(value=0, min=0, max=1, description="0 / 0", style=style,
                                      layout=W.Layout(width="420px"))
        self.status = W.HTML()
        self.preview = W.HTML()
        self.save_path = W.Text(value="", placeholder="empty = data/eval/custom-<name>-<time>",
                                description="save to", style=style, layout=W.Layout(width="420px"))
        self.save_button = W.Button(description="Save results", icon="save")
        self.html_button = W.Button(description="Save HTML", icon="download")
        self.png_button = W.Button(description="Save PNG", icon="image")
        self.figure = go.FigureWidget()
        self.preview_button.on_click(lambda _: self.show_preview())
        self.run_button.on_click(lambda _: self.run(background=True))
        self.stop_button.on_click(lambda _: self.stop())
        self.save_button.on_click(lambda _: self._safely(lambda: self.save_results(self.save_path.value or None)))
        self.html_button.on_click(lambda _: self._safely(lambda: self.save_html(self._export_path(".html"))))
        self.png_button.on_click(lambda _: self._safely(lambda: self.save_png(self._export_path(".png"))))
        self.widget = W.VBox([
            self.template, self.question,
            W.HBox([self.haystack, self.suffixes, self.values]),
            W.HBox([self.lengths, self.depths, self.n, self.seed]),
            W.HBox([self.models, W.VBox([self.overflow, W.HBox([self.max_new_tokens, self.chunk_size])])]),
            W.HBox([self.preview_button, self.run_button, self.stop_button, self.progress]),
            self.status, self.preview, self.figure,
            W.HBox([self.save_path, self.save_button, self.html_button, self.png_button]),
        ])
        self._draw()
        self._set_status("Edit the task, press Preview to see a prompt, Run to evaluate.")

    # ------------------------------------------------------------------ the task
    def task(self) -> NeedleTask:
        """The NeedleTask the controls describe (ValueError naming the bad field and the fix)."""
        return NeedleTask(template=self.template.value, question=self.question.value,
                          haystack=self.haystack.value.strip() or None, suffixes=self.suffixes.value or None,
                          values=self.values.value, lengths=_ints("lengths", self.lengths.value),
                          depths=_floats("depths", self.depths.value), n=self.n.value, seed=self.seed.value)

    def show_preview(self) -> Optional[dict]:
        """Build the first example of the smallest cell and show the text around its needle."""
        try:
            task = self.task()
            ex = task.examples(task.lengths[0], task.depths[len(task.depths) // 2])[0]
        except ValueError as e:
            self._set_status(str(e), error=True)
            return None
        meta = json.loads(ex["meta"])
        s, e = meta["char_span"]
        p = ex["prompt"]
        before, needle, after = p[max(0, s - 240):s], p[s:e], p[e:e + 160]
        tail = p[-len(meta["question"]):]
        self.preview.value = (
            f"<div style='font-family:monospace;font-size:11px;white-space:pre-wrap;border:1px solid #ddd;"
            f"padding:6px;max-height:220px;overflow:auto'>… {html.escape(before)}<b style='background:#fff59d'>"
            f"{html.escape(needle)}</b>{html.escape(after)} …\n<b>{html.escape(tail)}</b></div>"
            f"<small>{len(p.encode()) + PROMPT_SPECIALS:,} tokens; needle at depth {meta['actual_depth']:.3f} "
            f"(asked {meta['depth']:g}); answer {html.escape(ex['answer'])}; haystack: "
            f"{html.escape(meta['haystack']['source'])} {html.escape(str(meta['haystack']['root']))}</small>")
        return ex

    # ------------------------------------------------------------------ running
    def run(self, background: bool = False):
        """Evaluate the task on the chosen models. Returns the accuracy table (or the thread if background)."""
        if self._thread is not None and self._thread.is_alive():
            self._set_status("a run is already going; press Stop first.", error=True)
            return self._thread
        try:
            task = self.task()
            if not self.models.value:
                raise ValueError("choose at least one model")
            for name, w in (("max new tokens", self.max_new_tokens), ("chunk", self.chunk_size)):
                if not isinstance(w.value, int) or w.value < 1:
                    raise ValueError(f"{name} must be a positive int, got {w.value!r}")
        except ValueError as e:
            self._set_status(str(e), error=True)
            return None
        self._stop.clear()
        self._run_task = task
        if background:
            self._thread = threading.Thread(target=self._run, args=(task,), daemon=True)
            self._thread.start()
            return self._thread
        self._run(task)
        return self.table

    def stop(self) -> None:
        """Stop after the current example (the results so far are kept)."""
        self._stop.set()
        self._set_status("stopping after the current example ...")

    def wait(self, timeout: Optional[float] = None) -> None:
        """Join a background run."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _model(self, name: str):
        if name not in self._models:
            from ..api import load_model

            self._set_status(f"loading {name} ...")
            self._models[name] = load_model(name)
        return self._models[name]

    def _run(self, task: NeedleTask) -> None:
        names = list(self.models.value)
        cells = list(task.cells())
        total = len(cells) * task.n * len(names)
        self.rows = []
        self.progress.max, self.progress.value = max(1, total), 0
        self.progress.description = f"0 / {total}"
        self.run_button.disabled, self.stop_button.disabled = True, False
        t0, state = time.perf_counter(), "finished"
        try:
            models = {n: self._model(n) for n in names}
            for length, depth in cells:
                for ex in task.examples(length, depth):
                    for name in names:
                        if self._stop.is_set():
                            state = "stopped"
                            raise _Stop
                        self.rows.append(self._one(models[name], name, ex, length, depth))
                        self.progress.value += 1
                        self.progress.description = f"{self.progress.value} / {total}"
                self._refresh()  # one redraw per cell, not per example
                self._set_status(f"running: {len(self.rows)} / {total} examples, {time.perf_counter() - t0:.0f} s")
        except _Stop:
            pass
        except KeyboardInterrupt:  # a synchronous run interrupted from the notebook
            state = "interrupted"
        except Exception as e:  # noqa: BLE001 - show it in the widget; the rows so far are kept
            state = f"failed ({type(e).__name__}: {e})"
        finally:
            self.run_button.disabled, self.stop_button.disabled = False, True
            self._refresh()
            self._set_status(f"{state}: {len(self.rows)} / {total} examples in {time.perf_counter() - t0:.1f} s"
                             + (f"; mean accuracy {self.table['accuracy'].mean():.2f}" if len(self.table) else ""),
                             error=state.startswith("failed"))

    def _one(self, model, name: str, ex: dict, length: int, depth: float) -> dict:
        meta = json.loads(ex["meta"])
        t = time.perf_counter()
        row = {"model": name, "length": length, "depth": depth, "actual_depth": meta["actual_depth"],
               "id": ex["id"], "answer": ex["answer"], "policy": "none"}
        try:
            res = model.generate(ex["prompt"], max_new_tokens=self.max_new_tokens.value, overflow=self.overflow.value,
                                 chunk_size=self.chunk_size.value, return_result=True)
            row.update(prediction=res.text, correct=answer_ok(res.text, ex["answer"]), policy=res.policy,
                       status="ok")
        except ContextTooLong:
            row.update(prediction="", correct=False, policy="error", status="refused (ContextTooLong)")
        row["seconds"] = time.perf_counter() - t
        return row

    # ------------------------------------------------------------------ drawing and saving
    def _refresh(self) -> None:
        self.table = accuracy_table(self.rows)
        self._draw()

    def _draw(self) -> None:
        from ..eval import niah_heatmap

        names = [n for n in MODELS if n in set(self.models.value)] or list(MODELS[:1])
        fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.12)
        task = self._run_task
        for col, name in enumerate(names, 1):
            df = self.table[self.table["model"] == name] if len(self.table) else self.table
            if len(df):
                hm = niah_heatmap(df).data[0]
                hm.update(texttemplate="%{z:.2f}", showscale=col == len(names),
                          hovertemplate=f"{name}<br>length %{{x}}<br>depth %{{y}}<br>accuracy %{{z:.2f}}"
                                        "<extra></extra>")
                fig.add_trace(hm, 1, col)
            fig.update_xaxes(title="context length (tokens)", type="category", row=1, col=col)
            fig.update_yaxes(title="needle depth" if col == 1 else None, type="category", autorange="reversed",
                             row=1, col=col)
        title = "NIAH accuracy, depth x length" + (f": {html.escape(task.template)}" if task else "")
        fig.update_layout(title=dict(text=title, font=dict(size=13)), height=380,
                          width=max(520, 470 * len(names)), margin=dict(t=80, l=70, r=30, b=60))
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.layout = fig.layout
            self.figure.add_traces(fig.data)

    def save_results(self, path=None) -> Tuple[str, str]:
        """Write the per-example rows (CSV) and the task, table and versions (JSON). Returns both paths.

        path: a file stem or a .csv/.json path; None = data/eval/custom-<name>-<UTC time>.
        """
        import pandas as pd
        import torch

        import msa_lab

        if not self.rows:
            raise ValueError("nothing to save yet: run the task first.")
        task = self._run_task or self.task()
        if path is None:
            from ..model.checkpoint import REPO_ROOT

            stamp = time.strftime("%Y%m%d-%H%M%S")
            base = (self.out_dir or REPO_ROOT / "data" / "eval") / f"custom-{task.name}-{stamp}"
        else:
            base = Path(path)
            base = base.with_suffix("") if base.suffix in (".csv", ".json") else base
        base.parent.mkdir(parents=True, exist_ok=True)
        csv, js = base.with_name(base.name + ".csv"), base.with_name(base.name + ".json")
        pd.DataFrame(self.rows).to_csv(csv, index=False)
        cards = {n: {k: (getattr(m, "card", {}) or {}).get(k) for k in ("sha256", "created")}
                 for n, m in self._models.items()}
        js.write_text(json.dumps({
            "task": task.to_dict(), "settings": {"overflow": self.overflow.value, "max_new_tokens":
                                                 self.max_new_tokens.value, "chunk_size": self.chunk_size.value},
            "table": self.table.to_dict(orient="records"), "rows": self.rows, "models": cards,
            "versions": {"msa_lab": msa_lab.__version__, "torch": torch.__version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1, default=str) + "\n")
        self._set_status(f"saved {csv} and {js.name}")
        return str(csv), str(js)

    # ------------------------------------------------------------------ internals
    def _export_path(self, suffix: str) -> str:
        p = self.save_path.value.strip()
        return str(Path(p).with_suffix(suffix)) if p else f"eval_builder{suffix}"

    def _safely(self, fn) -> None:
        try:
            out = fn()
        except (ValueError, OSError, RuntimeError) as e:
            self._set_status(str(e), error=True)
            return
        if isinstance(out, str):
            self._set_status(f"saved {out}")

    def _set_status(self, text: str, error: bool = False) -> None:
        self.message = text
        style = "color:#b00" if error else ""
        self.status.value = f"<span style='{style}'>{html.escape(text)}</span>"


class _Stop(Exception):
    pass


def _ints(name: str, text: str) -> Tuple[int, ...]:
    try:
        from ..bench import parse_lengths

        return tuple(parse_lengths(text.replace(" ", "")))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _floats(name: str, text: str) -> Tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers in [0, 1], e.g. '0, 0.5, 1'; got {text!r}") from None


__all__ = ["NeedleTask", "EvalBuilder", "answer_ok", "accuracy_table"]
