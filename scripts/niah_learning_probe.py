"""CPU probe: how fast does a small byte-level model (4 layers, d 128) learn NIAH retrieval under a recipe?

    python scripts/niah_learning_probe.py RECIPE [STEPS] [LENGTH]

RECIPE is a name whose parts switch things on: "prope" partial RoPE, "copy"/"copy2" random-string copy
batches (1 in 4 / 2 in 4), "mq" 2-needle multi-query batches, "pw1" full prompt loss, "prefix" an
answer prefix in the prompt, "anskey" keyed answers ("<key> is: <value>"), "synth" synthetic-filler
haystacks (training only), "mqkN" N-needle multi-query batches, "conv" ModelConfig.token_conv=4. Every 50 steps it prints the eval answer
loss and teacher-forced exact match on 64 held-out real-haystack single-needle examples (and, with the
synthetic eval, on synthetic filler). Logs of the 2026-11-27 runs: data/train/probes/.
"""
import json, random, sys, time
import torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from msa_lab.model.config import small_config
from msa_lab.model.net import MSATransformer
from msa_lab.model.tokens import PAD, encode_example
from msa_lab.tasks import iter_task

torch.set_num_threads(1)
recipe = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 400
L = int(sys.argv[3]) if len(sys.argv) > 3 else 384
cfg = small_config("dense", name="exp", d_model=128, n_layers=4, d_ff=384, n_heads=4, n_kv_heads=2, head_dim=32,
                   index_dim=16, block_size=64, top_k=8, rope_dims=16 if "prope" in recipe else 32,
                   token_conv=4 if "conv" in recipe else 0)
torch.manual_seed(0)
net = MSATransformer(cfg)
opt = torch.optim.AdamW([{"params": [p for n, p in net.named_parameters() if "token_conv" not in n]},
                         {"params": [p for n, p in net.named_parameters() if "token_conv" in n], "weight_decay": 0.0}],
                        lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)

def niah_batch(n, seed, task="niah_single", synth=False, **kw):
    exs = list(iter_task(task, n, seed, length=L, split="train", synthetic_filler=synth, **kw))
    if "anskey" in recipe and task in ("niah_single", "niah_multi_query"):
        from msa_lab.tasks.niah import keyed_answer
        for ex in exs:
            ex["answer"] = keyed_answer(ex)
    if "prefix" in recipe and task == "niah_single":
        for ex in exs:
            key = json.loads(ex["meta"])["needles"][0]["key"]
            ex["prompt"] = ex["prompt"] + f" The special magic number for {key} is:"
    return encode(exs)

def encode(exs):
    encs, masks = [], []
    for ex in exs:
        e, m = encode_example(ex["prompt"], [], ex["answer"], image_size=16, patch_size=8)
        encs.append(e.ids); masks.append(m)
    n = max(len(e) for e in encs)
    ids = torch.full((len(encs), n), PAD); am = torch.zeros(len(encs), n, dtype=torch.bool)
    for i, (e, m) in enumerate(zip(encs, masks)):
        ids[i, :len(e)] = e; am[i, :len(e)] = m
    return ids, am

def copy_batch(n, seed):
    """Random byte strings repeated: loss on the second copy (pure induction signal)."""
    rng = random.Random(seed)
    ids = torch.full((n, L), PAD); am = torch.zeros(n, L, dtype=torch.bool)
    for i in range(n):
        seg = [rng.randrange(32, 127) for _ in range(rng.randint(16, 64))]
        pre = [rng.randrange(32, 127) for _ in range(rng.randint(0, L - 2 * len(seg) - 2))]
        seq = pre + seg
        gap = [rng.randrange(32, 127) for _ in range(rng.randint(0, L - len(seq) - len(seg) - 1))]
        seq = seq + gap + seg
        ids[i, :len(seq)] = torch.tensor(seq)
        am[i, len(seq) - len(seg) + 1:len(seq)] = True  # first byte of the copy is not predictable
    return ids, am

def loss_of(ids, am, pw):
    logits = net(ids, mode="train_dense")
    tgt = ids[:, 1:]; ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none").view_as(tgt)
    a = am[:, 1:]; lm = (ce * a).sum() / a.sum().clamp(min=1)
    pm = (~a) & (tgt != PAD)
    return lm + pw * (ce * pm).sum() / pm.sum().clamp(min=1), lm, logits

ev_ids, ev_am = niah_batch(64, 999999, task="niah_single")
ev2 = niah_batch(64, 999998, task="niah_single", synth=True)
pw = 1.0 if "pw1" in recipe else 0.1
t0 = time.time(); hist = []
for step in range(steps):
    r = step % 4
    if "mqk" in recipe and r != 3:
        ids, am = niah_batch(16, step, task="niah_multi_query", num_needles=int(recipe.split("mqk")[1][0]))
    elif ("copy2" in recipe and r in (0, 2)) or ("copy" in recipe and r == 0):
        ids, am = copy_batch(16, step)
    elif "mq" in recipe and r in (1, 3):
        ids, am = niah_batch(16, step, task="niah_multi_query", num_needles=2)
    else:
        ids, am = niah_batch(16, step, synth="synth" in recipe and (step < 300 or r != 3))
    lr = 2e-3 * min(1, (step + 1) / 30)
    for g in opt.param_groups: g["lr"] = lr
    loss, lm, _ = loss_of(ids, am, pw)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0); opt.step()
    if (step + 1) % 50 == 0:
        with torch.no_grad():
            _, elm, lg = loss_of(ev_ids, ev_am, 0)
            a = ev_am[:, 1:]; pred = lg[:, :-1].argmax(-1)
            ok = ((pred == ev_ids[:, 1:]) | ~a).all(-1).float().mean().item()
            tgt = ev_ids[:, 1:]; dig = a & (tgt >= 48) & (tgt <= 57)  # the needle's digits: retrieval only
            dce = F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none")
            digit_loss = dce.view_as(tgt)[dig].mean().item()
            _, elm2, lg2 = loss_of(ev2[0], ev2[1], 0)
            a2 = ev2[1][:, 1:]; ok2 = ((lg2[:, :-1].argmax(-1) == ev2[0][:, 1:]) | ~a2).all(-1).float().mean().item()
            print(f"   synthetic-filler eval: loss {elm2.item():.3f} exact {ok2:.2f}", flush=True)
        hist.append((step + 1, round(elm.item(), 3), round(ok, 3)))
        print(recipe, step + 1, f"eval answer loss {elm.item():.3f} digit loss {digit_loss:.3f} exact {ok:.2f} "
              f"t {time.time()-t0:.0f}s", flush=True)
print(json.dumps(hist))
