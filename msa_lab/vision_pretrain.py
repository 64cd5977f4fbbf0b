"""Vision pre-training: the patch path and the vision encoder alone, on the per-patch labels of image-QA
pictures and GUI screens, before the full model trains on answers (msa_lab.train --init-from).

Why a stage of its own: an image answer is one or two bytes of signal per picture, and a full training step
pays for the whole language model on every picture. Through the eleventh session the encoder never learned to
read (written words at chance, GUI buttons and icons told apart at 0.4-0.5) in ~100 pictures a second of full
training. Reading is a per-patch skill that the generators label exactly (msa_lab.train.patch_labels: the word,
the GUI element and its label under each patch), so this stage trains only what produces the encoder's states
(patch projection, positions, conv stem, encoder blocks) on those labels, a few thousand pictures a second, and
writes a normal checkpoint: the language model's weights are the warm start's, untouched.

    python -m msa_lab.vision_pretrain --init-from data/checkpoints --image-size 256 --patch-size 16 \\
        --patch-stem 32 --stem-scope image --pointer-dim 64 --replay 4 --minutes 3 --out-dir /tmp/v
    python -m msa_lab.train --init-from /tmp/v --pointer-weight 1 --patch-aux-weight 1 ...

Writes to --out-dir: <model>.safetensors + .json (the whole model), <model>.patch_heads.safetensors (the
training-only heads, which msa_lab.train loads to go on supervising), vision_log.jsonl (loss per step, held-out figures per
eval) and vision_eval.json (the last held-out figures). Held-out pictures come from --eval-seed, below
msa_lab.train.TRAIN_SEED_MIN, so they are never training pictures. "read" figures: for each word in a picture and
each GUI label, the head's logits averaged over the patches that show it pick the right one of 30 words / 67
labels (chance 0.03 / 0.015).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import queue
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .model.checkpoint import REPO_ROOT, save_checkpoint
from .model.net import MSATransformer
from .model.vision import prepare_image
from .train import (IMAGE_QA_KIND_TASKS, PATCH_HEADS, TRAIN_SEED_MIN, PatchSupervision, TaskSource, TrainConfig,
                    build_model_config, chain_onto, load_patch_heads, lr_at, parse_tasks, patch_classes,
                    patch_labels, save_patch_heads, warm_start, warm_start_record)

VISION_TASKS = ("gui", "image_qa") + IMAGE_QA_KIND_TASKS
DEFAULT_TASKS = "gui:2,image_qa:1,image_qa_word:1"
# what this stage trains: everything between a picture's pixels and the encoder's normed state. The encoder's
# output layer (vision.out) feeds the language model only, and the LM is left as the warm start had it
TRAINED = ("patch_proj.", "patch_pos.", "patch_stem.", "vision.blocks.", "vision.norm.")


@dataclass
class VisionConfig:
    model: str = "msa-tiny"
    init_from: Optional[str] = None  # checkpoint directory to start from (the LM comes from it unchanged)
    image_size: Optional[int] = None  # ModelConfig overrides, as in msa_lab.train (None: the warm start's)
    patch_size: Optional[int] = None
    patch_pool: Optional[int] = None
    patch_stem: Optional[int] = None
    stem_scope: Optional[str] = None
    vision_layers: Optional[int] = None
    pointer_dim: Optional[int] = None
    minutes: float = 3.0
    max_steps: Optional[int] = None
    batch: int = 256  # pictures per step
    lr: float = 1e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    balanced: bool = True  # PatchSupervision.loss(balanced=...): things and background weigh the same per head
    # most gradient steps per drawn batch: the fresh batch, then, while the next one is still being drawn, up to
    # replay - 1 batches picked at random from a pool of replay_batches recent ones (kept on the device; a random
    # one leaves when a new one comes). Why: on an H100 a step takes a fraction of the time 14 processes need to
    # draw a batch, so without replay the GPU mostly waits. Replay never delays a fresh batch. (1 = off, every run
    # before the thirteenth session)
    replay: int = 1
    replay_batches: int = 32
    tasks: str = DEFAULT_TASKS
    workers: Optional[int] = None  # picture-drawing processes (None: 0 on a CPU, up to 14 on a GPU)
    seed: int = 0
    eval_n: int = 256  # held-out pictures per task
    eval_seed: int = 4242
    eval_every: float = 1.0  # minutes
    out_dir: str = str(REPO_ROOT / "data" / "checkpoints" / "vision")
    device: Optional[str] = None
    smoke: bool = False
    progress: bool = True


def _tensors(examples: List[dict], cfg) -> tuple:
    """-> (pixels uint8 [n, 3, S, S], labels int64 [n, P, heads]) of one-picture examples."""
    return (torch.stack([prepare_image(ex["images"][0], cfg.image_size).pixels for ex in examples]),
            torch.stack([patch_labels(ex, cfg) for ex in examples]))


def draw_pictures(cfg, tasks: Dict[str, float], seed: int, n: int) -> tuple:
    """n pictures of the task mix, deterministic in seed -> (pixels uint8 [n, 3, S, S], labels int64 [n, P, heads])."""
    rng = random.Random(f"msa-lab/vision/{seed}")
    names = list(tasks)
    counts = Counter(rng.choices(names, weights=[tasks[k] for k in names], k=n))
    source = TaskSource(tasks)
    examples: List[dict] = []
    for name in names:
        if counts[name]:
            examples += source.examples(name, counts[name], rng.randrange(TRAIN_SEED_MIN, 2**31), seq_len=0)
    return _tensors(examples, cfg)


def held_out(cfg, tasks: Dict[str, float], n: int, seed: int) -> Dict[str, tuple]:
    """{task: (pixels, labels)} of n pictures each from eval seed `seed` (< TRAIN_SEED_MIN: never trained on)."""
    if seed >= TRAIN_SEED_MIN:
        raise ValueError(f"--eval-seed {seed} is in the training seed range (>= {TRAIN_SEED_MIN}); use a smaller one.")
    source = TaskSource(tasks)
    return {name: _tensors(source.examples(name, n, seed, seq_len=0), cfg) for name in tasks}


class Pictures(torch.utils.data.IterableDataset):
    """Step s's batch is draw_pictures(seed = hash of (run seed, s)); worker k of W draws steps k, k + W, ...,
    which the DataLoader hands out in step order."""

    def __init__(self, cfg, tasks: Dict[str, float], seed: int, batch: int):
        self.cfg, self.tasks, self.seed, self.batch = cfg, tasks, seed, batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, w = (info.id, info.num_workers) if info else (0, 1)
        if info:  # one core per drawing process; without workers the trainer's own threads are left alone
            torch.set_num_threads(1)
        step = k
        while True:
            step_seed = random.Random(f"msa-lab/vision/{self.seed}/{step}").randrange(2**31)
            yield draw_pictures(self.cfg, self.tasks, step_seed, self.batch)
            step += w


class _Feeder:
    """Takes batches from the loader in a thread, so the trainer can see whether the next one is ready (replay)."""

    def __init__(self, loader, ahead: int = 2):
        self.queue: queue.Queue = queue.Queue(maxsize=ahead)
        self.error: Optional[BaseException] = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(loader,), daemon=True)
        self.thread.start()

    def _run(self, loader) -> None:
        try:
            while not self.done.is_set():
                item = next(loader)
                while not self.done.is_set():
                    try:
                        self.queue.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # re-raised in the trainer's thread by get()
            self.error = e
            self.done.set()

    def empty(self) -> bool:
        return self.queue.empty()

    def get(self):
        while True:
            try:
                return self.queue.get(timeout=0.5)
            except queue.Empty:
                if self.error is not None:
                    raise RuntimeError(f"drawing pictures failed: {self.error!r}") from self.error

    def stop(self) -> None:
        self.done.set()


def patchify_batch(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float [B * P, 3 * p * p] in [-1, 1], rows as msa_lab.model.vision.patchify's."""
    b, c, s, _ = pixels.shape
    n = s // patch_size
    x = pixels.float().div(127.5).sub(1.0).view(b, c, n, patch_size, n, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b * n * n, c * patch_size * patch_size)


def encoder_states(net: MSATransformer, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> the encoder's normed states [B * P, d], as the full model computes them."""
    p = net.cfg.patches_per_image
    px = patchify_batch(pixels, net.cfg.patch_size)
    slot = torch.arange(p, device=pixels.device).repeat(pixels.shape[0])
    return net.encode_patches(px, slot)[1]


def read_accuracy(logits: torch.Tensor, labels: torch.Tensor, groups: Optional[torch.Tensor] = None):
    """logits [B, P, C], labels int64 [B, P] (0 = nothing, -100 = unlabelled) -> (correct, total): for each picture
    and each class c > 0 on it, whether the logits averaged over c's patches pick c.

    groups int64 [B, P] (e.g. the GUI element kind under each patch): also split the count by the group most of
    c's patches carry -> (correct, total, {group: (correct, total)}). With groups, only patches in a group (> 0)
    count: a GUI label is read where its element is (the box the pointer must click), not at a field's "Label:"
    text beside it, which patch_labels also labels."""
    correct = total = 0
    by: Dict[int, list] = {}
    for b, (lg, lab) in enumerate(zip(logits, labels)):
        for c in lab[lab > 0].unique().tolist():
            m = (lab == c) & (groups[b] > 0) if groups is not None else lab == c
            if not bool(m.any()):
                continue
            hit = int(lg[m].float().mean(0).argmax()) == c
            correct, total = correct + hit, total + 1
            if groups is not None:
                g = int(groups[b][m].mode().values)
                by.setdefault(g, [0, 0])
                by[g][0] += hit
                by[g][1] += 1
    if groups is None:
        return correct, total
    return correct, total, {g: tuple(v) for g, v in sorted(by.items())}


@torch.no_grad()
def evaluate(net: MSATransformer, heads: PatchSupervision, data: Dict[str, tuple], device, batch: int = 128) -> dict:
    """Held-out figures per task: per head, the accuracy on patches that show something (label > 0) and on
    those that show nothing; for "word" and "gui_label", the read accuracy (read_accuracy)."""
    out: dict = {}
    for task, (pixels, labels) in data.items():
        logits: Dict[str, list] = {h: [] for h in PATCH_HEADS}
        for i in range(0, len(pixels), batch):
            hidden = encoder_states(net, pixels[i:i + batch].to(device)).float()
            for h, head in heads.heads.items():
                logits[h].append(head(hidden).view(-1, net.cfg.patches_per_image, head.out_features).cpu())
        r: dict = {}
        for j, h in enumerate(PATCH_HEADS):
            lab, lg = labels[..., j], torch.cat(logits[h])
            if not bool((lab >= 0).any()):
                continue
            pred = lg.argmax(-1)
            on, off = lab > 0, lab == 0
            r[h] = {"object_acc": round(float((pred[on] == lab[on]).float().mean()), 4) if on.any() else None,
                    "background_acc": round(float((pred[off] == 0).float().mean()), 4) if off.any() else None}
            if h == "word":
                c, t = read_accuracy(lg, lab)
                r[h]["read_acc"], r[h]["read_n"] = (round(c / t, 4) if t else None), t
            if h == "gui_label":  # by element kind: menus and lists can be named from their place, buttons cannot
                c, t, by = read_accuracy(lg, lab, labels[..., PATCH_HEADS.index("gui")])
                r[h]["read_acc"], r[h]["read_n"] = (round(c / t, 4) if t else None), t
                kinds = ("none",) + patch_classes()["gui"]
                r[h]["read_by_kind"] = {kinds[g]: round(ok / n, 4) for g, (ok, n) in by.items() if g >= 0}
        out[task] = r
    return out


def summary(ev: dict) -> str:
    parts = []
    for task, r in ev.items():
        for h in ("word", "gui_label"):
            if h in r and r[h].get("read_acc") is not None:
                parts.append(f"{task} {h} read {r[h]['read_acc']:.2f}")
        for h in ("shape", "colour", "centre", "gui"):
            if h in r and r[h]["object_acc"] is not None:
                parts.append(f"{task} {h} {r[h]['object_acc']:.2f}")
    return ", ".join(parts)


def run(vc: VisionConfig, argv: Optional[List[str]] = None) -> dict:
    """Train the patch path and the encoder; write the checkpoint, the heads, the log and the held-out figures."""
    device = torch.device(vc.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(vc.seed)
    tasks = parse_tasks(vc.tasks)
    bad = sorted(set(tasks) - set(VISION_TASKS))
    if bad:
        raise ValueError(f"--tasks {bad}: vision pre-training draws only pictures; use {', '.join(VISION_TASKS)}.")
    tc = TrainConfig(model=vc.model, init_from=vc.init_from, smoke=vc.smoke, **{
        f: getattr(vc, f) for f in ("image_size", "patch_size", "patch_pool", "patch_stem", "stem_scope",
                                    "vision_layers", "pointer_dim")})
    cfg = build_model_config(tc)
    if not cfg.vision_layers:
        raise ValueError(f"{cfg.name} has no vision encoder; pass --vision-layers 2 (or warm-start from a model with one).")
    net = MSATransformer(cfg)
    prev = None
    if vc.init_from:
        warm_start(net, vc.init_from)
        prev = warm_start_record(cfg.name, vc.init_from)
    heads = PatchSupervision(cfg.d_model)
    loaded = load_patch_heads(heads, vc.init_from, cfg.name) if vc.init_from else None
    if loaded:
        print(f"patch heads from {loaded}")
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(TRAINED))
    trained = [p for p in net.parameters() if p.requires_grad] + list(heads.parameters())
    workers = vc.workers if vc.workers is not None else (0 if device.type != "cuda" else 14)
    # the loader's processes start before the model reaches the GPU: a forked worker must not hold a CUDA context
    loader = iter(torch.utils.data.DataLoader(Pictures(cfg, tasks, vc.seed, vc.batch), batch_size=None,
                                              num_workers=workers, pin_memory=device.type == "cuda",
                                              prefetch_factor=4 if workers else None, persistent_workers=False))
    feeder = _Feeder(loader)
    data = held_out(cfg, tasks, vc.eval_n, vc.eval_seed)
    net.to(device)
    heads.to(device)
    net.train()
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": vc.weight_decay}, {"params": no_decay, "weight_decay": 0}],
                            lr=vc.lr, betas=(0.9, 0.95))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    out_dir = Path(vc.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "vision_log.jsonl"
    budget = vc.minutes * 60.0
    t_start = time.perf_counter()
    last_eval, step, seconds, pictures, step_time = t_start, 0, 0.0, 0, 0.0
    recent: List[tuple] = []  # replay: a pool of up to replay_batches recent batches, on the device
    replay_rng, updates = random.Random(f"msa-lab/vision-replay/{vc.seed}"), 0
    bar = None
    if vc.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=vc.max_steps or int(budget), unit="step" if vc.max_steps else "s", desc="vision pre-training",
                   dynamic_ncols=True)
    evals = []
    with open(log_path, "w") as logf:
        while True:
            elapsed = time.perf_counter() - t_start
            if vc.max_steps is not None and step >= vc.max_steps:
                break
            if vc.max_steps is None and elapsed + 1.5 * step_time + 10 > budget:
                break  # keep time for the last eval and the save
            t0 = time.perf_counter()
            pixels, labels = feeder.get()
            p = step / vc.max_steps if vc.max_steps else elapsed / budget
            lr = lr_at(step, p, vc)  # msa_lab.train's warmup and cosine, on this config's lr fields
            for g in opt.param_groups:
                g["lr"] = lr
            fresh = (pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            if vc.replay > 1:
                if len(recent) == vc.replay_batches:
                    recent.pop(replay_rng.randrange(len(recent)))
                recent.append(fresh)
            k = 0
            while k == 0 or (k < vc.replay and feeder.empty()):
                px, lab = fresh if k == 0 else recent[replay_rng.randrange(len(recent))]
                with amp:
                    loss = heads.loss(encoder_states(net, px), lab.view(-1, len(PATCH_HEADS)), balanced=vc.balanced)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(trained, vc.grad_clip)
                opt.step()
                if k == 0:
                    fresh_loss = loss.item()  # the log's loss: on pictures not yet trained on
                elif device.type == "cuda":  # so that feeder.empty() is asked when this update is done, not queued
                    torch.cuda.synchronize(device)
                k += 1
            updates += k
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_time = time.perf_counter() - t0
            step, seconds, pictures = step + 1, seconds + step_time, pictures + len(pixels)
            rec = {"step": step, "updates": updates, "seconds": round(seconds, 3), "loss": round(fresh_loss, 4),
                   "lr": lr, "grad_norm": round(float(gnorm), 4), "pictures_per_s": round(len(pixels) / step_time, 1)}
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"vision pre-training loss became {rec['loss']} at step {step}; lower --lr.")
            if time.perf_counter() - last_eval > vc.eval_every * 60:
                net.eval()
                rec["held_out"] = evaluate(net, heads, data, device)
                net.train()
                evals.append(rec["held_out"])
                print(f"step {step} ({seconds:.0f} s, {pictures:,} pictures, {updates} updates): loss {rec['loss']:.3f}; "
                      f"{summary(rec['held_out'])}", flush=True)
                last_eval = time.perf_counter()
            logf.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.update(1 if vc.max_steps else max(0, int(time.perf_counter() - t_start) - bar.n))
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
    feeder.stop()
    if bar is not None:
        bar.close()
    net.eval()
    final = evaluate(net, heads, data, device)
    print(f"final ({step} steps, {updates} updates, {pictures:,} pictures, {seconds:.0f} s): {summary(final)}",
          flush=True)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    command = "python -m msa_lab.vision_pretrain " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"steps": step, "seconds": round(seconds, 1), "tokens": 0, "device": dev_name, "command": command,
              "torch": torch.__version__, "vision_pretrain": {"pictures": pictures, "updates": updates,
                                                              "replay": vc.replay, "tasks": vc.tasks,
                                                              "eval_seed": vc.eval_seed, "held_out": final},
              "log": str(log_path)}
    if prev:
        chain_onto(record, prev, f"vision pre-training, no text ({vc.tasks}; {pictures:,} pictures, "
                                 f"{updates:,} updates; {dev_name})")
    save_checkpoint(net, out_dir, train=record)
    save_patch_heads(heads, out_dir, cfg.name)
    result = {"steps": step, "updates": updates, "replay": vc.replay, "pictures": pictures,
              "seconds": round(seconds, 1), "device": dev_name,
              "config": net.cfg.to_dict(), "held_out": final, "evals": evals, "eval_seed": vc.eval_seed,
              "classes": {h: len(patch_classes()[h]) for h in PATCH_HEADS}}
    (out_dir / "vision_eval.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def parse_args(argv: Optional[List[str]] = None) -> VisionConfig:
    d = VisionConfig()
    ap = argparse.ArgumentParser(prog="python -m msa_lab.vision_pretrain", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=d.model, choices=["msa-tiny", "dense-200k"])
    ap.add_argument("--init-from", default=None, metavar="DIR", help="checkpoint directory to start from")
    for f, meta in (("image_size", "PIXELS"), ("patch_size", "PIXELS"), ("patch_pool", "FACTOR"),
                    ("patch_stem", "CHANNELS"), ("vision_layers", "N"), ("pointer_dim", "WIDTH")):
        ap.add_argument("--" + f.replace("_", "-"), type=int, default=None, metavar=meta,
                        help=f"ModelConfig.{f} (default: the warm start's), as in msa_lab.train")
    ap.add_argument("--stem-scope", default=None, choices=["patch", "image"],
                    help="ModelConfig.stem_scope (default: the warm start's), as in msa_lab.train")
    ap.add_argument("--minutes", type=float, default=d.minutes)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=d.batch, help="pictures per step")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    ap.add_argument("--tasks", default=d.tasks, help="name:weight,... of " + ", ".join(VISION_TASKS))
    ap.add_argument("--plain-loss", dest="balanced", action="store_false",
                    help="one mean over all patches per head (default: things and background weigh the same)")
    ap.add_argument("--replay", type=int, default=d.replay,
                    help="gradient steps per drawn batch: the fresh one, then replay - 1 recent ones at random (1 = off)")
    ap.add_argument("--replay-batches", type=int, default=d.replay_batches,
                    help="how many recent batches --replay picks from (kept on the device)")
    ap.add_argument("--workers", type=int, default=None, help="drawing processes (default: 0 on a CPU, 14 on a GPU)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--eval-n", type=int, default=d.eval_n, help="held-out pictures per task")
    ap.add_argument("--eval-seed", type=int, default=d.eval_seed)
    ap.add_argument("--eval-every", type=float, default=d.eval_every, help="minutes between held-out evals")
    ap.add_argument("--out-dir", default=d.out_dir)
    ap.add_argument("--device", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU config (a few steps; for tests)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    vc = VisionConfig(**vars(ap.parse_args(argv)))
    for f in ("batch", "eval_n", "replay", "replay_batches"):
        if getattr(vc, f) <= 0:
            raise SystemExit(f"--{f.replace('_', '-')} must be > 0, got {getattr(vc, f)}")
    if vc.workers is not None and vc.workers < 0:
        raise SystemExit(f"--workers must be >= 0 (0 = draw in this process), got {vc.workers}")
    if vc.smoke:
        vc = dataclasses.replace(vc, device=vc.device or "cpu", max_steps=vc.max_steps or 4, batch=min(vc.batch, 8),
                                 eval_n=min(vc.eval_n, 8), workers=vc.workers or 0,
                                 vision_layers=1 if vc.vision_layers is None else vc.vision_layers)
    return vc


def main(argv: Optional[List[str]] = None) -> int:
    vc = parse_args(argv)
    out = run(vc, argv)
    print(json.dumps({k: out[k] for k in ("steps", "pictures", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
