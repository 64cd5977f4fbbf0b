"""At 4K tokens and k = 16: how much of the dense attention mass lies outside the blocks msa-tiny's indexer picks,
and how much of that missed mass is recent (2-7 blocks before the query's own block). A recency bias in the block
scores could only recover the recent part. Run: python scripts/recall_missed_probe.py (CPU, about a minute).
"""
import numpy as np
from msa_lab import load_model
from msa_lab.eval import _examples, selecting_top_k
m = load_model("msa-tiny", device="cpu")
L = 4096
ex = next(iter(_examples("niah_single", 1, 0, length=L)))
with selecting_top_k(m, 16):
    cap = m.capture(ex["prompt"], dense_limit=L + 16)
bs = cap.block_size
tot_missed, near_missed, captured = 0, 0, 0
for layer, (sel, mass) in enumerate(zip(cap.selected, cap.block_mass)):
    G, N, nb = mass.shape
    picked = np.zeros_like(mass, dtype=bool)
    for g in range(G):
        idx = sel[g]  # [N, K]
        rows = np.repeat(np.arange(N)[:, None], idx.shape[1], 1)
        ok = idx >= 0
        picked[g, rows[ok], idx[ok]] = True
    qb = np.arange(N) // bs
    dist = qb[:, None] - np.arange(nb)[None, :]
    missed = mass * (~picked)
    tot_missed += missed.sum(); near_missed += (missed * ((dist >= 2) & (dist <= 7))[None]).sum(); captured += (mass * picked).sum()
print(f"4K, k=16: share of dense mass missed {tot_missed / (tot_missed + captured):.3f}; of the missed mass, "
      f"{near_missed / tot_missed:.2f} lies 2-7 blocks before the query's own block")
