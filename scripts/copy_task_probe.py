"""CPU probe: can the backbone learn pure copying (induction)? A 2-layer d 64 model on random 64-letter
segments repeated once, loss on the copy. `python scripts/copy_task_probe.py ROPE_DIMS` (16 of 16 = full RoPE).
2026-11-27, ROPE_DIMS 16: loss 3.26 at step 50, 0.038 at 150, 0.003 at 400.
Caveat (found later that day): the copy always starts exactly 64 tokens after the original, which RoPE
solves with a fixed relative offset, so this does not show content-based copying (induction); see
scripts/induction_probe.py and data/train/probes/gpu-sweeps-2026-11-27/README.md."""
import random, sys, time, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from msa_lab.model.config import small_config
from msa_lab.model.net import MSATransformer
torch.set_num_threads(1); torch.manual_seed(0)
L = 128
cfg = small_config("dense", name="exp", d_model=64, n_layers=2, d_ff=128, n_heads=4, n_kv_heads=2, head_dim=16,
                   index_dim=16, block_size=16, top_k=4, rope_dims=int(sys.argv[1]))
net = MSATransformer(cfg)
opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
def batch(n, seed):
    rng = random.Random(seed); ids = torch.zeros(n, L, dtype=torch.long); m = torch.zeros(n, L, dtype=torch.bool)
    for i in range(n):
        seg = [rng.randrange(97, 123) for _ in range(L // 2)]
        ids[i] = torch.tensor(seg + seg); m[i, L // 2 + 1:] = True
    return ids, m
t0 = time.time()
for step in range(400):
    ids, m = batch(32, step)
    lg = net(ids, mode="train_dense")
    ce = F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").view(32, L - 1)
    loss = (ce * m[:, 1:]).sum() / m[:, 1:].sum()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 49: print(step + 1, round(loss.item(), 3), f"{time.time() - t0:.0f}s", flush=True)
