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


def test_shipped_msa_tiny_does_not_copy():
    """The contrast that makes the test above mean something: the shipped model (no copy curriculum)."""
    shipped = load_model("msa-tiny", device="cpu")
    assert E.copy_scores(shipped, "copy_lines", length=768, n=2, mode="dense")["copied_acc"] < 0.3
