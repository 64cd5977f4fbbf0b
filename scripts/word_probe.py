"""Is the written word of an image-QA "word" picture decodable from msa-tiny's vision encoder? A linear probe on
the encoder's final hidden state pooled over the image's patches (mean and max), trained on 1,500 pictures and
tested on 400 others (training seeds, never the eval's); raw pixel patches pooled the same way for comparison.
Word answers stay at chance (ln 30 per answer) in every vision run; this asks whether the encoder has the word.

    python scripts/word_probe.py [CHECKPOINT_DIR]     (CPU, about a minute)
"""
import itertools, json, sys, torch
from msa_lab import load_model
from msa_lab.tasks.image_qa import iter_image_qa
from msa_lab.model.vision import prepare_image
torch.manual_seed(0)
m = load_model("msa-tiny", "cpu", checkpoint_dir=sys.argv[1] if len(sys.argv) > 1 else None)
net, cfg = m.net, m.config
def feats(seed, n):
    X, Y, Xp = [], [], []
    for ex in itertools.islice(iter_image_qa(n, seed=seed, kinds=("word",)), n):
        img = ex["images"][0]
        p = prepare_image(img, cfg.image_size).patches(cfg.patch_size)
        slot = torch.arange(p.shape[0])
        with torch.no_grad():
            pe = net.patch_proj(p) + net.patch_pos(slot)
            _, hid = net.vision(pe, slot)
        X.append(torch.cat([hid.mean(0), hid.amax(0)])); Xp.append(torch.cat([p.mean(0), p.amin(0)]))
        Y.append(ex["answer"])
    return torch.stack(X), torch.stack(Xp), Y
Xa, Pa, Ya = feats(2**20 + 7, 1500)
Xb, Pb, Yb = feats(2**20 + 8, 400)
words = sorted(set(Ya)); idx = {w: i for i, w in enumerate(words)}
ya = torch.tensor([idx[w] for w in Ya]); yb = torch.tensor([idx.get(w, -1) for w in Yb])
def probe(A, B):
    mu, sd = A.mean(0), A.std(0) + 1e-6
    A, B = (A - mu) / sd, (B - mu) / sd
    W = torch.zeros(A.shape[1], len(words), requires_grad=True); b = torch.zeros(len(words), requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(400):
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(A @ W + b, ya) + 1e-3 * (W ** 2).sum(); loss.backward(); opt.step()
    return ((B @ W + b).argmax(1) == yb).float().mean().item(), ((A @ W + b).argmax(1) == ya).float().mean().item()
print("words", len(words), "chance", 1 / len(words))
print("encoder hidden (mean+max pool): test/train acc", probe(Xa, Xb))
print("raw patches (mean+min pool): test/train acc", probe(Pa, Pb))
