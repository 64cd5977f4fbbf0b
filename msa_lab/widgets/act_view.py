"""Multimodal prompts on a trained model: GUI actions, image QA, the video-frame needle, indexer picks.

    from msa_lab.widgets.act_view import ActView, QAView
    ActView(model)                       # a generated screen (seed slider) or an upload + an instruction
    QAView(model, task="video")          # frames strip, question, answer vs truth, indexer picks

``ActView`` runs ``model.act(image, instruction)`` and draws the Action on the image in the image's
ORIGINAL pixels (the figure's axes are original pixels; the picture sent to the browser is a
downsampled PNG stretched over them): the click point, the target box of a generated screen, the
typed text and a scroll arrow. ``QAView`` asks an image-QA or video-needle question.

Both can show which key blocks the indexer picked (``model.capture`` on the encoded prompt): for
the answer-position queries (the question after the last image, and the SEP token the answer
starts from) and each key block, the share of (layer, KV group, query) rows that select it. Each
image patch is one token, so every patch lies in one key block: the share is drawn over the
image's patch grid, and as bars per block (image-patch blocks coloured, forced shares marked).

Pure functions (``read_upload``, ``action_figure``, ``patch_picks``, ``qa_figure``) work without
the widgets.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

try:
    import ipywidgets as W
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as e:  # optional extra
    raise ImportError("ActView needs ipywidgets and plotly: pip install 'msa-lab[lab]'") from e

from ..api import Action, ActionParseError, Capture, Model
from ..model.tokens import IMAGE_PLACEHOLDER, IMG_END, IMG_PATCH, Encoded
from ..model.vision import _to_rgb
from ..tasks import iter_task
from ._common import FigureExport, torch_threads as _torch_threads

ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpg/jpeg", "WEBP": "webp"}  # PIL format -> file endings
ACCEPT_ATTR = ".png,.jpg,.jpeg,.webp,image/png,image/jpeg,image/webp"
ACCEPTED_TEXT = "PNG, JPEG (.jpg/.jpeg) or WebP"
DISPLAY_SIDE = 640  # longest side of the picture sent to the browser; coordinates stay in original pixels
COLOURS = {"box": "#2ca02c", "click": "#d62728", "type": "#9467bd", "scroll": "#ff7f0e", "truth": "#2ca02c",
           "answer": "#ff7f0e"}
PICK_SCALE = [[0.0, "rgba(255,255,255,0)"], [0.01, "rgba(253,208,162,0.15)"], [1.0, "rgba(166,54,3,0.6)"]]


class UploadError(ValueError):
    """An upload that is not a readable PNG, JPEG or WebP image."""


# ============================================================================ images
def read_upload(value, name: Optional[str] = None):
    """An upload -> PIL image (any mode and size, as stored; the model converts it).

    value: ipywidgets 8 ``FileUpload.value`` (a tuple of dicts with "name" and "content"), one such
    dict, or raw bytes. Raises UploadError naming the accepted formats when nothing readable is there.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, (tuple, list)):
        if not value:
            raise UploadError(f"nothing was uploaded; choose a {ACCEPTED_TEXT} file.")
        value = value[-1]  # the newest file
    if isinstance(value, dict):
        name = name or value.get("name")
        value = value.get("content", b"")
    data = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None
    label = repr(name) if name else "the upload"
    if not data:
        raise UploadError(f"{label} is empty; upload a {ACCEPTED_TEXT} image.")
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        img.load()  # decode now: a truncated file fails here, not inside the model
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise UploadError(f"could not read {label} as an image ({type(e).__name__}: {e}); accepted formats: "
                          f"{ACCEPTED_TEXT}.") from e
    if fmt not in ACCEPTED_FORMATS:
        raise UploadError(f"{label} is a {fmt} image; accepted formats: {ACCEPTED_TEXT}. Convert it first "
                          f"(e.g. PIL: Image.open(path).save('screen.png')).")
    return img


def _display_uri(img, max_side: int = DISPLAY_SIDE) -> str:
    """A downsampled RGB PNG of ``img`` as a data URI (what the browser gets; the model's copy is separate)."""
    rgb, _ = _to_rgb(img)
    if max(rgb.size) > max_side:
        rgb = rgb.copy()
        rgb.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_layout(uri: str, x0: float, size: Tuple[int, int], y0: float = 0.0, xref="x", yref="y") -> dict:
    """A layout image covering [x0, x0 + w] x [y0, y0 + h] in data coordinates (y axis reversed: 0 on top)."""
    w, h = size
    return dict(source=uri, xref=xref, yref=yref, x=x0, y=y0, sizex=w, sizey=h, sizing="stretch",
                xanchor="left", yanchor="top", layer="below")


def _box_xy(box, dx: float = 0.0):
    x0, y0, x1, y1 = box
    return [x0 + dx, x1 + dx, x1 + dx, x0 + dx, x0 + dx], [y0, y0, y1, y1, y0]


# ============================================================================ indexer picks
@dataclass
class PatchPicks:
    """Which key blocks the answer-position queries selected, mapped onto each image's patch grid.

    block_freq: float [n_blocks], share of the (layer, group, query) rows that see a block and select it.
    block_forced: float [n_blocks], share of those rows where the block is forced (init or local window).
    block_image: float [n_blocks], share of the block's tokens that are image patches.
    grids: per image, float [g, g] (g = image_size / patch_size): block_freq of the block holding each patch.
    grid_blocks: per image, int [g, g]: that block's index.
    queries: (first, last + 1) token positions of the answer-position queries.
    """

    block_freq: np.ndarray
    block_forced: np.ndarray
    block_image: np.ndarray
    grids: List[np.ndarray]
    grid_blocks: List[np.ndarray]
    queries: Tuple[int, int]
    layer: Optional[int]
    block_size: int
    top_k: int
    n_tokens: int

    @property
    def trivial(self) -> bool:
        """True when every visible block fits in top_k, so the indexer had nothing to choose."""
        return len(self.block_freq) <= self.top_k

    def summary(self) -> str:
        nb = len(self.block_freq)
        img = self.block_image > 0
        where = "all layers" if self.layer is None else f"layer {self.layer}"
        if self.trivial:
            return (f"{self.n_tokens} tokens = {nb} blocks of {self.block_size} <= top_k {self.top_k}: every block is "
                    f"read, the indexer had nothing to choose (make the prompt longer, e.g. more video frames).")
        dyn = np.clip(self.block_freq - self.block_forced, 0, None)
        return (f"{self.n_tokens} tokens = {nb} blocks of {self.block_size}, top_k {self.top_k}, {where}: answer "
                f"queries select {self.block_freq[img].mean():.0%} of image-patch blocks ({int(img.sum())}) and "
                f"{self.block_freq[~img].mean() if (~img).any() else float('nan'):.0%} of text blocks; "
                f"indexer's own picks (not forced) average {dyn[img].mean():.0%} on image blocks.")


def answer_queries(enc: Encoded) -> Tuple[int, int]:
    """Token positions [start, end) of the answer-position queries: everything after the last image."""
    ids = enc.ids.numpy()
    ends = np.flatnonzero(ids == IMG_END)
    start = int(ends[-1]) + 1 if ends.size else 0
    return min(start, len(ids) - 1), len(ids)


def patch_picks(cap: Capture, enc: Encoded, patch_grid: int, init_blocks: int, local_blocks: int,
                layer: Optional[int] = None, queries: Optional[Tuple[int, int]] = None) -> PatchPicks:
    """Selection shares of the answer-position queries per key block, and per image patch.

    cap: ``model.capture(enc)`` of a sparse model (cap.selected[l] int [Hkv, N, top_k]).
    patch_grid: patches per image side (image_size // patch_size). init_blocks, local_blocks: the
    model's forcing pattern (Capture does not carry it). layer: one layer, or None for all.
    """
    if cap.selected is None:
        raise ValueError("this model is dense (it reads every block), so there are no indexer picks; "
                         "load msa-tiny for picks.")
    q0, q1 = queries or answer_queries(enc)
    bs, n = cap.block_size, len(enc)
    nb = -(-n // bs)
    layers = range(len(cap.selected)) if layer is None else [layer]
    sel = np.concatenate([cap.selected[i][:, q0:q1] for i in layers], axis=0)  # [L*Hkv, Q, K]
    hit = np.zeros((sel.shape[0], sel.shape[1], nb + 1), dtype=bool)  # last column eats the -1 padding
    np.put_along_axis(hit, np.where(sel < 0, nb, sel), True, axis=-1)
    # shares count only the queries a block is visible to (causal): a later block is not "unpicked"
    qb = np.arange(q0, q1) // bs
    blocks = np.arange(nb)
    visible = blocks[None] <= qb[:, None]  # [Q, nb]
    seen = np.maximum(visible.sum(0), 1)
    freq = hit[..., :nb].mean(axis=0).sum(0) / seen
    # forced blocks of each query: the first init_blocks, and local_blocks ending at its own block
    forced = visible & ((blocks[None] < init_blocks) | (blocks[None] > qb[:, None] - local_blocks))
    is_patch = (enc.ids.numpy() == IMG_PATCH)
    image_share = np.bincount(np.arange(n) // bs, weights=is_patch, minlength=nb) / np.bincount(
        np.arange(n) // bs, minlength=nb)
    patch_pos = np.flatnonzero(is_patch)
    per_image = patch_grid * patch_grid
    grids, grid_blocks = [], []
    for i in range(len(patch_pos) // per_image):
        b = (patch_pos[i * per_image:(i + 1) * per_image] // bs).reshape(patch_grid, patch_grid)
        grid_blocks.append(b)
        grids.append(freq[b])
    return PatchPicks(freq, forced.sum(0) / seen, image_share, grids, grid_blocks, (q0, q1), layer, bs,
                      cap.top_k, n)


def capture_picks(model: Model, prompt: str, images: Sequence, layer: Optional[int] = None):
    """(PatchPicks, Capture) of ``prompt`` + ``images`` on ``model``: one prefill, no dense mass."""
    enc = model.encode(prompt, images)
    cap = model.capture(enc, dense_limit=0)
    return _picks_of(model, cap, enc, layer), cap


def _picks_of(model: Model, cap: Capture, enc: Encoded, layer: Optional[int]) -> PatchPicks:
    c = model.config
    return patch_picks(cap, enc, c.image_size // c.patch_size, c.init_blocks, c.local_blocks, layer)


def picks_heatmap(grid: np.ndarray, blocks: np.ndarray, size: Tuple[int, int], x0: float = 0.0, y0: float = 0.0,
                  showscale: bool = True) -> "go.Heatmap":
    """A translucent heatmap of one image's patch grid, in that image's original pixels (from x0, y0)."""
    g = grid.shape[0]
    w, h = size
    xs = x0 + (np.arange(g) + 0.5) * w / g
    ys = y0 + (np.arange(g) + 0.5) * h / g
    return go.Heatmap(z=grid, x=xs, y=ys, customdata=blocks, zmin=0, zmax=1, colorscale=PICK_SCALE,
                      showscale=showscale, colorbar=dict(title=dict(text="picked"), len=0.35, x=1.02, y=0.3,
                                                         thickness=10),
                      hovertemplate="patch block %{customdata}: selected by %{z:.0%} of answer queries<extra></extra>",
                      name="indexer picks", xgap=1, ygap=1)


def picks_bars(picks: PatchPicks) -> List["go.Bar"]:
    """Per key block: selection share (orange = holds image patches, grey = text) and the forced share."""
    nb = len(picks.block_freq)
    colour = ["#e6550d" if s > 0 else "#9e9e9e" for s in picks.block_image]
    hover = [f"block {b}: {f:.0%} selected, {fo:.0%} forced, {s:.0%} image patches"
             for b, (f, fo, s) in enumerate(zip(picks.block_freq, picks.block_forced, picks.block_image))]
    return [go.Bar(x=np.arange(nb), y=picks.block_freq, marker_color=colour, name="selected (orange: image)",
                   hovertext=hover, hoverinfo="text"),
            go.Scatter(x=np.arange(nb), y=np.where(picks.block_forced > 0, picks.block_forced, np.nan), mode="markers",
                       name="forced (init/local)",
                       marker=dict(symbol="line-ew-open", size=14, color="#08519c", line=dict(width=3)),
                       hoverinfo="skip")]


# ============================================================================ GUI actions
def action_traces(action: Optional[Action], size: Tuple[int, int], box=None, truth=None) -> List["go.Scatter"]:
    """Traces for one action on an image of ``size`` (original pixels): always the same five, in order.

    [target box, click point, typed text, scroll arrow, true point]; an absent part is an empty trace,
    so a FigureWidget keeps its trace order whatever the action.
    """
    w, h = size
    bx, by = _box_xy(box) if box is not None else ([], [])
    tx, ty = ([truth[0]], [truth[1]]) if truth is not None else ([], [])
    cx = cy = kx = ky = sx = sy = ()
    ktext, ctext = "", ""
    kind = action.kind if action is not None else None
    has_point = action is not None and action.x is not None and action.y is not None
    if kind == "click" and has_point:
        cx, cy, ctext = [action.x], [action.y], f"click ({action.x}, {action.y})"
    if kind == "type":
        if has_point:
            kx, ky = [action.x], [action.y]
        else:  # no point: the text goes to the focused field; show it in the top-left corner
            kx, ky = [0.02 * w], [0.05 * h]
        ktext = f"type {action.text or ''!r}"
    if kind == "scroll":
        ax, ay = (action.x, action.y) if has_point else (w / 2, h / 2)
        length = 0.18 * h * (1 if action.direction == "down" else -1)
        sx, sy = [ax, ax], [ay, ay + length]
    return [
        go.Scatter(x=bx, y=by, mode="lines", name="target box", line=dict(color=COLOURS["box"], width=3, dash="dash"),
                   hoverinfo="skip"),
        go.Scatter(x=cx, y=cy, mode="markers+text", name="click", text=[ctext] if ctext else [],
                   textposition="top right", textfont=dict(color=COLOURS["click"], size=14),
                   marker=dict(symbol="circle-x-open", size=22, color=COLOURS["click"], line=dict(width=3))),
        go.Scatter(x=kx, y=ky, mode="markers+text", name="typed text", text=[ktext] if ktext else [],
                   textposition="bottom right", textfont=dict(color=COLOURS["type"], size=15),
                   marker=dict(symbol="line-ns-open", size=18, color=COLOURS["type"], line=dict(width=3))),
        go.Scatter(x=sx, y=sy, mode="lines+markers", name=f"scroll {action.direction}" if sx else "scroll",
                   line=dict(color=COLOURS["scroll"], width=5),
                   marker=dict(symbol=["circle", "arrow"], size=[8, 22], angleref="previous", color=COLOURS["scroll"])),
        go.Scatter(x=tx, y=ty, mode="markers", name="true point", marker=dict(symbol="x-thin-open", size=16,
                                                                             color=COLOURS["truth"],
                                                                             line=dict(width=3))),
    ]


def action_figure(image, action: Optional[Action] = None, box=None, truth=None, title: str = "",
                  picks: Optional[PatchPicks] = None) -> "go.Figure":
    """A plotly figure of ``image`` with ``action`` drawn in its original pixels (see action_traces)."""
    size = image.size
    fig = go.Figure(action_traces(action, size, box, truth))
    if picks is not None and picks.grids and not picks.trivial:  # all-picked would only tint the screen
        fig.add_trace(picks_heatmap(picks.grids[0], picks.grid_blocks[0], size))
    _image_axes(fig, [_image_layout(_display_uri(image), 0, size)], size[0], size[1], title)
    return fig


def _image_axes(fig, images, width: float, height: float, title: str, max_px: int = 760) -> None:
    k = min(1.0, max_px / max(width, height))
    fig.update_layout(images=images, title=dict(text=title, font=dict(size=14)),
                      width=int(width * k) + 200, height=int(height * k) + 120, margin=dict(l=50, r=150, t=80, b=40),
                      legend=dict(x=1.02, y=1), plot_bgcolor="white")
    fig.update_xaxes(range=[0, width], showgrid=False, zeroline=False, constrain="domain", title="x (original px)")
    fig.update_yaxes(range=[height, 0], showgrid=False, zeroline=False, scaleanchor="x", constrain="domain",
                     title="y (original px)")


def describe_action(action: Action, box=None) -> str:
    """One line: the action, and for a known target box whether the point lands in it."""
    parts = [action.kind]
    if action.x is not None:
        parts.append(f"at ({action.x}, {action.y})" + ("" if action.in_image else " (outside the image)"))
    if action.text:
        parts.append(f"text {action.text!r}")
    if action.direction:
        parts.append(action.direction)
    line = " ".join(parts)
    if box is not None and action.x is not None:
        inside = box[0] <= action.x < box[2] and box[1] <= action.y < box[3]
        line += "; inside the target box" if inside else "; misses the target box"
    return line


class _Base(FigureExport):
    """Shared status line, export buttons and error display."""

    def _init_common(self, save_name: str):
        style = {"description_width": "initial"}
        self.message = ""
        self.status = W.HTML()
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="200px", visibility="hidden"))
        self.save_path = W.Text(value=save_name, description="save to", style=style, layout=W.Layout(width="260px"))
        self.save_html_button = W.Button(description="Save HTML", icon="download")
        self.save_png_button = W.Button(description="Save PNG", icon="image")
        self.save_html_button.on_click(lambda _: self._save_clicked("html"))
        self.save_png_button.on_click(lambda _: self._save_clicked("png"))
        self.figure = go.FigureWidget()

    def _export_row(self):
        return W.HBox([self.save_path, self.save_html_button, self.save_png_button])

    def _save_clicked(self, kind: str) -> None:
        path = self.save_path.value
        if kind == "png" and not path.endswith(".png"):
            path = re.sub(r"\.html?$", "", path) + ".png"
        try:
            (self.save_png if kind == "png" else self.save_html)(path)
        except (OSError, RuntimeError) as e:
            self._error(f"could not save {path!r}: {e}")
            return
        self.status.value += f"<br>saved {html.escape(path)}"

    def _error(self, text: str) -> None:
        self.message = text
        self.status.value = f"<div style='color:#b00020'><b>Error:</b> {html.escape(text)}</div>"

    def _note(self, text: str) -> None:
        self.message = text
        self.status.value = html.escape(text).replace("\n", "<br>")

    def _set_figure(self, new: "go.Figure") -> None:
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.layout = new.layout
            self.figure.add_traces(new.data)

    def _busy(self, on: bool, steps: int = 1) -> None:
        self.progress.max = max(1, steps)
        self.progress.value = 0
        self.progress.layout.visibility = "visible" if on else "hidden"


class ActView(_Base):
    """A screen (generated, or uploaded), an instruction, ``model.act`` and the action drawn on the screen.

    Controls are attributes: ``seed`` (generated screen), ``new_screen`` (button: next seed), ``upload``
    (FileUpload: PNG/JPEG/WebP, any mode and size), ``instruction`` (Text), ``act_button``, ``picks``
    (Checkbox: overlay the indexer's picks). ``act()``/``draw(action)``/``load_image(img)`` do the same
    from code. ``action`` is the last Action (None after an error), ``message`` the status as text,
    ``meta`` the generated screen's task meta (None for an upload), ``last_act_s`` the last act's time.

    ``torch_threads``: torch threads while the model runs (restored after; None leaves torch's setting).
    One by default: these prompts are a few hundred tokens, and on a busy 2-core machine two OpenMP
    threads made a video-needle prefill 10x slower (13.8 s vs 1.1 s) than one.
    """

    def __init__(self, model: Model, seed: int = 0, image=None, instruction: Optional[str] = None,
                 run: bool = False, max_new_tokens: int = 96, show_picks: bool = False,
                 torch_threads: Optional[int] = 1):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.torch_threads = torch_threads
        self.image = None  # PIL image, original size and mode
        self.meta: Optional[dict] = None
        self.truth: Optional[dict] = None
        self.source = ""
        self.action: Optional[Action] = None
        self.failed_raw: Optional[str] = None  # what the model wrote when it was not an action
        self.picks_result: Optional[PatchPicks] = None
        self.last_act_s = float("nan")
        self._init_common("act_view.html")
        style = {"description_width": "initial"}
        self.seed = W.IntSlider(value=seed, min=0, max=999, description="screen seed", style=style,
                                continuous_update=False, layout=W.Layout(width="330px"))
        self.new_screen = W.Button(description="New screen", icon="refresh")
        self.upload = W.FileUpload(accept=ACCEPT_ATTR, multiple=False, description="Upload image")
        self.instruction = W.Text(value="", description="instruction", placeholder="Click the 'Save' button",
                                  style=style, layout=W.Layout(width="520px"))
        self.act_button = W.Button(description="Act", icon="play", button_style="primary")
        self.picks = W.Checkbox(value=show_picks, description="indexer picks", indent=False,
                                layout=W.Layout(width="130px"))
        self.new_screen.on_click(lambda _: setattr(self.seed, "value", (self.seed.value + 1) % (self.seed.max + 1)))
        self.act_button.on_click(lambda _: self.act())
        self.seed.observe(lambda _: self.load_screen(), names="value")
        self.upload.observe(self._uploaded, names="value")
        self.picks.observe(lambda _: self._redraw(), names="value")
        self.widget = W.VBox([
            W.HBox([self.seed, self.new_screen, self.upload]),
            W.HBox([self.instruction, self.act_button, self.picks, self.progress]),
            self.status, self.figure, self._export_row(),
        ])
        if image is not None:
            self.load_image(image, instruction=instruction)
        else:
            self.load_screen()
            if instruction is not None:
                self.instruction.value = instruction
        if run:
            self.act()

    # ------------------------------------------------------------------ public
    def load_screen(self, seed: Optional[int] = None) -> None:
        """Show generated GUI screen ``seed`` (default: the slider's) with its instruction and target box."""
        if seed is not None and seed != self.seed.value:
            self.seed.value = seed  # observer calls back here
            return
        ex = next(iter(iter_task("gui", 1, self.seed.value)))
        self.meta = json.loads(ex["meta"])
        self.truth = json.loads(ex["answer"])
        self.image = ex["images"][0]
        self.source = f"generated screen, seed {self.seed.value}"
        self.instruction.value = self.meta["instruction"]
        self._reset()

    def load_image(self, image, name: str = "image", instruction: Optional[str] = None) -> None:
        """Use ``image`` (PIL image, bytes of a PNG/JPEG/WebP, or a FileUpload value) instead of a generated one."""
        img = image if hasattr(image, "size") and hasattr(image, "mode") else read_upload(image, name)
        self.image, self.meta, self.truth = img, None, None
        self.source = f"{name}: {img.size[0]}x{img.size[1]} {img.mode}"
        if instruction is not None:
            self.instruction.value = instruction
        self._reset()

    def act(self) -> Optional[Action]:
        """Run ``model.act`` on the image and instruction and draw the action; errors go to the status line."""
        text = self.instruction.value
        if not text.strip():
            self._error("type an instruction first, e.g. \"Click the 'Save' button\" or \"Scroll down in the list\".")
            return None
        self._busy(True, 2 if self.picks.value else 1)
        self.failed_raw = None
        try:  # finally: an interrupted or failed run leaves no progress bar behind
            t0 = time.perf_counter()
            try:
                with _torch_threads(self.torch_threads):
                    self.action = self.model.act(self.image, text, max_new_tokens=self.max_new_tokens)
            except ActionParseError as e:
                self.action, self.failed_raw = None, e.raw
            self.last_act_s = time.perf_counter() - t0
            self.progress.value = 1
            if self.picks.value:
                self._compute_picks()
        finally:
            self._busy(False)
        self._redraw()
        if self.failed_raw is not None:
            self._error(f"the model's output is not an action: it wrote {self.failed_raw[:200]!r}. (A nearly "
                        f"untrained checkpoint writes noise; the trained msa-tiny answers with JSON.)")
        return self.action

    def draw(self, action: Optional[Action]) -> None:
        """Draw a given Action (x, y in original pixels) on the current image."""
        self.action = action
        self._redraw()

    # ------------------------------------------------------------------ internals
    def _reset(self) -> None:
        self.action, self.picks_result, self.failed_raw = None, None, None
        if self.picks.value:
            self._compute_picks()
        self._redraw()

    def _compute_picks(self) -> None:
        if not self.model.config.sparse:
            self.picks_result = None
            return
        prompt = f"{IMAGE_PLACEHOLDER}\n{self.instruction.value.strip() or ' '}"
        with _torch_threads(self.torch_threads):
            self.picks_result, _ = capture_picks(self.model, prompt, [self.image])

    def _redraw(self) -> None:
        if self.picks.value and self.picks_result is None and self.image is not None:
            self._compute_picks()
        box = self.meta["box"] if self.meta else None
        truth = (self.truth["x"], self.truth["y"]) if self.truth and self.truth.get("x") is not None else None
        title = html.escape(self.instruction.value or "(no instruction)")
        if self.action is not None:
            title += f"<br><sup>model: {html.escape(describe_action(self.action, box))}</sup>"
        elif self.failed_raw is not None:
            title += f"<br><sup>model wrote no action: {html.escape(repr(self.failed_raw[:80]))}</sup>"
        fig = action_figure(self.image, self.action, box, truth, title,
                            self.picks_result if self.picks.value else None)
        self._set_figure(fig)
        lines = [f"{self.source}; axes in original pixels"]
        if self.truth:
            lines.append(f"truth: {json.dumps(self.truth)}")
        if self.action is not None:
            lines.append(f"model ({self.last_act_s:.1f} s): {describe_action(self.action, box)}; raw "
                         f"{self.action.raw[:120]!r}")
        if self.picks.value:
            lines.append(self.picks_result.summary() if self.picks_result is not None
                         else f"{self.model.name} is dense: no indexer picks to show")
        self._note("\n".join(lines))

    def _uploaded(self, change) -> None:
        if not change["new"]:
            return
        entry = change["new"][-1]
        name = entry.get("name", "upload") if isinstance(entry, dict) else "upload"
        try:
            self.load_image(change["new"], name=name)
        except UploadError as e:
            self._error(str(e))


# ============================================================================ image QA and the video needle
def first_int(text: str) -> Optional[int]:
    m = re.search(r"-?\d+", text or "")
    return int(m.group()) if m else None


def answer_matches(task: str, answer: str, truth: str) -> bool:
    """Video: the first integer in the answer equals the frame; image QA: case- and space-insensitive match."""
    if task == "video":
        return first_int(answer) == int(truth)
    return answer.strip().lower().rstrip(".") == truth.strip().lower()


def qa_figure(example: dict, answer: Optional[str] = None, picks: Optional[PatchPicks] = None,
              title: str = "", per_row: int = 4) -> "go.Figure":
    """The example's images in rows of ``per_row`` (each in its original pixels), picks overlaid.

    Video: the true frame is outlined green, the model's answer orange. With picks, a second panel
    shows the selection share per key block.
    """
    imgs = example["images"]
    w, h = imgs[0].size
    gap, label = 0.08 * w, 0.2 * h
    cols, rows_img = min(len(imgs), per_row), -(-len(imgs) // per_row)
    total_w, total_h = cols * (w + gap) - gap, rows_img * (h + label)

    def origin(i):  # top-left corner of frame i
        return (i % per_row) * (w + gap), (i // per_row) * (h + label) + label

    rows = 2 if picks is not None else 1
    top_px = int(np.clip(820 * total_h / total_w, 160, 520))
    bars_px = 220 if picks is not None else 0
    fig = make_subplots(rows=rows, cols=1, vertical_spacing=0.1 if rows == 2 else 0.0,
                        row_heights=[top_px, bars_px] if rows == 2 else [1.0])
    side = 256 if len(imgs) > 1 else DISPLAY_SIDE
    layout_images = [_image_layout(_display_uri(im, side), *origin(i)[:1], im.size, origin(i)[1])
                     for i, im in enumerate(imgs)]
    if len(imgs) > 1:  # frame numbers above the frames
        xy = [origin(i) for i in range(len(imgs))]
        fig.add_trace(go.Scatter(x=[x + w / 2 for x, _ in xy], y=[y - label / 2 for _, y in xy], mode="text",
                                 text=[f"frame {i + 1}" for i in range(len(imgs))], showlegend=False,
                                 hoverinfo="skip"), 1, 1)
    if example["task"] == "video":
        t = int(example["answer"]) - 1
        bx, by = _box_xy((0, 0, w, h), *origin(t)[:1])
        fig.add_trace(go.Scatter(x=bx, y=[v + origin(t)[1] for v in by], mode="lines", name=f"truth: frame {t + 1}",
                                 line=dict(color=COLOURS["truth"], width=4)), 1, 1)
        got = first_int(answer) if answer is not None else None
        if got is not None and 1 <= got <= len(imgs):
            x0, y0 = origin(got - 1)
            bx, by = _box_xy((-4, -4, w + 4, h + 4), x0)
            fig.add_trace(go.Scatter(x=bx, y=[v + y0 for v in by], mode="lines", name=f"model: frame {got}",
                                     line=dict(color=COLOURS["answer"], width=3, dash="dash")), 1, 1)
    if picks is not None:
        for i, (grid, blocks) in enumerate(zip(picks.grids, picks.grid_blocks)):
            fig.add_trace(picks_heatmap(grid, blocks, (w, h), *origin(i), showscale=i == 0), 1, 1)
        for tr in picks_bars(picks):
            fig.add_trace(tr, 2, 1)
        fig.update_traces(colorbar=dict(y=0.75, len=0.4), selector=dict(type="heatmap"))  # beside the frames
        fig.update_xaxes(title=f"key block ({picks.block_size} tokens each)", row=2, col=1)
        fig.update_yaxes(title="share of answer queries", range=[0, 1.05], row=2, col=1)
    fig.update_layout(images=layout_images, title=dict(text=title, font=dict(size=14)), plot_bgcolor="white",
                      width=1000, height=top_px + bars_px + 150, margin=dict(l=60, r=170, t=80, b=50),
                      legend=dict(x=1.02, y=1))
    fig.update_xaxes(range=[-gap / 2, total_w + gap / 2], showgrid=False, zeroline=False, showticklabels=False,
                     row=1, col=1)
    fig.update_yaxes(range=[total_h + gap / 2, 0], showgrid=False, zeroline=False, scaleanchor="x",
                     showticklabels=False, row=1, col=1)
    return fig


class QAView(_Base):
    """Image QA or the video-frame needle: the images, the question, the model's answer against the truth.

    Controls: ``task`` ("image_qa" | "video"), ``seed``, ``frames`` (video length), ``ask_button``,
    ``picks`` (overlay which patch blocks the answer-position queries selected), ``layer`` (None = all).
    ``ask()`` runs the model; ``answer``, ``correct`` and ``picks_result`` hold the last result.
    ``torch_threads``: as in ActView.
    """

    def __init__(self, model: Model, task: str = "image_qa", seed: int = 0, frames: int = 8, run: bool = False,
                 show_picks: bool = False, max_new_tokens: int = 16, torch_threads: Optional[int] = 1):
        if task not in ("image_qa", "video"):
            raise ValueError(f"task must be 'image_qa' or 'video', got {task!r}")
        self.model = model
        self.torch_threads = torch_threads
        self.max_new_tokens = max_new_tokens
        self.example: Optional[dict] = None
        self.answer: Optional[str] = None
        self.correct: Optional[bool] = None
        self.picks_result: Optional[PatchPicks] = None
        self._capture: Optional[Capture] = None
        self._enc: Optional[Encoded] = None
        self._init_common(f"{task}_view.html")
        style = {"description_width": "initial"}
        self.task = W.ToggleButtons(options=[("image QA", "image_qa"), ("video needle", "video")], value=task)
        self.seed = W.IntSlider(value=seed, min=0, max=999, description="seed", style=style, continuous_update=False)
        self.frames = W.IntSlider(value=frames, min=2, max=32, description="frames", style=style,
                                  continuous_update=False, layout=W.Layout(width="260px"))
        self.ask_button = W.Button(description="Ask", icon="play", button_style="primary")
        self.picks = W.Checkbox(value=show_picks, description="indexer picks", indent=False,
                                layout=W.Layout(width="130px"))
        n_layers = model.config.n_layers
        self.layer = W.Dropdown(options=[("all layers", None)] + [(f"layer {i}", i) for i in range(n_layers)],
                                value=None, description="layer", layout=W.Layout(width="180px"))
        self.question = W.HTML()
        self.ask_button.on_click(lambda _: self.ask())
        for c in (self.task, self.seed, self.frames):
            c.observe(lambda _: self.load_example(), names="value")
        self.picks.observe(lambda _: self._picks_changed(), names="value")
        self.layer.observe(lambda _: self._layer_changed(), names="value")
        self.widget = W.VBox([
            W.HBox([self.task, self.seed, self.frames]),
            W.HBox([self.ask_button, self.picks, self.layer, self.progress]),
            self.question, self.status, self.figure, self._export_row(),
        ])
        self.load_example()
        if run:
            self.ask()

    # ------------------------------------------------------------------ public
    def load_example(self) -> None:
        """Generate the example the controls name and show it (the previous answer is cleared)."""
        self.frames.layout.display = None if self.task.value == "video" else "none"
        opts = {"num_frames": self.frames.value} if self.task.value == "video" else {}
        self.example = next(iter(iter_task(self.task.value, 1, self.seed.value, **opts)))
        self.answer = self.correct = None
        self.picks_result, self._capture, self._enc = None, None, None
        q = self.example["prompt"].replace(IMAGE_PLACEHOLDER, "").strip()
        self.question.value = f"<b>Question:</b> {html.escape(q)}"
        self._redraw()

    def ask(self) -> Optional[str]:
        """Generate the model's answer (and, with picks on, capture the selection) and redraw."""
        ex = self.example
        self._busy(True, 2 if self.picks.value else 1)
        t0 = time.perf_counter()
        try:
            with _torch_threads(self.torch_threads):
                self.answer = self.model.generate(ex["prompt"], ex["images"],
                                                  max_new_tokens=self.max_new_tokens).strip()
            self.correct = answer_matches(ex["task"], self.answer, ex["answer"])
            self.progress.value = 1
            if self.picks.value:
                self._compute_picks()
        finally:
            self._busy(False)
        self._redraw(time.perf_counter() - t0)
        return self.answer

    # ------------------------------------------------------------------ internals
    def _compute_picks(self) -> None:
        if not self.model.config.sparse:
            return
        self._enc = self.model.encode(self.example["prompt"], self.example["images"])
        with _torch_threads(self.torch_threads):
            self._capture = self.model.capture(self._enc, dense_limit=0)
        self._layer_changed(redraw=False)

    def _layer_changed(self, redraw: bool = True) -> None:
        if self._capture is not None:
            self.picks_result = _picks_of(self.model, self._capture, self._enc, self.layer.value)
        if redraw:
            self._redraw()

    def _picks_changed(self) -> None:
        if self.picks.value and self._capture is None and self.model.config.sparse:
            self._busy(True)
            self._compute_picks()
            self._busy(False)
        self._redraw()

    def _redraw(self, seconds: Optional[float] = None) -> None:
        ex = self.example
        truth = ex["answer"]
        if self.answer is None:
            verdict = f"truth: {truth}; press Ask"
        else:
            verdict = (f"model: {self.answer!r} vs truth {truth!r}: "
                       f"{'correct' if self.correct else 'wrong'}")
        title = html.escape(verdict)
        picks = self.picks_result if self.picks.value else None
        self._set_figure(qa_figure(ex, self.answer, picks, title))
        lines = [f"{ex['id']}: {len(ex['images'])} image(s) of {ex['images'][0].size[0]}x{ex['images'][0].size[1]}; "
                 + verdict + (f" ({seconds:.1f} s)" if seconds is not None else "")]
        if self.picks.value:
            if not self.model.config.sparse:
                lines.append(f"{self.model.name} is dense: no indexer picks to show")
            elif picks is not None:
                lines.append(picks.summary())
        self._note("\n".join(lines))


__all__ = ["ActView", "QAView", "UploadError", "read_upload", "action_traces", "action_figure", "describe_action",
           "PatchPicks", "patch_picks", "capture_picks", "answer_queries", "qa_figure", "answer_matches"]
