"""CPU probe: how fast does a 2-layer model form an induction (content-based copy) mechanism?

    python scripts/induction_probe.py [--conv 2] [--seg 20,28] [--model msa|reference] [--steps 1000]

Each sequence is LENGTH random symbols (VOCAB of them) in which a segment of SEG tokens appears twice,
at random, non-overlapping positions. No fixed offset solves it, unlike scripts/copy_task_probe.py.
The loss is on the second occurrence after its first token; chance is ln VOCAB.
--model msa is this project's backbone (MSATransformer, dense mode, d 128, 2 layers) with
ModelConfig.token_conv = --conv (0 = off). --model reference is a plain GPT-2-style block
(LayerNorm, learned absolute positions, GELU MLP), the control for "is the backbone at fault?".
Logs of the 2026-11-27 runs: data/train/probes/induction-2026-11-27/.
"""
import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from msa_lab.model.config import small_config  # noqa: E402
from msa_lab.model.net import MSATransformer  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--vocab", type=int, default=16)
ap.add_argument("--length", type=int, default=64)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--conv", type=int, default=0)
ap.add_argument("--seg", default="6,12", help="min,max segment length")
ap.add_argument("--model", default="msa", choices=["msa", "reference"])
ap.add_argument("--steps", type=int, default=1000)
ap.add_argument("--d", type=int, default=128, help="model width (msa-tiny: 256)")
ap.add_argument("--layers", type=int, default=2, help="msa-tiny: 8")
ap.add_argument("--heads", default="4,4", help="query,kv heads (msa-tiny: 8,2)")
ap.add_argument("--warm-length", type=int, default=0, help="train the first --warm-steps steps at this length")
ap.add_argument("--warm-steps", type=int, default=0)
ap.add_argument("--wd", type=float, default=0.0, help="AdamW weight decay (the trainer: 0.1)")
a = ap.parse_args()
seg_min, seg_max = (int(x) for x in a.seg.split(","))
torch.set_num_threads(1)
torch.manual_seed(0)
D = a.d
HQ, HKV = (int(x) for x in a.heads.split(","))


class RefBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.o = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, N, 3, 4, D // 4).permute(2, 0, 3, 1, 4)
        x = x + self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, N, D))
        return x + self.mlp(self.n2(x))


class RefGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(256, D), nn.Embedding(a.length, D)
        self.blocks = nn.ModuleList([RefBlock(), RefBlock()])
        self.norm, self.head = nn.LayerNorm(D), nn.Linear(D, 256)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


if a.model == "reference":
    net = RefGPT()
    forward = net
else:
    net = MSATransformer(small_config("dense", name="probe", d_model=D, n_layers=a.layers, d_ff=2 * D, n_heads=HQ,
                                      n_kv_heads=HKV, head_dim=D // HQ, index_dim=16, block_size=16, top_k=4, rope_dims=16,
                                      token_conv=a.conv))
    forward = lambda ids: net(ids, mode="train_dense")  # noqa: E731
opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.wd)


def batch(n: int, seed: int, length: int = a.length):
    rng = random.Random(seed)
    ids = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        seq = [rng.randrange(a.vocab) + 65 for _ in range(length)]
        s = rng.randint(seg_min, seg_max)
        x = rng.randrange(0, length - 2 * s)
        y = rng.randrange(x + s, length - s + 1)
        seq[y:y + s] = seq[x:x + s]
        ids[i] = torch.tensor(seq)
        mask[i, y + 1:y + s] = True
    return ids, mask


def copy_loss(ids, mask):
    logits = forward(ids)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    m = mask[:, 1:]
    return (ce.view(ids.shape[0], -1) * m).sum() / m.sum()


ev = batch(256, 10**6)
print(f"{a.model} conv={a.conv} vocab={a.vocab} L={a.length} seg={a.seg} batch={a.batch} lr={a.lr} d={D} "
      f"layers={a.layers} heads={HQ},{HKV} wd={a.wd} warm={a.warm_steps}@{a.warm_length}; "
      f"chance {math.log(a.vocab):.3f}", flush=True)
t0 = time.time()
for step in range(a.steps):
    loss = copy_loss(*batch(a.batch, step, a.warm_length if step < a.warm_steps else a.length))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if (step + 1) % 50 == 0:
        with torch.no_grad():
            print(step + 1, round(copy_loss(*ev).item(), 3), f"{time.time() - t0:.0f}s", flush=True)  # at --length
