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


# ---------------------------------------------------------------------------- concentration loss
def _index_inputs(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    iq = torch.randn(1, 2, n, cfg.index_dim, generator=g)
    ik = torch.randn(1, 1, n, cfg.index_dim, generator=g)
    return iq, ik


def test_selection_mask_is_what_select_blocks_keeps():
    """selection_mask from index_block_logits == reference.select_blocks at top_k = k, at every query and for
    k below, at and above the number of visible blocks."""
    from msa_lab.model.indexer import index_block_logits, selection_mask

    cfg = small_config().msa_config()
    n = 77
    iq, ik = _index_inputs(cfg, n)
    slots = torch.arange(n)
    scores = index_block_logits(iq, ik, slots, cfg)
    for k in (3, 4, 6, 20):
        got = selection_mask(scores, slots, n, cfg, k)
        idx = reference.select_blocks(iq, ik, cfg.replace(top_k=k)).long()
        nb = got.shape[-1]  # -1 padding goes to a spare column
        want = torch.zeros(*got.shape[:-1], nb + 1, dtype=torch.bool).scatter_(-1, torch.where(idx < 0, nb, idx), True)
        assert torch.equal(got, want[..., :nb]), k
        assert bool((got.sum(-1) == torch.clamp((slots // cfg.block_size + 1), max=k)).all())


def test_concentration_loss_is_minus_log_recall_per_head():
    """With one query head per group, the loss is -mean log(recall) of the reference block mass; it is 0 when
    every visible block is selected and grows as the mass leaves the selected blocks."""
    from msa_lab.model.indexer import concentration_loss, selection_mask

    cfg = small_config().msa_config()
    n, D = 64, cfg.head_dim
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, n, D), torch.randn(1, 2, n, D)
    slots = torch.arange(n)
    scores = torch.randn(1, 2, n, cfg.num_blocks(n))
    sel = selection_mask(scores, slots, n, cfg, 4)
    mass = reference.block_attention_mass(q, k, cfg)  # [1, 2, n, nb], one head per group
    want = -torch.log((mass * sel).sum(-1)).mean()
    got = concentration_loss(q, k, slots, sel, cfg)
    assert torch.allclose(got, want.float(), rtol=1e-5, atol=1e-6), (got, want)
    assert got > 0.05
    everything = selection_mask(scores, slots, n, cfg, cfg.num_blocks(n))
    assert concentration_loss(q, k, slots, everything, cfg).abs() < 1e-6
    # grouped heads: the mean of each head's own -log mass, not -log of the group's mean
    q4 = torch.randn(1, 4, n, D)
    per_head = torch.stack([-torch.log((reference.block_attention_mass(q4[:, h:h + 1], k[:, h // 2:h // 2 + 1], cfg)
                                        * sel[:, h // 2:h // 2 + 1]).sum(-1)).mean() for h in range(4)]).mean()
    assert torch.allclose(concentration_loss(q4, k, slots, sel, cfg), per_head.float(), rtol=1e-5, atol=1e-6)


def test_concentration_loss_trains_the_main_branch_only():
    """Through a training forward: the concentration loss sends gradient to q/k projections (main branch), none
    to the indexer (whose selection it only reads), and one step of it raises the mass on the selected blocks."""
    torch.manual_seed(0)
    net = MSATransformer(small_config())
    net.backend = "torch"
    ids = torch.randint(0, 256, (2, 64))

    def conc():
        aux = {"kl_slots": torch.arange(20, 64), "concentration_k": 3,
               "concentration_rows": torch.arange(0, 44, 2)}
        net(ids, mode="train_sparse", aux=aux)
        assert len(aux["concentration"]) == net.cfg.n_layers
        return torch.stack(aux["concentration"]).mean()

    loss = conc()
    idx, main = _grads(net, loss)
    assert idx == set() and any(".wq." in n for n in main) and any(".wk." in n for n in main)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    opt.step()
    assert conc() < loss.detach()
