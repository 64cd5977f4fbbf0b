"""Train msa-tiny or dense-200k: `python -m msa_lab.train --model msa-tiny --minutes 20` (or `msa-lab train ...`).

Recipe
  * Data: the msa_lab.tasks generators (plain ``iter_task``, no `datasets` needed), mixed by weight
    (--tasks), split="train"; if msa_lab.tasks cannot be imported, a built-in synthetic NIAH.
    Format: BOS + prompt (images spliced at "<image>") + SEP + answer + EOS, loss on answer + EOS,
    plus a next-byte loss on the prompt weighted --prompt-loss-weight (default 0.1; 0 = answer only):
    an 8K-token NIAH example has ~10 answer bytes, too little signal for a 6M-parameter model to form
    copy (induction) heads within 20 minutes, while the prompt is real text (stdlib source). GUI
    answers are rewritten from original pixels to the model's resized-image pixels (what act() maps back).
  * Curriculum: text tasks' length grows geometrically from --seq-start to --seq-end (reached at 80%
    of the schedule); video frame counts grow with it. Each step holds ~--tokens-per-step tokens.
  * Positions: PoSE jumps — with probability --pose-prob a long-context batch gets position ids
    with random gaps (inside the prompt) so relative distances up to pose_max_position (1.2M) are
    trained (see msa_lab.model.net for why).
  * msa-tiny: dense warm-up for --dense-warmup of the schedule (main branch dense SDPA), then MSA:
    the main branch attends over the indexer's selected blocks through SDPA with a boolean mask built
    from select_blocks (exactly sparse_attention's math at training lengths, with autograd). From step
    0 the indexer is trained by KL distillation toward the dense attention mass per block, group-
    averaged (reference.block_attention_mass semantics), on --kl-queries random query positions per
    step; its input is detached, so no gradient flows between indexer and main branch.
  * Budget and resume: --minutes of wall clock per run (GPU time on a GPU); the schedule spans
    --total-minutes (default: --minutes) over all resumed runs. Every --save-every minutes and at the
    end: data/train/<model>/resume.safetensors (fp32 weights + AdamW state) + resume.json (step,
    seconds, history). --resume continues from them. The final model goes to
    data/checkpoints/<model>.safetensors/.json (fp16, sha256) and the model card README.md there.
  * Training-only tasks: "copy" / "copy_random" (random strings in a stdlib / random-ASCII haystack,
    repeated from a 4-character cue; msa_lab.model.synthetic.iter_copy), "copy_lines" (the same with
    no haystack: about half of all tokens are copy targets) and "synthetic_niah".
  * Data: batches are drawn ahead of the device by one thread, or by --data-workers spawned processes (the
    default on a GPU: image tasks are CPU-bound to draw). Task seeds are >= TRAIN_SEED_MIN, so eval seeds
    (0, 1, 12345) are never trained on. --patch-aux-weight adds per-patch labels of image tasks, learned by
    training-only heads (PatchSupervision; on the vision encoder's output where the model has one, else on
    the LM's last hidden state); --patch-stem adds a per-patch CNN (ModelConfig.patch_stem); --vision-layers
    adds a bidirectional encoder over each image (ModelConfig.vision_layers, msa_lab.model.vision_encoder);
    --pointer-dim adds the GUI pointer act() takes its point from, trained by --pointer-weight (pointer_loss).
  * Logs: data/train/<model>/log.jsonl, one line per step (loss, lm_loss, kl, lr, seq_len, tokens/s,
    digit_loss: the loss on the answer's digits, which in NIAH only retrieval can predict; ln 10 = 2.30
    means none; concentration, with --concentration-weight; pointer_loss and pointer_acc, with --pointer-weight).
  * --concentration-weight trains the main branch to keep its dense attention inside the blocks the indexer
    selects (msa_lab.model.indexer.concentration_loss); it took indexer recall from 0.73 to 0.99 in one run
    (data/train/probes/concentration-2026-11-27).
  * --smoke: a tiny model on the synthetic task on CPU in well under a minute (the test of this file).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .model.checkpoint import REPO_ROOT, save_checkpoint
from .model.config import ModelConfig, model_config, small_config
from .model.net import MSATransformer, upsample_conv1
from .model.pointer import point_targets
from .model.tokens import IMG_PATCH, PAD, encode_example
from .model.vision import prepare_image

TEXT_TASKS = ("niah_single", "niah_multi_key", "niah_multi_value", "niah_multi_query", "variable_tracking",
              "synthetic_niah", "copy", "copy_random", "copy_lines")
# built here (msa_lab.model.synthetic), not eval datasets; copy_random is copy in random-ASCII haystacks
# image_qa_<kind>: image QA with one question kind only, to weight kinds separately (a curriculum)
IMAGE_QA_KIND_TASKS = ("image_qa_count", "image_qa_colour", "image_qa_shape", "image_qa_word")
TRAIN_ONLY_TASKS = ("synthetic_niah", "copy", "copy_random", "copy_lines", "image_colour") + IMAGE_QA_KIND_TASKS
DEFAULT_TASKS = ("niah_single:3,niah_multi_key:1,niah_multi_value:1,niah_multi_query:1,variable_tracking:1,"
                 "image_qa:2,gui:2,video:1")


@dataclass
class TrainConfig:
    model: str = "msa-tiny"
    minutes: float = 20.0
    total_minutes: Optional[float] = None
    max_steps: Optional[int] = None
    tokens_per_step: int = 65_536
    max_examples: int = 64  # per step, caps short (image) batches whose drawing costs CPU time
    seq_start: int = 512
    seq_end: int = 8192
    lr: float = 1e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dense_warmup: float = 0.3
    kl_weight: float = 1.0
    kl_queries: int = 256
    pose_prob: float = 0.5
    prompt_loss_weight: float = 0.1  # see the module docstring; 0 = answer-only
    tasks: str = DEFAULT_TASKS
    seed: int = 0
    device: Optional[str] = None
    backend: Optional[str] = None  # public-op backend for select_blocks (None: automatic)
    out_dir: str = str(REPO_ROOT / "data" / "checkpoints")
    log_dir: str = str(REPO_ROOT / "data" / "train")
    resume: bool = False
    answer_format: str = "keyed"  # NIAH targets "<key> is: <value>" (keyed_answer) or the bare value ("plain")
    init_from: Optional[str] = None  # directory of a checkpoint to warm-start from (fresh optimizer)
    init_model: Optional[str] = None  # the model name to take from init_from (None: this run's model)
    token_conv: Optional[int] = None  # ModelConfig.token_conv override (None: the preset's, 0 = off)
    image_size: Optional[int] = None  # ModelConfig.image_size override (None: the warm start's, else the preset's)
    patch_size: Optional[int] = None  # ModelConfig.patch_size override (None: the warm start's, else the preset's)
    patch_pool: Optional[int] = None  # ModelConfig.patch_pool override (None: the warm start's, else the preset's)
    patch_stem: Optional[int] = None  # ModelConfig.patch_stem override (None: the warm start's, else the preset's)
    stem_scope: Optional[str] = None  # ModelConfig.stem_scope override (None: the warm start's, else the preset's)
    vision_layers: Optional[int] = None  # ModelConfig.vision_layers (None: the warm start's, else the preset's)
    attention_sink: Optional[int] = None  # ModelConfig.attention_sink (None: the warm start's, else the preset's)
    pointer_dim: Optional[int] = None  # ModelConfig.pointer_dim (None: the warm start's, else the preset's)
    # weight of the GUI pointer's loss (msa_lab.model.pointer; 0 = off): cross-entropy of the target's patch among
    # the screen's patches, plus the L1 error of the offset inside it
    pointer_weight: float = 0.0
    # the sink offsets learn at lr * sink_lr_scale: from zero they must grow to a key that outscores thousands of
    # keys (|offset| ~ 20 against key norms of ~8), which at the trunk's lr would take thousands of steps. The one
    # run so far (50x, 500 steps; data/train/probes/sink-2026-11-27) left them at 0.3-0.6: no consistent gradient
    sink_lr_scale: float = 50.0
    # processes that draw and encode batches ahead of the device (None: 0 on a CPU, where the trainer itself
    # needs the cores; on a GPU, up to 8, leaving two cores); 0 = one background thread
    data_workers: Optional[int] = None
    # weight of the per-patch supervision of image tasks (see PatchSupervision; 0 = off, the earlier runs)
    patch_aux_weight: float = 0.0
    # PatchSupervision.loss(balanced=...): things and background weigh the same per head, as in vision pre-training
    # (False: one mean over all patches, every run before the thirteenth session)
    patch_balanced: bool = False
    # "index": train only the index branch's projections (wiq, wik) by its KL; the main branch, whose dense
    # attention mass is the KL's target, stays as it is (None = train everything)
    train_only: Optional[str] = None
    # weight of msa_lab.model.indexer.concentration_loss (0 = off, every run before the tenth session): the main
    # branch is trained to keep its dense attention inside the concentration_k blocks the indexer selects, on
    # concentration_queries of the KL's query positions per step
    concentration_weight: float = 0.0
    concentration_k: int = 16
    concentration_queries: int = 64
    save_every: float = 5.0
    smoke: bool = False
    progress: bool = True

    def schedule_seconds(self) -> float:
        return 60.0 * (self.total_minutes if self.total_minutes is not None else self.minutes)


# ---------------------------------------------------------------------------- data
def parse_tasks(spec: str) -> Dict[str, float]:
    out = {}
    for part in spec.split(","):
        name, _, w = part.strip().partition(":")
        try:
            out[name] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"--tasks entry {part!r} must be name or name:weight (e.g. niah_single:3)") from None
        if out[name] <= 0:
            raise ValueError(f"--tasks weight of {name!r} must be > 0, got {out[name]}")
    return out


class TaskSource:
    """Examples of the common schema, from msa_lab.tasks (lazily imported) or the synthetic fallback."""

    def __init__(self, weights: Dict[str, float], log=print):
        self.iter_task = None
        try:
            from .tasks import TASKS, iter_task  # noqa: WPS433 - optional: the trainer must run without it

            self.iter_task = iter_task
        except Exception as e:  # noqa: BLE001 - any failure means "use the fallback"
            log(f"msa_lab.tasks unavailable ({type(e).__name__}: {e}); training on synthetic NIAH only")
            weights = {"synthetic_niah": 1.0}
        else:
            unknown = sorted(set(weights) - set(TASKS) - set(TRAIN_ONLY_TASKS))
            if unknown:
                raise ValueError(f"--tasks names unknown tasks {unknown}; known: {', '.join(TASKS)}, "
                                 f"{', '.join(TRAIN_ONLY_TASKS)}")
        self.weights = weights

    def pick(self, rng: random.Random) -> str:
        names = list(self.weights)
        return rng.choices(names, weights=[self.weights[n] for n in names])[0]

    def examples(self, task: str, n: int, seed: int, seq_len: int) -> List[dict]:
        from .model.synthetic import iter_copy, iter_image_colour, iter_synthetic_niah

        if task == "synthetic_niah":
            return list(iter_synthetic_niah(n, seed, length=seq_len))
        if task == "image_colour":
            return list(iter_image_colour(n, seed))
        if task in IMAGE_QA_KIND_TASKS:
            return list(self.iter_task("image_qa", n, seed, kinds=(task.removeprefix("image_qa_"),)))
        if task in ("copy", "copy_random", "copy_lines"):
            haystack = {"copy": "stdlib", "copy_random": "random", "copy_lines": "none"}[task]
            return list(iter_copy(n, seed, length=seq_len, num_strings=needles_for(seq_len, seed), haystack=haystack))
        opts: dict = {}
        if task in TEXT_TASKS:
            opts = {"length": seq_len, "split": "train"}
            if task in ("niah_multi_key", "niah_multi_query", "niah_multi_value"):
                # more needles = more answer bytes per token: the retrieval signal is what a short run lacks
                from .tasks.niah import max_needles

                # capped by what fits: near the minimum length only 2 needles do (iter_task raises otherwise)
                opts["num_needles"] = max(2, min(needles_for(seq_len, seed),
                                                 max_needles(task.removeprefix("niah_"), seq_len)))
        elif task == "video":
            opts = {"num_frames": video_frames(seq_len)}
        return list(self.iter_task(task, n, seed, **opts))


def needles_for(seq_len: int, seed: int) -> int:
    """Needles per multi-needle training example: 2..32, at most one per 128 tokens (they must fit)."""
    return random.Random(seed).randint(2, max(2, min(32, seq_len // 128)))


# training draws task seeds at or above this; evals use small seeds (0, 1, 12345), so "screens from a seed
# never used in training" holds by construction, not by odds
TRAIN_SEED_MIN = 2**20


KEYED_NIAH = ("niah_single", "niah_multi_key", "niah_multi_query")


def model_answer(ex: dict, images, answer_format: str = "keyed") -> str:
    """The training target: GUI points move from original pixels to the resized image's pixels; NIAH
    answers are keyed (msa_lab.tasks.niah.keyed_answer) unless answer_format="plain"."""
    if ex["task"] in KEYED_NIAH and answer_format == "keyed":
        from .tasks.niah import keyed_answer  # NIAH examples exist only where msa_lab.tasks imports

        return keyed_answer(ex)
    if ex["task"] != "gui":
        return ex["answer"]
    a = json.loads(ex["answer"])
    if a.get("x") is not None and a.get("y") is not None:
        a["x"], a["y"] = images[0].to_model(a["x"], a["y"])
    return json.dumps(a)


@dataclass
class Batch:
    ids: torch.Tensor  # int64 [B, N]
    patches: torch.Tensor  # uint8 [P, patch_dim]: the pixels (the model scales them; a quarter of float32's bytes)
    patch_slot: torch.Tensor  # int64 [P]
    answer_mask: torch.Tensor  # bool [B, N], True on answer + EOS tokens
    prompt_len: int  # shortest prompt in the batch (PoSE jumps stay inside it)
    task: str
    patch_labels: Optional[torch.Tensor] = None  # int64 [P, len(PATCH_HEADS)], -100 = no label (PatchSupervision)
    point_xy: Optional[torch.Tensor] = None  # int64 [B, 2]: GUI targets in resized-image pixels (the pointer's)

    @property
    def tokens(self) -> int:
        return int((self.ids != PAD).sum())


def make_batch(examples: List[dict], cfg: ModelConfig, task: str, block: int, answer_format: str = "keyed",
               labels: bool = False) -> Batch:
    """labels: also draw each patch's labels (Batch.patch_labels, for --patch-aux-weight)."""
    encs, masks, targets = [], [], []
    for ex in examples:
        imgs = [prepare_image(im, cfg.image_size) for im in ex["images"]]
        targets.append(model_answer(ex, imgs, answer_format))
        enc, m = encode_example(ex["prompt"], imgs, targets[-1], image_size=cfg.image_size, patch_size=cfg.patch_size)
        encs.append(enc)
        masks.append(m)
    n = max(len(e) for e in encs)
    n = -(-n // block) * block  # round up: fewer distinct shapes for the kernels
    ids = torch.full((len(encs), n), PAD, dtype=torch.long)
    amask = torch.zeros(len(encs), n, dtype=torch.bool)
    for i, (e, m) in enumerate(zip(encs, masks)):
        ids[i, : len(e)] = e.ids
        amask[i, : len(e)] = m
    prompt_len = min(int((~m).sum()) for m in masks)
    rows = [patch_labels(ex, cfg) for ex in examples if ex["images"]] if labels else []
    point_xy = None
    if task == "gui" and all(ex["task"] == "gui" for ex in examples):  # one screen each; every target has a point
        point_xy = torch.tensor([[json.loads(t)["x"], json.loads(t)["y"]] for t in targets], dtype=torch.long)
    pixels = torch.cat([e.patches for e in encs]).add(1.0).mul(127.5).round().to(torch.uint8)  # exact: patchify's
    return Batch(ids, pixels, torch.cat([e.patch_slot for e in encs]), amask,
                 prompt_len, task, torch.cat(rows) if rows else None, point_xy)


# ---------------------------------------------------------------------------- patch supervision
# An image question's answer is one or two bytes of signal per image, about what a few of its patches hold;
# the vision runs of the sixth and seventh sessions left shape questions at chance (loss ln 4) after 90K of
# them. The generators know what every patch shows, so each patch gets labels: the shape, colour and word
# on it and whether an object's centre lies in it (image QA), and the GUI element under it. Small linear
# heads on the last hidden state of each patch token learn them next to the answers (dense supervision, as
# detection pre-training gives a vision encoder). The heads are training-only: not in the checkpoint.
# centre: an object's centre is in this patch (counting). gui_label / gui_window: the label and window of the GUI
# element under the patch, so that the encoder learns to read labels (an instruction names its target by label and,
# for twins, by window) rather than leave reading to the answer's gradient alone
PATCH_HEADS = ("shape", "colour", "word", "centre", "gui", "gui_label", "gui_window")


@functools.lru_cache(maxsize=1)
def patch_classes() -> Dict[str, tuple]:
    """Head -> its class names after 0 = nothing (msa_lab.tasks imported late: the trainer runs without it)."""
    from .tasks.draw import COLOURS, SHAPES
    from .tasks.gui import CLICK_KINDS
    from .tasks.vocab import WORDS, gui_labels

    return {"shape": SHAPES, "colour": tuple(COLOURS), "word": WORDS, "centre": ("centre",),
            "gui": CLICK_KINDS + ("field", "list"), "gui_label": gui_labels(), "gui_window": ("main", "dialog")}


def patch_labels(ex: dict, cfg: ModelConfig) -> torch.Tensor:
    """int64 [images * patches_per_image, len(PATCH_HEADS)]: class per patch and head (0 = nothing there),
    -100 where the example's task does not say (other tasks, other heads).

    Image QA: a patch shows an object (or the word) when they share 15% of the smaller of the two; objects never
    overlap, so a patch takes the one sharing most of it. GUI: the topmost element (drawn last) under the patch's
    centre; desktop and window body are 0. Computed over all patches at once (a 256 px image has 1,024)."""
    g = cfg.image_size // cfg.patch_size
    out = torch.full((len(ex["images"]), g * g, len(PATCH_HEADS)), -100, dtype=torch.long)
    meta = json.loads(ex["meta"])
    if ex["task"] not in ("image_qa", "gui") or "size" not in meta:
        return out.view(-1, len(PATCH_HEADS))
    w, h = meta["size"]
    r, c = np.divmod(np.arange(g * g), g)
    cells = np.stack([c * w / g, r * h / g, (c + 1) * w / g, (r + 1) * h / g], 1)  # [P, 4], row-major patches
    cls, col = patch_classes(), {k: j for j, k in enumerate(PATCH_HEADS)}

    def shared(box):  # [P] area of each cell inside box
        b = np.asarray(box, dtype=np.float64)
        return (np.clip(np.minimum(cells[:, 2], b[2]) - np.maximum(cells[:, 0], b[0]), 0, None)
                * np.clip(np.minimum(cells[:, 3], b[3]) - np.maximum(cells[:, 1], b[1]), 0, None))

    def holds(box, inter):
        box_area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
        return inter > 0.15 * np.minimum(box_area, (w / g) * (h / g))

    lab = np.zeros((g * g, len(PATCH_HEADS)), dtype=np.int64)
    if ex["task"] == "image_qa":
        objs = meta["objects"]
        if objs:
            inter = np.stack([shared(o["box"]) for o in objs])  # [O, P]
            best = inter.argmax(0)  # first of equals, as max() over the list picks
            shown = np.stack([holds(o["box"], inter[j]) for j, o in enumerate(objs)])[best, np.arange(g * g)]
            shape = np.array([1 + cls["shape"].index(o["shape"]) for o in objs])[best]
            colour = np.array([1 + cls["colour"].index(o["colour"]) for o in objs])[best]
            lab[:, col["shape"]] = np.where(shown, shape, 0)
            lab[:, col["colour"]] = np.where(shown, colour, 0)
            cx = np.array([(o["box"][0] + o["box"][2]) / 2 for o in objs])
            cy = np.array([(o["box"][1] + o["box"][3]) / 2 for o in objs])
            inside = ((cells[:, None, 0] <= cx) & (cx < cells[:, None, 2]) & (cells[:, None, 1] <= cy)
                      & (cy < cells[:, None, 3]))  # [P, O]
            lab[:, col["centre"]] = inside.any(1)
        word = meta.get("word")
        if word:
            lab[:, col["word"]] = np.where(holds(word["box"], shared(word["box"])), 1 + cls["word"].index(word["text"]), 0)
        lab[:, [col["gui"], col["gui_label"], col["gui_window"]]] = -100
    else:
        x, y = (cells[:, 0] + cells[:, 2]) / 2, (cells[:, 1] + cells[:, 3]) / 2
        top = np.full(g * g, -1)
        for j, e in enumerate(meta["elements"]):  # later elements are drawn on top
            b = e["box"]
            top[(b[0] <= x) & (x < b[2]) & (b[1] <= y) & (y < b[3])] = j
        els = meta["elements"]
        for head, value in (("gui", lambda e: 1 + cls["gui"].index(e["kind"])),
                            ("gui_label", lambda e: 1 + cls["gui_label"].index(e["label"])),
                            ("gui_window", lambda e: 1 + cls["gui_window"].index(e["window"]))):
            table = np.array([0] + [value(e) for e in els])
            lab[:, col[head]] = table[top + 1]
        # a field's "Label:" text lies left of its box, on no element: its patches read as the field's label and
        # window (not its kind, so the pointer's target stays the box), so the encoder learns to read the text
        # that the box's patches must then take their label from. Where the text is under the dialog, it is hidden.
        d = meta.get("dialog")
        hidden = (d[0] <= x) & (x < d[2]) & (d[1] <= y) & (y < d[3]) if d else np.zeros(g * g, dtype=bool)
        for e in els:
            b = e.get("label_box")
            if b is None:
                continue
            on = (b[0] <= x) & (x < b[2]) & (b[1] <= y) & (y < b[3]) & (top < 0) & (~hidden | (e["window"] == "dialog"))
            lab[on, col["gui_label"]] = 1 + cls["gui_label"].index(e["label"])
            lab[on, col["gui_window"]] = 1 + cls["gui_window"].index(e["window"])
        lab[:, [col[k] for k in ("shape", "colour", "word", "centre")]] = -100
    out[0] = torch.from_numpy(lab)
    return out.view(-1, len(PATCH_HEADS))


class PatchSupervision(torch.nn.Module):
    """One linear head per PATCH_HEADS entry on each patch token's hidden state: the vision encoder's output
    (normed) where the model has one, else the LM's final normed state."""

    def __init__(self, d_model: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(d_model, 1 + len(patch_classes()[k]))
                                          for k in PATCH_HEADS})

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor, balanced: bool = False) -> torch.Tensor:
        """hidden [P, d], labels int64 [P, heads] -> mean cross-entropy over the heads that have labels.

        balanced: each head's loss is the mean of its loss on the patches that show something (label > 0) and
        its loss on those that show nothing, instead of one mean over both. Why: a written word covers ~3% of an
        image-QA picture's patches, and under the plain mean the word head learned to say "nothing" everywhere
        (object accuracy 0.03 after 144K pictures of vision pre-training on an H100, 2026-12-07)."""
        terms = []
        for j, head in enumerate(self.heads.values()):
            lab = labels[:, j]
            if not bool((lab >= 0).any()):
                continue
            if not balanced:
                terms.append(F.cross_entropy(head(hidden).float(), lab, ignore_index=-100))
                continue
            ce = F.cross_entropy(head(hidden).float(), lab, ignore_index=-100, reduction="none")
            parts = [ce[m].mean() for m in (lab > 0, lab == 0) if bool(m.any())]
            terms.append(torch.stack(parts).mean())
        return torch.stack(terms).mean() if terms else hidden.sum() * 0.0


def pose_positions(n: int, prompt_len: int, max_position: int, rng: random.Random, jumps: int = 2) -> torch.Tensor:
    """int64 [n] increasing position ids with ``jumps`` random gaps inside the prompt (PoSE).

    The gaps total up to max_position - n, so distances up to max_position occur in training while
    the answer and every token's neighbourhood keep contiguous positions.
    """
    pos = torch.arange(n)
    if prompt_len < 2 * jumps + 2 or max_position <= n:
        return pos
    cuts = sorted(rng.sample(range(1, prompt_len - 1), jumps))
    total = rng.randint(0, max_position - n)
    gaps = sorted(rng.randint(0, total) for _ in range(jumps - 1))
    parts = [b - a for a, b in zip([0] + gaps, gaps + [total])]
    for c, gap in zip(cuts, parts):
        pos[c:] += gap
    return pos


def build_step(tc: TrainConfig, cfg: ModelConfig, source: TaskSource, step: int, p: float):
    """(Batch, positions int64 [N], jumped) of one step; deterministic in (seed, step, progress)."""
    rng = random.Random(f"msa-lab/train/{tc.seed}/{step}")
    seq_len = seq_len_at(p, tc, cfg.block_size)
    task = source.pick(rng)
    if task in TEXT_TASKS:
        n_ex = max(1, tc.tokens_per_step // seq_len)
    else:
        frames = video_frames(seq_len) if task == "video" else 1
        est = frames * (cfg.patches_per_image + 2) + 128
        n_ex = max(1, min(tc.max_examples, tc.tokens_per_step // est))
    examples = source.examples(task, n_ex, rng.randrange(TRAIN_SEED_MIN, 2**31), seq_len)
    batch = make_batch(examples, cfg, task, cfg.block_size, tc.answer_format, labels=tc.patch_aux_weight > 0)
    n = batch.ids.shape[1]
    jump = task in TEXT_TASKS and rng.random() < tc.pose_prob
    max_pos = cfg.max_context or cfg.pose_max_position  # dense-200k never sees positions past its limit
    positions = pose_positions(n, batch.prompt_len, max_pos, rng) if jump else torch.arange(n)
    return batch, positions, jump


def data_workers(tc: TrainConfig, device: torch.device) -> int:
    if tc.data_workers is not None:
        return tc.data_workers
    return 0 if device.type != "cuda" else max(0, min(8, (os.cpu_count() or 1) - 2))


def _quiet_worker() -> None:
    torch.set_num_threads(1)  # one core per worker: intra-op threads in every worker would oversubscribe


class BatchPrefetcher:
    """Steps' batches, drawn ahead of the device: by one thread (workers=0) or by `workers` processes.

    Drawing is CPU work (PIL renders a GUI screen in ~6 ms): with one thread a GPU run of image tasks waits
    on it and sees a few hundred questions a second. Processes are spawned, not forked, because the parent
    holds a CUDA context. A batch drawn ahead uses the progress of the step that asked for it (the length
    curriculum lags by at most `depth` steps); each is still deterministic in (seed, step, progress).
    """

    def __init__(self, tc: TrainConfig, cfg: ModelConfig, source: "TaskSource", workers: int):
        self.args = (tc, cfg, source)
        if workers > 0:
            import multiprocessing

            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_quiet_worker)
            self.depth = 2 * workers
        else:
            self.pool, self.depth = ThreadPoolExecutor(max_workers=1), 1
        self.pending: Dict[int, object] = {}

    def get(self, step: int, p: float):
        """(Batch, positions, jumped) of this step; queues the next `depth` steps."""
        for s in range(step, step + self.depth + 1):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(build_step, *self.args, s, p)
        for s in [s for s in self.pending if s < step]:  # a resumed run may skip some
            self.pending.pop(s).cancel()
        return self.pending.pop(step).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def video_frames(seq_len: int) -> int:
    return int(min(16, max(2, seq_len // 256)))


# ---------------------------------------------------------------------------- schedule
def progress_of(state: dict, tc: TrainConfig) -> float:
    if tc.max_steps:
        return min(1.0, state["step"] / tc.max_steps)
    return min(1.0, state["seconds"] / tc.schedule_seconds())


def seq_len_at(p: float, tc: TrainConfig, block: int) -> int:
    f = min(1.0, p / 0.8)
    n = tc.seq_start * (tc.seq_end / tc.seq_start) ** f
    return max(block, int(round(n / block)) * block)


def lr_at(step: int, p: float, tc: TrainConfig) -> float:
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    return tc.lr * (tc.min_lr_frac + (1 - tc.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


# ---------------------------------------------------------------------------- loss
def compute_loss(net: MSATransformer, batch: Batch, positions: torch.Tensor, mode: str, tc: TrainConfig,
                 rng: random.Random, device) -> Dict[str, torch.Tensor]:
    ids = batch.ids.to(device)
    aux = None
    if net.cfg.sparse:
        slots = kl_slots(batch, tc.kl_queries, rng)
        aux = {"kl_slots": slots.to(device)}
        if tc.concentration_weight > 0:
            picked = sorted(rng.sample(range(len(slots)), min(len(slots), tc.concentration_queries)))
            aux["concentration_k"] = tc.concentration_k
            aux["concentration_rows"] = torch.tensor(picked, dtype=torch.long, device=device)
    supervise = getattr(net, "patch_supervision", None) is not None and batch.patch_labels is not None
    point = tc.pointer_weight > 0 and net.pointer is not None and batch.point_xy is not None
    encoder = getattr(net, "vision", None)
    args = (ids, batch.patches.to(device), batch.patch_slot.to(device), positions.to(device))
    # the patch heads and the pointer read hidden states; other steps need only the logits
    states = net.pointer_states(*args, mode=mode, aux=aux) if supervise or point \
        else {"logits": net(*args, mode=mode, aux=aux)}
    logits = states["logits"]
    tgt = ids[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    ce = ce.view_as(tgt)
    amask = batch.answer_mask[:, 1:].to(device)
    lm = (ce * amask).sum() / amask.sum().clamp(min=1)
    loss = lm
    if tc.prompt_loss_weight > 0:
        pmask = (~amask) & (tgt != PAD)
        loss = loss + tc.prompt_loss_weight * (ce * pmask).sum() / pmask.sum().clamp(min=1)
    kl = torch.stack(aux["kl"]).mean() if aux and aux.get("kl") else torch.zeros((), device=device)
    # the digits of an answer can only come from the needle (retrieval); the rest is format or key
    digit = amask & (tgt >= ord("0")) & (tgt <= ord("9"))
    digit_loss = (ce * digit).sum().detach() / digit.sum() if bool(digit.any()) else None
    out = {"loss": loss + tc.kl_weight * kl, "lm_loss": lm.detach(), "kl": kl.detach(), "digit_loss": digit_loss}
    if aux and aux.get("concentration"):
        conc = torch.stack(aux["concentration"]).mean()
        out["loss"] = out["loss"] + tc.concentration_weight * conc
        out["concentration"] = conc.detach()
    if supervise:
        # on the vision encoder's output where there is one, else on the LM's last state at the patch tokens
        rows = states["keys"] if encoder is not None else states["query"][ids == IMG_PATCH]
        patch = net.patch_supervision.loss(rows, batch.patch_labels.to(device), balanced=tc.patch_balanced)
        out["loss"] = out["loss"] + tc.patch_aux_weight * patch
        out["patch_loss"] = patch.detach()
    if point:
        ptr = pointer_loss(net, states, batch, device)
        out["loss"] = out["loss"] + tc.pointer_weight * ptr["loss"]
        out["pointer_loss"], out["pointer_acc"] = ptr["loss"].detach(), ptr["acc"]
    return out


def sep_positions(batch: Batch) -> torch.Tensor:
    """int64 [B]: each row's SEP, the position before its first answer token (the pointer's query)."""
    return batch.answer_mask.float().argmax(1) - 1


def pointer_loss(net: MSATransformer, states: dict, batch: Batch, device) -> Dict[str, torch.Tensor]:
    """The GUI pointer's loss on a batch of screens (one image each): cross-entropy of the target's patch among
    the screen's patches, from the LM's state at SEP (the position before the answer), plus the L1 error of the
    offset inside the target's patch. "acc": the share of screens whose argmax patch holds the target's point."""
    cfg = net.cfg
    p = cfg.patches_per_image
    sep = sep_positions(batch).to(device)
    query = states["query"][torch.arange(batch.ids.shape[0], device=device), sep]  # [B, d]
    keys = states["keys"].view(-1, p, states["keys"].shape[-1])  # [B, P, d]
    cell, off = point_targets(batch.point_xy.to(device), cfg.image_size, cfg.patch_size)
    scores = net.pointer.scores(query, keys)
    ce = F.cross_entropy(scores, cell)
    chosen = keys[torch.arange(keys.shape[0], device=device), cell]  # [B, d]
    l1 = (net.pointer.offsets(chosen) - off).abs().mean()
    return {"loss": ce + l1, "acc": (scores.argmax(1) == cell).float().mean().detach()}


KL_TAIL = 48  # question tokens before the answer: the queries whose picks decide retrieval
KL_ANSWER = 12  # answer positions (the bytes copied from the needle)


def kl_slots(batch: Batch, k: int, rng: random.Random) -> torch.Tensor:
    """int64 [S] sorted query positions for the indexer's KL: the question tail and the first answer
    positions always, the rest drawn at random from the prompt.

    Random prompt positions alone almost never land on the question, yet those few queries are the
    ones that must pick the needle's block; the answer positions copy from it.
    """
    n, p = batch.ids.shape[1], batch.prompt_len
    fixed = set(range(max(0, p - KL_TAIL), min(n, p + KL_ANSWER)))
    pool = [i for i in range(p) if i not in fixed]
    extra = rng.sample(pool, max(0, min(len(pool), k - len(fixed))))
    return torch.tensor(sorted(fixed.union(extra)), dtype=torch.long)


# ---------------------------------------------------------------------------- resume state
def _resume_paths(tc: TrainConfig, name: str):
    d = Path(tc.log_dir) / name
    return d / "resume.safetensors", d / "resume.json"


def save_resume(net, opt, state: dict, tc: TrainConfig) -> None:
    from safetensors.torch import save_file

    wpath, jpath = _resume_paths(tc, net.cfg.name)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    names = {id(p): n for n, p in net.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                tensors[f"opt/{names[id(p)]}/{k}"] = torch.as_tensor(v).detach().float().cpu().contiguous()
    save_file(tensors, str(wpath.with_suffix(".tmp")))
    wpath.with_suffix(".tmp").replace(wpath)
    info = {"state": state, "train_config": dataclasses.asdict(tc), "model_config": net.cfg.to_dict()}
    jpath.write_text(json.dumps(info, indent=2) + "\n")


def load_resume(net, opt, tc: TrainConfig) -> dict:
    from safetensors.torch import load_file

    wpath, jpath = _resume_paths(tc, net.cfg.name)
    if not (wpath.is_file() and jpath.is_file()):
        raise FileNotFoundError(f"--resume: no resume state at {jpath} / {wpath}; start without --resume.")
    info = json.loads(jpath.read_text())
    # a key the saved config lacks is a part added to ModelConfig since; its default is "off"
    if {**net.cfg.to_dict(), **info["model_config"]} != net.cfg.to_dict():
        raise ValueError(f"--resume: {jpath} was written for another model config; start a fresh run "
                         f"(without --resume) or restore the matching files.")
    t = load_file(str(wpath))
    net.load_state_dict({k[len("model/"):]: v for k, v in t.items() if k.startswith("model/")})
    params = dict(net.named_parameters())
    for key, v in t.items():
        if key.startswith("opt/"):
            _, pname, slot = key.split("/", 2)
            p = params[pname]
            opt.state[p][slot] = v.to(p.device) if slot != "step" else v.cpu()
    return info["state"]


# Optional parts of the model (ModelConfig fields, 0 = off) that come with a warm start unless a flag of the
# same name overrides them; each starts as a no-op when added to a checkpoint without it
ADDED_PARTS = ("token_conv", "patch_stem", "vision_layers", "attention_sink", "pointer_dim")


def warm_start(net: MSATransformer, directory: str, source: Optional[str] = None) -> None:
    """Load the weights of <directory>/<source>.safetensors (sha256-checked; source defaults to this run's
    model) into net; the optimizer and the schedule start fresh. For a further run when the resume state
    (fp32 + AdamW) could not be kept.

    The source may be the other attention variant: msa-tiny and dense-200k share the backbone. From
    msa-tiny, dense-200k takes the main branch (the index projections and their TokenConv paths are
    dropped); from dense-200k, msa-tiny's index branch starts fresh (it learns by KL distillation).
    """
    from .model.checkpoint import load_checkpoint

    source = source or net.cfg.name
    src, _ = load_checkpoint(source, Path(directory), device="cpu")
    same = dict(name=net.cfg.name, attention=net.cfg.attention, max_context=net.cfg.max_context,
                image_size=net.cfg.image_size, patch_size=net.cfg.patch_size, patch_pool=net.cfg.patch_pool,
                length_scale_base=net.cfg.length_scale_base,  # no weight depends on it
                stem_scope=net.cfg.stem_scope,  # the stem's weights are the same in either scope
                **{f: getattr(net.cfg, f) for f in ADDED_PARTS})
    if src.cfg.replace(**same) != net.cfg:
        raise ValueError(f"--init-from {directory}: the {source} config there differs from this run's "
                         f"{net.cfg.name} beyond attention, context limit, length scale, token_conv, patch stem, "
                         f"vision layers, attention sink, image size and patch size; "
                         f"start from scratch or use a matching checkpoint.")
    for f in ADDED_PARTS:  # a part the checkpoint has must keep its size (a new one starts as a no-op)
        have, want = getattr(src.cfg, f), getattr(net.cfg, f)
        if have and have != want:
            flag = "--" + f.replace("_", "-")
            raise ValueError(f"--init-from {directory}: the checkpoint has {f}={have} and this run {want}; leave out "
                             f"{flag} (the checkpoint's is used) or pass {flag} {have}.")
    own = net.state_dict()
    state = {k: v.float() for k, v in src.state_dict().items()
             if net.cfg.sparse or not k.endswith(("wiq.weight", "wik.weight"))}  # dense-200k has no index branch
    if state["patch_pos.weight"].shape != own["patch_pos.weight"].shape:  # --image-size changed the patch grid
        state["patch_pos.weight"] = resize_patch_pos(state["patch_pos.weight"], net.cfg.patches_per_image)
    a, b = src.cfg.patch_pool, net.cfg.patch_pool
    # the same pooled patch (e.g. 16 px, or 32 px pooled by 2): patch_proj and the stem keep their weights, the
    # stem's first kernel spread over the larger picture's pixels (upsample_conv1)
    new_patch = not (src.cfg.patch_size // a == net.cfg.patch_size // b and b % a == 0)
    if new_patch:  # another patch size: the pixels-to-embedding map has another shape and starts fresh
        for k in [k for k in state if k.startswith(("patch_proj.", "patch_stem."))]:
            del state[k]
    elif b != a and "patch_stem.conv1.weight" in state:
        state["patch_stem.conv1.weight"] = upsample_conv1(state["patch_stem.conv1.weight"], b // a)
    for k, v in state.items():  # TokenConv paths: q, k, v, then (msa only) iq, ik; missing paths keep their init
        if k.endswith("token_conv.weight") and v.shape != own[k].shape:
            n = min(v.shape[0], own[k].shape[0])
            state[k] = torch.cat([v[:n], own[k][n:]])
    # a checkpoint without TokenConv warm-starts one with it: the new taps start at the identity, so the
    # network computes what the checkpoint did; likewise a dense source leaves msa-tiny's index branch fresh
    # and a new patch stem starts with a zero output layer
    fresh_ok = ("token_conv", "patch_stem.", "patch_supervision.", "vision.", "attn.sink_", "pointer.") + \
        ((".wiq.", ".wik.") if net.cfg.sparse and not src.cfg.sparse else ()) + (("patch_proj.",) if new_patch else ())
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not any(f in k for f in fresh_ok) for k in missing):
        raise ValueError(f"--init-from {directory}: weights do not match this run's model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")


def patch_heads_path(directory, name: str) -> Path:
    """Where the training-only per-patch heads of checkpoint <name> are kept: beside it, one file per model."""
    return Path(directory) / f"{name}.patch_heads.safetensors"


def save_patch_heads(heads: "PatchSupervision", directory, name: str) -> Path:
    from safetensors.torch import save_file

    path = patch_heads_path(directory, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in heads.state_dict().items()}, str(path))
    return path


def load_patch_heads(heads: "PatchSupervision", directory: str, name: str) -> Optional[Path]:
    """Load into `heads` the training-only per-patch heads written beside checkpoint <name> by
    msa_lab.vision_pretrain or an earlier run with --patch-aux-weight. Why: a run that goes on supervising the same
    labels should start from heads that already read the encoder; random heads' first gradients would scramble what
    the encoder learned. Returns the file loaded, or None where there is none."""
    path = patch_heads_path(directory, name)
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    saved, own = load_file(str(path)), heads.state_dict()
    if set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own):
        raise ValueError(f"{path} holds patch heads of another shape ({sorted(saved)}) than this run's "
                         f"PATCH_HEADS {PATCH_HEADS}; delete the file to start the heads fresh.")
    heads.load_state_dict({k: v.to(own[k].dtype) for k, v in saved.items()})
    return path


def chain_onto(record: dict, prev: dict, run: str) -> dict:
    """Add to a run's card record (steps, tokens, seconds, command) the warm start's: totals, and the chain of every
    run so far with this one last, named `run` after its number in the chain. The card reports the whole training,
    not the last run."""
    record["warm_started_from"] = prev
    record["total_steps"] = record["steps"] + (prev.get("steps") or 0)
    record["total_tokens"] = record["tokens"] + (prev.get("tokens") or 0)
    record["total_seconds"] = round(record["seconds"] + (prev.get("seconds") or 0), 1)
    chain = prev.get("chain") or []  # warm_start_record always writes one; resumed older states may not
    record["chain"] = chain + [{"run": f"{len(chain) + 1} {run}", "steps": record["steps"], "tokens": record["tokens"],
                                "seconds": record["seconds"]}]
    record["chain_commands"] = (prev.get("chain_commands") or []) + [record["command"]]
    return record


def warm_start_record(name: str, directory: str) -> dict:
    from .model.checkpoint import read_meta

    meta = read_meta(name, Path(directory))
    tr = meta.get("train", {})
    # totals, not the last run's figures: the warm start may itself continue earlier runs
    rec = {"sha256": meta["sha256"], "steps": tr.get("total_steps", tr.get("steps")),
           "tokens": tr.get("total_tokens", tr.get("tokens")), "seconds": tr.get("total_seconds", tr.get("seconds")),
           "device": tr.get("device"), "command": tr.get("command")}
    # every run so far, so that a chain of warm starts keeps its whole history on the card
    rec["chain"] = tr.get("chain") or [{"run": f"1 {directory}", "steps": rec["steps"], "tokens": rec["tokens"],
                                        "seconds": rec["seconds"]}]
    rec["chain_commands"] = tr.get("chain_commands") or [tr.get("command")]
    return rec


# ---------------------------------------------------------------------------- model card
CARD_HEADER = """# msa-lab checkpoints

Written by `msa_lab.train` (and refreshed by `msa_lab.eval`). Each model: `<name>.safetensors` (fp16) +
`<name>.json` (config, sha256, training record). Load with `msa_lab.api.load_model("<name>")`.
"""

CARD_MODEL = """
## {name}

| | |
|---|---|
| attention | {attention} |
| parameters | {n_params:,} ({bytes_mib:.1f} MiB fp16) |
| context limit | {limit} |
| length extrapolation | {length_scale} |
| images | {images} |
| steps | {steps:,} |
| tokens seen | {tokens:,} |
| training time | {minutes:.1f} min on {device} |
| final loss (mean of last 50 steps) | {final_loss} |
| runs | {runs} |
| sha256 | `{sha256}` |

Recipe: `{command}` (see msa_lab/train.py for the schedule: dense warm-up, then MSA with KL-trained
indexer; PoSE position jumps up to {pose_max:,}). Loss curve: `{log}`.

Eval: {eval}
"""


def _runs_text(tr: dict) -> str:
    if tr.get("chain"):  # a run warm-started from a warm-started run: the record lists every run
        parts = [f"{c['run']}: {c['steps']:,} steps, {c['tokens']:,} tokens, {c['seconds'] / 60:.1f} min"
                 for c in tr["chain"]]
        return "; ".join(parts) + (f". {tr['chain_note']}" if tr.get("chain_note") else "")
    prev = tr.get("warm_started_from")
    this = f"{tr.get('steps', 0):,} steps / {tr.get('seconds', 0) / 60:.1f} min (`{tr.get('command', '?')}`)"
    if not prev:
        return this
    return (f"{prev.get('steps') or 0:,} steps / {(prev.get('seconds') or 0) / 60:.1f} min (`{prev.get('command')}`), "
            f"then warm-started: {this}")


def _images_text(cfg: dict) -> str:
    size, patch = cfg.get("image_size", 64), cfg.get("patch_size", 8)
    enc, pool = cfg.get("vision_layers") or 0, cfg.get("patch_pool") or 1
    stem, pointer = cfg.get("patch_stem") or 0, cfg.get("pointer_dim") or 0
    return (f"resized to {size}x{size} px, {patch}-px patches ({(size // patch) ** 2} tokens per image"
            + (f", projected from {patch // pool}-px average-pooled copies" if pool > 1 else "") + "); "
            + (f"a conv stem ({stem} channels) over each "
               f"{'whole picture' if cfg.get('stem_scope') == 'image' else 'patch'}; " if stem else "")
            + (f"vision encoder: {enc} bidirectional layers over each image" if enc else "no vision encoder")
            + (f"; a GUI pointer (width {pointer}) gives act() its point" if pointer else ""))


def _eval_text(res: dict, sha256: str) -> str:
    """One paragraph of an eval JSON (msa_lab.eval.run_eval) for the card; flags results of other weights."""
    summary = res.get("summary", {})
    if not summary:
        return ""
    v = res.get("versions", {})
    where = f"{v.get('gpu') or 'CPU'}, torch {v.get('torch', '?')}, {str(res.get('created', '?'))[:10]}"
    rows = (res.get("tables") or {}).get("niah") or []
    by_len: dict = {}
    for r in rows:
        acc, n = by_len.get(r["length"], (0.0, 0))
        by_len[r["length"]] = (acc + r["accuracy"] * r["n"], n + r["n"])
    niah = ", ".join(f"{length:,}: {hits / max(1, n):.2f} ({n})" for length, (hits, n) in sorted(by_len.items()))
    src = res.get("niah_source")
    on = f", measured on {src['device']} (`{src['file']}`)" if src else ""
    text = f"({where}) NIAH exact match by length (questions){on}: {niah}. " if niah else f"({where}) "
    text += ", ".join(f"{k} = {v}" for k, v in summary.items() if k != "niah_accuracy")
    gui = res.get("gui") or {}
    if "kind_accuracy" in gui:
        text += f" (GUI action kind {gui['kind_accuracy']:.2f}; n = {gui.get('n')})"
    if (res.get("card") or {}).get("sha256") not in (None, sha256):
        text = "STALE, measured on other weights: " + text
    return text + "."


def render_card(out_dir: Path, eval_dir: Optional[Path] = None) -> Path:
    """Rewrite out_dir/README.md from every checkpoint JSON there (+ data/eval/<name>.json if present)."""
    out_dir = Path(out_dir)
    eval_dir = Path(eval_dir) if eval_dir else REPO_ROOT / "data" / "eval"
    parts = [CARD_HEADER]
    metas = sorted(out_dir.glob("*.json"))
    if not metas:
        parts.append("\nNo model trained yet: run `msa-lab train --model msa-tiny --minutes 20` on a GPU.\n")
    for jp in metas:
        try:
            meta = json.loads(jp.read_text())
        except json.JSONDecodeError:
            continue
        if "config" not in meta:
            continue
        tr, cfg = meta.get("train", {}), meta["config"]
        ev = eval_dir / f"{meta['name']}.json"
        ev_text = "not run yet (`python -m msa_lab.eval --model %s`)." % meta["name"]
        quick = sorted(eval_dir.glob("quick-*.md"))
        if quick:
            ev_text += " Quick checks right after training: " + ", ".join(
                f"`{q.relative_to(REPO_ROOT) if q.is_relative_to(REPO_ROOT) else q}`" for q in quick) + "."
        if ev.is_file():
            ev_text = _eval_text(json.loads(ev.read_text()), meta["sha256"]) or ev_text
        parts.append(CARD_MODEL.format(
            name=meta["name"], n_params=meta["n_params"], bytes_mib=meta["bytes"] / 2**20,
            limit=f"{cfg['max_context']:,} tokens" if cfg.get("max_context") else "none (memory-bound)",
            length_scale=(f"logits x ln(n) / ln({cfg['length_scale_base']:,}) for a query seeing n > "
                          f"{cfg['length_scale_base']:,} keys (`ModelConfig.length_scale_base`; no weight depends on it)"
                          if cfg.get("length_scale_base") else
                          ("none needed: the MSA softmax spans at most top_k blocks" if cfg["attention"] == "msa"
                           else "none")),
            steps=tr.get("total_steps", tr.get("steps", 0)), tokens=tr.get("total_tokens", tr.get("tokens", 0)),
            minutes=tr.get("total_seconds", tr.get("seconds", 0)) / 60,
            device=tr.get("device", "?"), final_loss=tr.get("final_loss", "?"), sha256=meta["sha256"],
            runs=_runs_text(tr), command=tr.get("command", "?"),
            pose_max=cfg.get("max_context") or cfg["pose_max_position"], log=tr.get("log", "?"), eval=ev_text,
            images=_images_text(cfg), attention=cfg["attention"] + (
                "; a learned attention sink on the first token (`ModelConfig.attention_sink`)"
                if cfg.get("attention_sink") else "")))
    path = out_dir / "README.md"
    path.write_text("".join(parts))
    return path


# ---------------------------------------------------------------------------- main loop
def build_model_config(tc: TrainConfig) -> ModelConfig:
    cfg = small_config("msa", name="smoke-msa") if tc.smoke else model_config(tc.model)
    src: dict = {}
    saved = _resume_paths(tc, cfg.name)[1]
    if tc.resume and saved.is_file():  # a resumed run keeps the architecture it saved, parts of its warm start included
        src = dict(json.loads(saved.read_text())["model_config"])
    elif tc.init_from:  # the warm start's architecture (TokenConv, image size) comes with it unless overridden
        from .model.checkpoint import CheckpointNotFound, read_meta

        try:
            src = read_meta(tc.init_model or cfg.name, Path(tc.init_from))["config"]
        except CheckpointNotFound:
            pass  # warm_start names the missing file
    for f in ADDED_PARTS if src else ():  # a checkpoint or state written before the part existed has it off
        src.setdefault(f, 0)
    parts = {f: getattr(tc, f) if getattr(tc, f) is not None else src.get(f, getattr(cfg, f)) for f in ADDED_PARTS}
    return cfg.replace(image_size=tc.image_size or src.get("image_size", cfg.image_size),
                       patch_size=tc.patch_size or src.get("patch_size", cfg.patch_size),
                       patch_pool=tc.patch_pool or src.get("patch_pool", cfg.patch_pool),
                       stem_scope=tc.stem_scope or src.get("stem_scope", cfg.stem_scope), **parts)


def resize_patch_pos(weight: torch.Tensor, patches: int) -> torch.Tensor:
    """Patch-position embeddings [P, d] of a g x g grid -> [patches, d], bicubic over the grid.

    A warm start at another image size (ViT-style): each new slot starts from the embedding of the
    same place in the image, so what the network learned about layout carries over.
    """
    g_old, g_new = math.isqrt(weight.shape[0]), math.isqrt(patches)
    if g_old * g_old != weight.shape[0] or g_new * g_new != patches:
        raise ValueError(f"patch grids must be square: {weight.shape[0]} -> {patches} slots")
    grid = weight.float().T.reshape(1, -1, g_old, g_old)
    out = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
    return out.reshape(-1, patches).T.contiguous()


def train(tc: TrainConfig, argv: Optional[List[str]] = None) -> dict:
    """Run one training session; returns the final state dict (step, seconds, tokens, last losses)."""
    device = torch.device(tc.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(tc.seed)
    cfg = build_model_config(tc)
    if tc.concentration_weight > 0 and not cfg.sparse:  # before a refused run deletes the last log
        raise ValueError(f"--concentration-weight: {cfg.name} is dense; it selects no blocks to concentrate on.")
    if tc.pointer_weight > 0 and not cfg.pointer_dim:
        raise ValueError(f"--pointer-weight: {cfg.name} has no GUI pointer; add one with --pointer-dim 64 (it needs "
                         f"--vision-layers), or drop the flag.")
    net = MSATransformer(cfg)
    if tc.patch_aux_weight > 0:  # training-only heads: removed before the checkpoint is written
        net.patch_supervision = PatchSupervision(cfg.d_model)
    net = net.to(device)
    net.backend = tc.backend
    # TokenConv taps start at the identity: decaying them would pull the layer toward zero input; the sink
    # offsets start at zero and have their own lr (TrainConfig.sink_lr_scale)
    sink = [p for n, p in net.named_parameters() if ".attn.sink_" in n]
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2 and "token_conv" not in n and ".attn.sink_" not in n]
    no_decay = [p for n, p in net.named_parameters() if p.dim() < 2 or "token_conv" in n]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if sink:
        groups.append({"params": sink, "weight_decay": 0.0, "lr_scale": tc.sink_lr_scale})
    opt = torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    log_path = Path(tc.log_dir) / cfg.name / "log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "seconds": 0.0, "tokens": 0, "runs": []}
    if tc.resume:
        state = load_resume(net, opt, tc)
    elif tc.init_from:
        warm_start(net, tc.init_from, tc.init_model)
        state["init_from"] = warm_start_record(tc.init_model or cfg.name, tc.init_from)
        heads = None if tc.patch_aux_weight <= 0 else \
            load_patch_heads(net.patch_supervision, tc.init_from, tc.init_model or cfg.name)
        if heads:
            print(f"patch heads from {heads}")
    elif log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh curve
    if tc.train_only == "index":
        if not cfg.sparse:
            raise ValueError(f"--train-only index: {cfg.name} is dense and has no index branch.")
        for name, p in net.named_parameters():
            p.requires_grad_(".wiq." in name or ".wik." in name)
    source = TaskSource(parse_tasks("synthetic_niah" if tc.smoke else tc.tasks), log=print)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                   enabled=False)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    budget = tc.minutes * 60.0
    run_t0 = time.perf_counter()
    last_save = run_t0
    recent: List[float] = []
    bar = None
    if tc.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.max_steps or int(budget), initial=0, unit="step" if tc.max_steps else "s",
                   desc=f"train {cfg.name}", dynamic_ncols=True)
    step_time = 0.0
    batches = BatchPrefetcher(tc, cfg, source, data_workers(tc, device))
    with open(log_path, "a") as logf:
        while True:
            run_elapsed = time.perf_counter() - run_t0
            if tc.max_steps is not None and state["step"] >= tc.max_steps:
                break
            if tc.max_steps is None and run_elapsed + 1.5 * step_time + 20 > budget:
                break  # keep time to save
            t0 = time.perf_counter()
            p = progress_of(state, tc)
            batch, positions, jump = batches.get(state["step"], p)
            rng = random.Random(f"msa-lab/train/kl/{tc.seed}/{state['step']}")
            task, n = batch.task, batch.ids.shape[1]
            phase = "dense" if (not cfg.sparse or p < tc.dense_warmup) else "sparse"
            mode = "train_dense" if phase == "dense" else "train_sparse"
            lr = lr_at(state["step"], p, tc)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            with amp:
                out = compute_loss(net, batch, positions, mode, tc, rng, device)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_time = time.perf_counter() - t0
            state["step"] += 1
            state["seconds"] += step_time
            state["tokens"] += batch.tokens
            rec = {"step": state["step"], "seconds": round(state["seconds"], 3), "phase": phase, "task": task,
                   "seq_len": n, "batch": batch.ids.shape[0], "tokens": batch.tokens, "pose": jump,
                   "loss": out["loss"].item(), "lm_loss": out["lm_loss"].item(), "kl": out["kl"].item(),
                   "lr": lr, "grad_norm": float(gnorm), "tokens_per_s": round(batch.tokens / step_time, 1),
                   "digit_loss": None if out["digit_loss"] is None else round(out["digit_loss"].item(), 4)}
            if "patch_loss" in out:
                rec["patch_loss"] = round(out["patch_loss"].item(), 4)
            if "pointer_loss" in out:  # pointer_acc: share of screens whose argmax patch holds the target's point
                rec["pointer_loss"] = round(out["pointer_loss"].item(), 4)
                rec["pointer_acc"] = round(out["pointer_acc"].item(), 4)
            if "concentration" in out:  # mean -log(dense mass on the selected blocks): -log(recall) per head
                rec["concentration"] = round(out["concentration"].item(), 4)
            if device.type == "cuda":
                rec["mem_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            logf.write(json.dumps(rec) + "\n")
            recent = (recent + [rec["lm_loss"]])[-50:]
            if bar is not None:
                bar.update(1 if tc.max_steps else max(0, int(time.perf_counter() - run_t0) - bar.n))
                bar.set_postfix(loss=f"{rec['lm_loss']:.3f}", kl=f"{rec['kl']:.3f}", phase=phase, n=n)
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"loss became {rec['loss']} at step {state['step']} ({task}, n={n}); "
                                         f"lower --lr or resume from the last save.")
            if time.perf_counter() - last_save > tc.save_every * 60:
                logf.flush()
                save_resume(net, opt, state, tc)
                last_save = time.perf_counter()
    batches.close()
    if bar is not None:
        bar.close()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    state["runs"].append({"steps_to": state["step"], "run_seconds": round(time.perf_counter() - run_t0, 1),
                          "device": dev_name})
    save_resume(net, opt, state, tc)
    final_loss = round(sum(recent) / len(recent), 4) if recent else None
    record = {"steps": state["step"], "seconds": round(state["seconds"], 1), "tokens": state["tokens"],
              "device": dev_name, "final_loss": final_loss, "log": str(log_path),
              "command": "python -m msa_lab.train " + " ".join(argv if argv is not None else sys.argv[1:]),
              "torch": torch.__version__, "runs": state["runs"], "answer_format": tc.answer_format}
    if state.get("init_from"):
        chain_onto(record, state["init_from"], f"{tc.tasks} at {tc.seq_start:,}-{tc.seq_end:,} tokens ({dev_name})")
    net.eval()
    if getattr(net, "patch_supervision", None) is not None:
        save_patch_heads(net.patch_supervision, tc.out_dir, cfg.name)  # beside the checkpoint, for a run that goes on
        del net.patch_supervision
        record["patch_aux_weight"] = tc.patch_aux_weight
        if tc.patch_balanced:
            record["patch_balanced"] = True
    if tc.train_only:
        record["train_only"] = tc.train_only
    if tc.pointer_weight > 0:
        record["pointer_weight"] = tc.pointer_weight
    if tc.concentration_weight > 0:
        record["concentration"] = {"weight": tc.concentration_weight, "k": tc.concentration_k,
                                   "queries": tc.concentration_queries}
    save_checkpoint(net, Path(tc.out_dir), train=record)
    render_card(Path(tc.out_dir))
    return {**state, "final_loss": final_loss, "log": str(log_path)}


# ---------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[List[str]] = None) -> TrainConfig:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="msa-lab train", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=d.model, choices=["msa-tiny", "dense-200k"])
    ap.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock budget of this run")
    ap.add_argument("--total-minutes", type=float, default=None, help="schedule length over all resumed runs")
    ap.add_argument("--steps", dest="max_steps", type=int, default=None, help="stop after this many steps instead")
    ap.add_argument("--tokens-per-step", type=int, default=d.tokens_per_step)
    ap.add_argument("--max-examples", type=int, default=d.max_examples)
    ap.add_argument("--seq-start", type=int, default=d.seq_start)
    ap.add_argument("--seq-end", type=int, default=d.seq_end)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    ap.add_argument("--dense-warmup", type=float, default=d.dense_warmup, help="share of the schedule trained dense")
    ap.add_argument("--kl-weight", type=float, default=d.kl_weight)
    ap.add_argument("--kl-queries", type=int, default=d.kl_queries)
    ap.add_argument("--pose-prob", type=float, default=d.pose_prob)
    ap.add_argument("--prompt-loss-weight", type=float, default=d.prompt_loss_weight)
    ap.add_argument("--answer-format", default=d.answer_format, choices=["keyed", "plain"],
                    help="NIAH training targets: '<key> is: <value>' (keyed) or the bare value (plain)")
    ap.add_argument("--tasks", default=d.tasks,
                    help="name:weight,... (msa_lab.tasks names, or the training-only " + ", ".join(TRAIN_ONLY_TASKS) + ")")
    ap.add_argument("--token-conv", type=int, default=None, metavar="WIDTH",
                    help="causal convolution over the last WIDTH positions before each attention (0: off; "
                         "see ModelConfig.token_conv); warm-starting from a checkpoint without it is allowed")
    ap.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                    help="images are resized to PIXELS x PIXELS (a multiple of the patch size; default: the "
                         "warm start's, else 64); a warm start at another size interpolates the patch positions")
    ap.add_argument("--patch-size", type=int, default=None, metavar="PIXELS",
                    help="patch side in pixels (ModelConfig.patch_size; default: the warm start's, else 8); a warm "
                         "start at another patch size starts the patch projection and stem fresh")
    ap.add_argument("--patch-pool", type=int, default=None, metavar="FACTOR",
                    help="patch_proj reads each patch average-pooled by FACTOR and the stem's first convolution "
                         "strides by it (ModelConfig.patch_pool; default: the warm start's, else 1), e.g. "
                         "--image-size 512 --patch-size 32 --patch-pool 2 from a 256-px, 16-px-patch checkpoint "
                         "keeps its weights")
    ap.add_argument("--patch-stem", type=int, default=None, metavar="CHANNELS",
                    help="per-patch conv stem width (ModelConfig.patch_stem; default: the warm start's, 0 = off)")
    ap.add_argument("--stem-scope", default=None, choices=["patch", "image"],
                    help="where the stem convolves: each patch alone or the whole picture (ModelConfig.stem_scope; "
                         "default: the warm start's)")
    ap.add_argument("--vision-layers", type=int, default=None, metavar="N",
                    help="bidirectional encoder layers over each image (ModelConfig.vision_layers; default: the warm "
                         "start's, 0 = off)")
    ap.add_argument("--attention-sink", type=int, default=None, choices=[0, 1],
                    help="learned key/value offsets on the first token, a sink every query can park attention in "
                         "(ModelConfig.attention_sink; default: the warm start's, 0 = off)")
    ap.add_argument("--pointer-dim", type=int, default=None, metavar="WIDTH",
                    help="a GUI pointer of this width that act() takes its point from (ModelConfig.pointer_dim; "
                         "default: the warm start's, 0 = off; needs vision layers)")
    ap.add_argument("--pointer-weight", type=float, default=d.pointer_weight,
                    help="weight of the GUI pointer's loss (0 = off; needs a pointer)")
    ap.add_argument("--sink-lr-scale", type=float, default=d.sink_lr_scale,
                    help="the sink offsets' lr as a multiple of --lr")
    ap.add_argument("--data-workers", type=int, default=None, metavar="N",
                    help="processes drawing batches ahead (default: 0 on a CPU, up to 8 on a GPU; 0 = one thread)")
    ap.add_argument("--patch-aux-weight", type=float, default=d.patch_aux_weight,
                    help="weight of the per-patch labels of image tasks (training-only heads; 0 = off)")
    ap.add_argument("--patch-balanced", action="store_true",
                    help="per-patch loss: things and background weigh the same per head (as msa_lab.vision_pretrain)")
    ap.add_argument("--train-only", default=None, choices=["index"],
                    help="index: train only the index branch (wiq, wik) by its KL toward the main branch's block mass")
    ap.add_argument("--concentration-weight", type=float, default=d.concentration_weight,
                    help="weight of -log(dense attention mass on the selected blocks): trains the main branch to keep "
                         "its attention where the indexer looks (msa-tiny only; 0 = off)")
    ap.add_argument("--concentration-k", type=int, default=d.concentration_k,
                    help="blocks selected for --concentration-weight (the recall target's k)")
    ap.add_argument("--concentration-queries", type=int, default=d.concentration_queries,
                    help="query positions per step for --concentration-weight (drawn from the KL's)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", default=None)
    ap.add_argument("--backend", default=None, choices=["triton", "torch", "reference"],
                    help="select_blocks backend (default: automatic)")
    ap.add_argument("--out-dir", default=d.out_dir)
    ap.add_argument("--log-dir", default=d.log_dir)
    ap.add_argument("--save-every", type=float, default=d.save_every, help="minutes between resume saves")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", default=None, metavar="DIR",
                    help="warm-start from DIR/<model>.safetensors (fresh optimizer and schedule)")
    ap.add_argument("--init-model", default=None, choices=["msa-tiny", "dense-200k"],
                    help="with --init-from: take this model's weights (the shared backbone; default: --model)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU config on the synthetic task (30 steps)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    a = vars(ap.parse_args(argv))
    tc = TrainConfig(**a)
    if tc.smoke:
        tc = dataclasses.replace(
            tc, device=tc.device or "cpu", backend=tc.backend or "torch", max_steps=tc.max_steps or 30,
            tokens_per_step=8 * 128, seq_start=128, seq_end=128, lr=3e-3, warmup_steps=3, dense_warmup=0.5,
            kl_queries=32)
    for f in ("seq_start", "seq_end", "tokens_per_step", "kl_queries", "max_examples", "concentration_k",
              "concentration_queries"):
        if getattr(tc, f) <= 0:
            raise SystemExit(f"--{f.replace('_', '-')} must be > 0")
    if tc.data_workers is not None and tc.data_workers < 0:
        raise SystemExit(f"--data-workers must be >= 0 (0 = one background thread), got {tc.data_workers}")
    if tc.seq_start > tc.seq_end:
        raise SystemExit(f"--seq-start {tc.seq_start} > --seq-end {tc.seq_end}; swap them.")
    if tc.pointer_weight < 0:
        raise SystemExit(f"--pointer-weight must be >= 0 (0 = off), got {tc.pointer_weight}")
    if tc.concentration_weight < 0:
        raise SystemExit(f"--concentration-weight must be >= 0 (0 = off), got {tc.concentration_weight}")
    if tc.concentration_weight > 0 and tc.model != "msa-tiny" and not tc.smoke:
        raise SystemExit(f"--concentration-weight needs an indexer to select blocks; {tc.model} is dense. "
                         f"Use --model msa-tiny, or drop the flag.")
    if tc.concentration_weight > 0 and tc.train_only == "index":
        raise SystemExit("--concentration-weight trains the main branch, which --train-only index freezes; "
                         "drop one of the two.")
    if tc.init_model and not tc.init_from:
        raise SystemExit("--init-model names the model to take from --init-from DIR; pass --init-from too.")
    return tc


def main(argv: Optional[List[str]] = None) -> int:
    tc = parse_args(argv)
    out = train(tc, argv)
    print(json.dumps({k: out[k] for k in ("step", "seconds", "tokens", "final_loss", "log")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
