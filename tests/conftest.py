"""Test-session setup.

Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET must be set before triton
is first imported, so it is set here, ahead of every test module. On a CUDA machine it is left
alone so the `gpu` tests compile real kernels.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Decorate the kernels now, in this mode. @triton.jit picks interpreter or compiled at decoration time, and
# the torch_path_models fixture below sets TRITON_INTERPRET=0 for a test: were msa_lab.kernels first
# imported inside such a test, every later kernel call would look for a GPU driver ("0 active drivers"),
# which broke e.g. `pytest tests/model/test_stage_checkpoint.py tests/test_readme.py`.
import msa_lab.kernels  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu test: no CUDA device here (run scripts/device_run.sh on an H100/H200)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def torch_path_models(monkeypatch):
    """Run whole models on the torch path, not the Triton interpreter this file turns on.

    The interpreter is for the kernel tests at small shapes: a 1K-token forward of the shipped
    msa-tiny through it takes minutes on a 2-core CPU. Subprocesses started by a test inherit this.
    """
    monkeypatch.setenv("TRITON_INTERPRET", "0")
