"""The user API: load a trained model and use it.

    from msa_lab.api import load_model, Action
    m = load_model("msa-tiny")                        # or "dense-200k"
    m.generate("... long text ... What is the magic number for X?")
    m.act(screenshot, "Click the 'Save' button")      # -> Action(kind, x, y in ORIGINAL pixels, text, direction)
    for step in m.prefill_steps(long_text, chunk_size=4096): ...
    cap = m.capture(text)                             # selected blocks + dense block mass per layer/group

``Model.from_config(cfg)`` builds a randomly initialised model (tests, demos without a checkpoint).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from .model.cache import check_prefill
from .model.checkpoint import load_checkpoint
from .model.config import MODEL_CONFIGS, ModelConfig
from .model.engine import Engine, GenerationResult, PrefillStep, whole_image_embeds
from .model.indexer import dense_block_mass
from .model.net import MSATransformer
from .model.tokens import IMAGE_PLACEHOLDER, Encoded, describe, encode_prompt
from .model.vision import PreparedImage, prepare_image

ACTION_KINDS = ("click", "type", "scroll")
DIRECTIONS = ("up", "down")


class ActionParseError(ValueError):
    """The model's output could not be read as an action; ``raw`` holds what it wrote."""

    def __init__(self, msg: str, raw: str):
        super().__init__(f"{msg}; the model wrote: {raw!r}")
        self.raw = raw


@dataclass
class Action:
    """A GUI action. x, y are in the ORIGINAL image's pixels (None where the action has no point).

    model_xy: the point on the model's resized image; in_image: whether (x, y) lies inside the original.
    point_prob: for a model with a GUI pointer, the probability of the patch it chose (the point is the pointer's).
    """

    kind: str
    x: Optional[int] = None
    y: Optional[int] = None
    text: Optional[str] = None
    direction: Optional[str] = None
    raw: str = ""
    model_xy: Optional[Tuple[int, int]] = None
    in_image: bool = True
    point_prob: Optional[float] = None  # the GUI pointer's probability of its patch (None: the point is the text's)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in ("kind", "x", "y", "text", "direction")}


# ---------------------------------------------------------------------------- action parsing
def _first_object(raw: str) -> Optional[str]:
    start = raw.find("{")
    if start < 0:
        return None
    depth = 0
    for i, ch in enumerate(raw[start:], start):
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return raw[start:i + 1]
    return raw[start:] + "}"  # generation stopped before the closing brace


def _loads_lenient(s: str) -> Optional[dict]:
    for cand in (s, re.sub(r",\s*}", "}", s.replace("'", '"')).replace("None", "null")):
        try:
            d = json.loads(cand)
            return d if isinstance(d, dict) else None
        except json.JSONDecodeError:
            continue
    return None


def _field(raw: str, name: str, pattern: str) -> Optional[str]:
    m = re.search(rf"[\"']?{name}[\"']?\s*[:=]\s*[\"']?({pattern})", raw)
    return m.group(1) if m else None


def parse_action(raw: str, image: Optional[PreparedImage] = None, point: Optional[Tuple[int, int]] = None) -> Action:
    """Read an action from model text (JSON, or JSON-ish) and map its point to original pixels.

    The model names points on its resized image; ``image.to_original`` maps them back. point: a point on the
    resized image from the model's GUI pointer, used in place of the text's x and y. Raises ActionParseError
    when no valid kind, or a point a click needs, can be found.
    """
    obj = _first_object(raw)
    d = _loads_lenient(obj) if obj else None
    if d is None:  # salvage field by field from broken JSON
        d = {"kind": _field(raw, "kind", r"[a-z]+"), "x": _field(raw, "x", r"-?\d+"), "y": _field(raw, "y", r"-?\d+"),
             "text": _field(raw, "text", r"[^\"',}]*"), "direction": _field(raw, "direction", r"up|down")}
    kind = str(d.get("kind") or "").lower()
    if kind not in ACTION_KINDS:
        raise ActionParseError(f"no action kind in {ACTION_KINDS} found", raw)

    def num(key):
        v = d.get(key)
        try:
            return None if v is None else int(round(float(v)))
        except (TypeError, ValueError):
            return None

    x, y = (int(point[0]), int(point[1])) if point is not None else (num("x"), num("y"))
    if kind == "click" and (x is None or y is None):
        raise ActionParseError("a click needs integer x and y", raw)
    direction = d.get("direction")
    direction = str(direction).lower() if direction not in (None, "null") else None
    if kind == "scroll" and direction not in DIRECTIONS:
        raise ActionParseError(f"a scroll needs a direction in {DIRECTIONS}", raw)
    text = d.get("text")
    text = None if text in (None, "null") else str(text)
    act = Action(kind=kind, text=text, direction=direction, raw=raw)
    if x is not None and y is not None:
        act.model_xy = (x, y)
        if image is not None:
            act.x, act.y = image.to_original(x, y)
            w, h = image.original_size
            act.in_image = 0 <= act.x < w and 0 <= act.y < h  # reported, not clamped
        else:
            act.x, act.y = x, y
    return act


# ---------------------------------------------------------------------------- capture
@dataclass
class Capture:
    """What the attention did on one input.

    selected[l]: int32 [Hkv, N, top_k] blocks each query selected (None for dense models).
    block_mass[l]: float32 [Hkv, N, n_blocks] dense attention mass per key block, group-averaged
    (None when N > dense_limit). recall: float32 [L, Hkv], mean share of the dense mass inside the
    selected blocks (None unless both are present). forced_mass, picked_recall: float32 [L, Hkv]
    (outside_forced_recall): the share of the dense mass on the blocks every query keeps whatever the
    indexer says, and the share of the rest that the indexer's own picks hold (None like recall).
    """

    tokens: List[str]
    ids: np.ndarray
    block_size: int
    top_k: int
    selected: Optional[List[np.ndarray]]
    block_mass: Optional[List[np.ndarray]]
    recall: Optional[np.ndarray]
    forced_mass: Optional[np.ndarray] = None
    picked_recall: Optional[np.ndarray] = None


def selection_recall(selected: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Share of dense mass inside the selected blocks: selected int [Hkv, N, K], mass [Hkv, N, nb] -> [Hkv]."""
    sel = torch.from_numpy(selected).long()
    m = torch.from_numpy(mass)
    got = torch.gather(m, -1, sel.clamp(min=0)) * (sel >= 0)
    return got.sum(-1).mean(-1).numpy()


def outside_forced_recall(selected: np.ndarray, mass: np.ndarray, cfg) -> Tuple[np.ndarray, np.ndarray]:
    """(forced_mass [Hkv], picked_recall [Hkv]) for selected int [Hkv, N, K] and mass [Hkv, N, nb] of queries 0..N-1.

    forced_mass: the share of the dense mass on the blocks kept whatever the indexer says (cfg.init_blocks and the
    local window), mean over queries. picked_recall: of the mass outside them, the share inside the selected
    blocks, summed over queries (NaN where there is none). A model can raise selection_recall by attending
    more locally; picked_recall is what the indexer itself finds.
    """
    from .model.indexer import free_blocks

    g, n, nb = mass.shape
    unforced = free_blocks(torch.arange(n), n, cfg).numpy()  # [N, nb] visible and not forced
    chosen = np.zeros((g, n, nb + 1), dtype=bool)
    np.put_along_axis(chosen, np.where(selected < 0, nb, selected), True, axis=-1)
    rest = mass * unforced
    free = rest.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        picked = np.where(free > 0, (rest * chosen[..., :nb]).sum((1, 2)) / free, np.nan)
    return 1.0 - free / np.maximum(mass.sum((1, 2)), 1e-30), picked


def selection_ceiling(mass: np.ndarray, top_k: int) -> np.ndarray:
    """The most dense mass any ``top_k`` blocks could hold: mass [Hkv, N, nb] -> [Hkv].

    An upper bound for selection_recall at that k (it ignores the forced init/local blocks): where a
    model's dense attention is spread over many blocks, no k-block selection reaches a high recall.
    """
    m = torch.from_numpy(mass)
    return m.topk(min(top_k, m.shape[-1]), dim=-1).values.sum(-1).mean(-1).numpy()


# ---------------------------------------------------------------------------- model
class Model:
    """A loaded model: generate, act, prefill_steps, capture. Build with load_model or Model.from_config."""

    def __init__(self, net: MSATransformer, meta: Optional[dict] = None):
        self.net = net.eval()
        self.engine = Engine(net)
        self.card = meta or {}

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, seed: int = 0, device=None) -> "Model":
        """A randomly initialised model (for tests and demos; it generates noise)."""
        torch.manual_seed(seed)
        net = MSATransformer(cfg)
        net.reset_parameters(seed)
        return cls(net.to(device or "cpu"), {"name": cfg.name, "train": {"note": "random init"}})

    @property
    def config(self) -> ModelConfig:
        return self.net.cfg

    @property
    def name(self) -> str:
        return self.net.cfg.name

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({c.name!r}, attention={c.attention}, {self.net.n_params() / 1e6:.2f}M params, "
                f"device={self.device}, limit={c.max_context or 'memory'})")

    def encode(self, text: str, images=None) -> Encoded:
        """BOS + text (with "<image>" placeholders, or images first) + SEP."""
        return encode_prompt(text, images, image_size=self.config.image_size, patch_size=self.config.patch_size)

    # -------------------------------------------------------------- text
    def generate(self, text: str, images=None, max_new_tokens: int = 64, *, overflow: str = "error",
                 chunk_size: int = 2048, temperature: float = 0.0, seed: int = 0,
                 max_memory_bytes: Optional[int] = None, return_result: bool = False):
        """Answer a prompt: str (or a GenerationResult with return_result=True).

        overflow (models with a hard limit, i.e. dense-200k): "error" | "truncate_left" |
        "truncate_middle" | "chunk" — see msa_lab.model.engine.
        """
        res: GenerationResult = self.engine.generate(
            self.encode(text, images), max_new_tokens, overflow=overflow, chunk_size=chunk_size,
            temperature=temperature, seed=seed, max_memory_bytes=max_memory_bytes)
        return res if return_result else res.text

    def act(self, image, instruction: str, max_new_tokens: int = 96) -> Action:
        """One GUI action for ``instruction`` on ``image``; x, y in the original image's pixels."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("act() needs a non-empty instruction, e.g. \"Click the 'Save' button\".")
        prepared = image if isinstance(image, PreparedImage) else prepare_image(image, self.config.image_size)
        prompt = f"{IMAGE_PLACEHOLDER}\n{instruction}"
        raw = self.generate(prompt, [prepared], max_new_tokens)
        if self.net.pointer is None:
            return parse_action(raw, prepared)
        # the kind, text and direction come from the text; the point from the pointer (msa_lab.model.pointer)
        enc = self.encode(prompt, [prepared])
        point, prob = self.net.point(enc.ids[None].to(self.device), enc.patches.to(self.device),
                                     enc.patch_slot.to(self.device))
        act = parse_action(raw, prepared, point=point)
        act.point_prob = prob
        return act

    # -------------------------------------------------------------- long context
    def prefill_steps(self, text, images=None, chunk_size: int = 2048, *, max_memory_bytes: Optional[int] = None,
                      key_bins: int = 64, extra_tokens: int = 0) -> Iterator[PrefillStep]:
        """Chunked prefill of a prompt (str, or an Encoded), one PrefillStep per chunk (see engine.py)."""
        enc = text if isinstance(text, Encoded) else self.encode(text, images)
        return self.engine.prefill_steps(enc, chunk_size, max_memory_bytes=max_memory_bytes, key_bins=key_bins,
                                         extra_tokens=extra_tokens)

    def estimate_memory(self, n_tokens: int, chunk_size: int = 2048, *, max_memory_bytes: Optional[int] = None):
        """MemoryEstimate of a prefill of n_tokens (``.fits``, ``.describe()``)."""
        return self.engine.estimate(n_tokens, chunk_size, max_memory_bytes=max_memory_bytes)

    @torch.no_grad()
    def capture(self, text, images=None, *, dense_limit: int = 4096, chunk_size: int = 2048) -> Capture:
        """Selected blocks per layer/group, and (when N <= dense_limit) the dense attention mass per block."""
        enc = text if isinstance(text, Encoded) else self.encode(text, images)
        n, cfg = len(enc), self.config
        msa = cfg.msa_config()
        sel: List[List[torch.Tensor]] = [[] for _ in range(cfg.n_layers)]
        qs: List[List[torch.Tensor]] = [[] for _ in range(cfg.n_layers)]
        keys: List[Optional[torch.Tensor]] = [None] * cfg.n_layers
        want_mass = n <= dense_limit

        def record(layer, q=None, k=None, idx=None):
            if idx is not None:
                sel[layer].append(idx[0].cpu())
            if want_mass:
                qs[layer].append(q)
                keys[layer] = k  # the whole prefix so far; the last chunk's view covers all keys

        self.engine._check_limit(n)
        check_prefill(self.engine.estimate(n, chunk_size), cfg)
        cache = self.engine.new_cache(n)
        embeds = whole_image_embeds(self.net, enc, self.device)
        for c0 in range(0, n, chunk_size):
            c1 = min(n, c0 + chunk_size)
            piece = enc.slice(c0, c1)
            self.net(piece.ids[None].to(self.device), piece.patches.to(self.device),
                     piece.patch_slot.to(self.device), caches=cache, record=record, last_only=True,
                     patch_embeds=None if embeds is None else embeds[slice(*enc.patch_range(c0, c1))])
        selected = [torch.cat(s, dim=1).numpy() for s in sel] if cfg.sparse else None  # [Hkv, N, K]
        mass = None
        if want_mass:
            slots = torch.arange(n, device=self.device)
            mass = [dense_block_mass(torch.cat(q, dim=2), keys[i].clone(), slots, msa)[0].cpu().numpy()
                    for i, q in enumerate(qs)]
        recall = forced = picked = None
        if selected is not None and mass is not None:
            recall = np.stack([selection_recall(s, m) for s, m in zip(selected, mass)]).astype(np.float32)
            forced, picked = (np.stack(t).astype(np.float32) for t in
                              zip(*(outside_forced_recall(s, m, msa) for s, m in zip(selected, mass))))
        return Capture(describe(enc.ids), enc.ids.numpy(), msa.block_size, msa.top_k, selected, mass, recall,
                       forced, picked)


def load_model(name: str, device=None, *, checkpoint_dir=None, dtype: Optional[torch.dtype] = None) -> Model:
    """Load a trained model by name ("msa-tiny" | "dense-200k") from data/checkpoints (sha256-checked).

    device: None = CUDA if available, else CPU. dtype: None = bfloat16 on CUDA, float32 on CPU.
    checkpoint_dir: another directory of checkpoints
    (default data/checkpoints, or $MSA_LAB_CHECKPOINTS).
    """
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_CONFIGS))}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:  # bf16 where the kernels run fast (the weights were trained under bf16 autocast)
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    net, meta = load_checkpoint(name, Path(checkpoint_dir) if checkpoint_dir else None, device=device, dtype=dtype)
    return Model(net, meta)


__all__ = ["load_model", "Model", "Action", "ActionParseError", "parse_action", "Capture", "selection_recall",
           "selection_ceiling", "outside_forced_recall"]
