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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu test: no CUDA device here (run scripts/device_run.sh on an H100/H200)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
