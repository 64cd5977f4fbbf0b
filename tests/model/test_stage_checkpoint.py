"""The copy-curriculum stage checkpoint (data/checkpoints/stages/msa-tiny-copy): the warm start for the
next training run. It must keep what made it worth committing: it copies a line from far back, and
msa-tiny's indexer picks the source blocks (the sparse path scores as well as the dense one)."""
import pytest
import torch

from msa_lab import eval as E
from msa_lab.api import load_model
from msa_lab.model.checkpoint import REPO_ROOT

pytestmark = pytest.mark.usefixtures("torch_path_models")
STAGE = REPO_ROOT / "data" / "checkpoints" / "stages" / "msa-tiny-copy"


@pytest.fixture(scope="module")
def stage():
    torch.set_num_threads(2)
    return load_model("msa-tiny", device="cpu", checkpoint_dir=STAGE)


@pytest.mark.parametrize("mode", ["dense", "msa"])
def test_stage_copies_lines_from_far_back(stage, mode):
    r = E.copy_scores(stage, "copy_lines", length=768, n=2, mode=mode)
    assert r["copied_acc"] > 0.95, r  # chance: 1/36


def test_the_same_network_untrained_does_not_copy(stage):
    """The contrast that makes the test above mean something: the stage's config at random init. (The
    shipped msa-tiny of 2026-11-27 scores 0.02 here too: it was trained without the copy curriculum.)"""
    from msa_lab.api import Model

    untrained = Model.from_config(stage.config)
    assert E.copy_scores(untrained, "copy_lines", length=768, n=2, mode="dense")["copied_acc"] < 0.1


def test_dense_200k_warm_starts_from_the_msa_stage_and_copies_the_same():
    """dense-200k is msa-tiny's backbone with dense attention: --init-model msa-tiny hands it the stage's
    main branch (index projections dropped), so it computes msa-tiny's dense-mode logits exactly."""
    from msa_lab import train as T
    from msa_lab.api import Model
    from msa_lab.model.checkpoint import load_checkpoint
    from msa_lab.model.net import MSATransformer

    tc = T.TrainConfig(model="dense-200k", init_from=str(STAGE), init_model="msa-tiny")
    cfg = T.build_model_config(tc)
    assert cfg.token_conv == 4 and not cfg.sparse and cfg.max_context == 204_800
    net = MSATransformer(cfg)
    T.warm_start(net, str(STAGE), "msa-tiny")
    src, _ = load_checkpoint("msa-tiny", STAGE, device="cpu")
    ids = torch.randint(0, 256, (1, 200))
    with torch.no_grad():
        torch.testing.assert_close(net.float()(ids, mode="train_dense"), src.float()(ids, mode="train_dense"))
    assert E.copy_scores(Model(net), "copy_lines", length=768, n=2, mode="dense")["copied_acc"] > 0.95
    with pytest.raises(ValueError, match="differs from this run's"):
        T.warm_start(MSATransformer(cfg.replace(d_ff=cfg.d_ff * 2)), str(STAGE), "msa-tiny")
    with pytest.raises(SystemExit, match="pass --init-from too"):
        T.parse_args(["--model", "dense-200k", "--init-model", "msa-tiny"])
