"""Triton kernel tests: without CUDA they run in Triton's interpreter on CPU.

``TRITON_INTERPRET=1`` must be set before a kernel module is imported (Triton reads it when ``@triton.jit``
runs). ``import zoo`` never imports the kernels, and pytest imports this conftest before the test modules of
this directory, so setting it here works even when ``pytest tests/ops`` collects other op tests first.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    from zoo.ops import triton as zt

    if zt.available("cuda" if torch.cuda.is_available() else "cpu"):
        return
    skip = pytest.mark.skip(reason="triton kernels cannot run here (no triton, or imported without the interpreter)")
    for item in items:
        if "tests/ops/triton" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
