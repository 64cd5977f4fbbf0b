"""Is the written word of an image-QA "word" picture decodable from msa-tiny's vision encoder? A linear probe on
the encoder's final hidden state pooled over the image's patches (mean and max), trained on 1,500 pictures and
tested on 400 others (training seeds, never the eval's); raw pixel patches pooled the same way for comparison.
Word answers stay at chance (ln 30 per answer) in every vision run; this asks whether the encoder has the word.

    python scripts/word_probe.py [CHECKPOINT_DIR]     (CPU, about a minute)
"""
import itertools
import sys

import torch
import torch.nn.functional as F

from msa_lab import load_model
from msa_lab.model.vision import prepare_image
from msa_lab.tasks.image_qa import iter_image_qa


def features(net, cfg, seed: int, n: int):
    """(encoder features [n, 2d], pixel features [n, 2 * patch_dim], words) of n word pictures."""
    enc, pix, words = [], [], []
    for ex in itertools.islice(iter_image_qa(n, seed=seed, kinds=("word",)), n):
        p = prepare_image(ex["images"][0], cfg.image_size).patches(cfg.patch_size)  # [P, patch_dim]
        slot = torch.arange(p.shape[0])
        with torch.no_grad():
            _, hidden = net.vision(net.patch_proj(p) + net.patch_pos(slot), slot)  # [P, d]
        enc.append(torch.cat([hidden.mean(0), hidden.amax(0)]))
        pix.append(torch.cat([p.mean(0), p.amin(0)]))
        words.append(ex["answer"])
    return torch.stack(enc), torch.stack(pix), words


def probe(train_x, test_x, train_y, test_y, n_classes: int):
    """(test accuracy, train accuracy) of a standardised, L2-regularised linear classifier (400 Adam steps)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    w = torch.zeros(train_x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        loss = F.cross_entropy(train_x @ w + b, train_y) + 1e-3 * (w ** 2).sum()
        loss.backward()
        opt.step()
    acc = lambda x, y: ((x @ w + b).argmax(1) == y).float().mean().item()  # noqa: E731
    return acc(test_x, test_y), acc(train_x, train_y)


def main() -> None:
    torch.manual_seed(0)
    model = load_model("msa-tiny", "cpu", checkpoint_dir=sys.argv[1] if len(sys.argv) > 1 else None)
    enc_a, pix_a, words_a = features(model.net, model.config, 2**20 + 7, 1500)
    enc_b, pix_b, words_b = features(model.net, model.config, 2**20 + 8, 400)
    vocab = sorted(set(words_a))
    ya = torch.tensor([vocab.index(w) for w in words_a])
    yb = torch.tensor([vocab.index(w) if w in vocab else -1 for w in words_b])
    print("words", len(vocab), "chance", 1 / len(vocab))
    print("encoder hidden (mean+max pool): test/train acc", probe(enc_a, enc_b, ya, yb, len(vocab)))
    print("raw patches (mean+min pool): test/train acc", probe(pix_a, pix_b, ya, yb, len(vocab)))


if __name__ == "__main__":
    main()
