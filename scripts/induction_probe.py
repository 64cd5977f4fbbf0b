"""CPU probe: does the backbone form a content-based copy (induction) mechanism, and from which data?

    python scripts/induction_probe.py HAYSTACK [STEPS] [LENGTH] [MODEL]

HAYSTACK: "random" (printable random bytes) or "python" (stdlib source). Each sequence holds one random
printable segment (12-40 bytes) twice, at random, non-overlapping positions, so no fixed offset solves it
(unlike scripts/copy_task_probe.py). The loss is taken on the second occurrence's bytes after its first.
Chance is ln 95 = 4.55 nats. MODEL: "small" (4 layers, d 128) or "tiny" (msa-tiny's backbone, dense
mode). Every 50 steps it prints the held-out copy loss, split into near (gap < LENGTH/4) and far.
"""
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from msa_lab.model.config import model_config, small_config  # noqa: E402
from msa_lab.model.net import MSATransformer  # noqa: E402
from msa_lab.tasks.haystack import HaystackSource  # noqa: E402

torch.set_num_threads(int(__import__("os").environ.get("PROBE_THREADS", "1")))
hay = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
L = int(sys.argv[3]) if len(sys.argv) > 3 else 256
which = sys.argv[4] if len(sys.argv) > 4 else "small"
if which == "tiny":
    cfg = model_config("msa-tiny").replace(attention="dense", name="probe")
else:
    cfg = small_config("dense", name="probe", d_model=128, n_layers=4, d_ff=384, n_heads=4, n_kv_heads=2,
                       head_dim=32, index_dim=16, block_size=64, top_k=8, rope_dims=16)
torch.manual_seed(0)
net = MSATransformer(cfg)
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
source = HaystackSource()


def sequence(rng: random.Random):
    seg = [rng.randrange(32, 127) for _ in range(rng.randint(12, 40))]
    if hay == "random":
        base = [rng.randrange(32, 127) for _ in range(L)]
    else:
        base = list(source.take(L, rng)[0])
    a = rng.randrange(0, L - 2 * len(seg))
    b = rng.randrange(a + len(seg), L - len(seg) + 1)
    base[a:a + len(seg)] = seg
    base[b:b + len(seg)] = seg
    mask = [False] * L
    for i in range(b + 1, b + len(seg)):
        mask[i] = True
    return base, mask, b - a


def batch(n: int, seed: int):
    rng = random.Random(seed)
    rows = [sequence(rng) for _ in range(n)]
    ids = torch.tensor([r[0] for r in rows])
    m = torch.tensor([r[1] for r in rows])
    return ids, m, torch.tensor([r[2] for r in rows])


def copy_loss(ids, m):
    logits = net(ids, mode="train_dense")
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return ce.view(ids.shape[0], -1), m[:, 1:]


ev_ids, ev_m, ev_gap = batch(64, 10**6)
t0 = time.time()
for step in range(steps):
    ids, m, _ = batch(16, step)
    ce, mm = copy_loss(ids, m)
    loss = (ce * mm).sum() / mm.sum()
    for g in opt.param_groups:
        g["lr"] = 1e-3 * min(1.0, (step + 1) / 50)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    if (step + 1) % 50 == 0:
        with torch.no_grad():
            ce, mm = copy_loss(ev_ids, ev_m)
        per = (ce * mm).sum(1) / mm.sum(1)
        near = ev_gap < L // 4
        print(f"{hay} {which} L={L} step {step + 1} copy loss {per.mean():.3f} "
              f"(near {per[near].mean():.3f}, far {per[~near].mean():.3f}) t {time.time() - t0:.0f}s", flush=True)
