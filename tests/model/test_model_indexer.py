"""Indexer training: KL target/logits semantics and the gradient split between indexer and main branch."""
import torch

from msa_lab import reference
from msa_lab.model import MSATransformer, small_config
from msa_lab.model.indexer import free_blocks, indexer_kl

torch.set_num_threads(1)


def test_free_blocks_are_visible_and_not_forced():
    cfg = small_config().msa_config()
    n = 70
    visible = torch.arange(cfg.num_blocks(n))[None] <= (torch.arange(n) // cfg.block_size)[:, None]
    want = ~reference.forced_blocks(n, n, cfg) & visible
    assert torch.equal(free_blocks(torch.arange(n), n, cfg), want)


def test_kl_is_zero_at_the_target_and_positive_elsewhere():
    torch.manual_seed(0)
    target = torch.softmax(torch.randn(1, 2, 5, 6), -1)
    keep = torch.ones(5, 6, dtype=torch.bool)
    keep[:, 0] = False
    keep[0] = False  # a row with nothing to rank is left out
    restricted = (target * keep) / (target * keep).sum(-1, keepdim=True)
    perfect = torch.log(restricted.clamp(min=1e-30)) + 3.0  # any constant shift is the same distribution
    assert indexer_kl(perfect, target, keep).abs() < 1e-5
    assert indexer_kl(torch.randn(1, 2, 5, 6), target, keep) > 1e-3
    none = torch.zeros(5, 6, dtype=torch.bool)
    assert indexer_kl(torch.randn(1, 2, 5, 6), target, none) == 0


def _grads(net, loss):
    net.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    idx = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0 and ".wi" in n}
    main = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0 and ".wi" not in n}
    return idx, main


def _kl_and_lm(net, mode):
    """The indexer's KL loss and the LM loss of one training forward on random ids."""
    ids = torch.randint(0, 256, (2, 64))
    aux = {"kl_slots": torch.arange(20, 64)}
    logits = net(ids, mode=mode, aux=aux)
    return torch.stack(aux["kl"]).mean(), torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])


def test_kl_trains_only_the_indexer_and_lm_loss_only_the_main_branch():
    torch.manual_seed(0)
    net = MSATransformer(small_config())
    net.backend = "torch"
    for mode in ("train_dense", "train_sparse"):
        kl, lm = _kl_and_lm(net, mode)
        idx_kl, main_kl = _grads(net, kl)
        assert main_kl == set() and len(idx_kl) == 2 * net.cfg.n_layers  # wiq, wik of every layer
        idx_lm, main_lm = _grads(net, lm)
        assert idx_lm == set() and "embed.weight" in main_lm


def test_token_conv_taps_learn_from_their_own_branch_only():
    """With TokenConv, the KL loss reaches the index paths' taps (and wiq, wik) but not the main paths'
    taps, and the LM loss the reverse: the indexer still sends no gradient into the trunk."""
    torch.manual_seed(0)
    net = MSATransformer(small_config(token_conv=3))
    net.backend = "torch"
    for mode in ("train_dense", "train_sparse"):
        kl, lm = _kl_and_lm(net, mode)
        for loss, paths_with, paths_without in ((kl, [3, 4], [0, 1, 2]), (lm, [0, 1, 2], [3, 4])):
            net.zero_grad(set_to_none=True)
            loss.backward(retain_graph=True)
            for layer in net.layers:
                g = layer.attn.token_conv.weight.grad
                assert g is not None and g[paths_without].abs().sum() == 0
                assert all(g[p].abs().sum() > 0 for p in paths_with), (mode, loss is kl, layer.attn.layer)
