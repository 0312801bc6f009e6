import pytest
import torch

import zoo.ops as ops
from zoo.ops import _dispatch


def test_explain_lists_backends_and_ops():
    text = ops.explain()
    for name in ops.BACKENDS:
        assert name in text
    assert "attention" in text
    status = ops.backend_status()
    assert status["reference"][0] and status["sdpa"][0]
    assert set(status) == set(ops.BACKENDS)


def test_use_backend_nests_and_restores():
    assert ops.forced_backend() is None
    with ops.use_backend("reference"):
        assert ops.forced_backend() == "reference"
        with ops.use_backend("sdpa"):
            assert ops.forced_backend() == "sdpa"
        assert ops.forced_backend() == "reference"
    assert ops.forced_backend() is None


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown backend"):
        with ops.use_backend("cudnn"):
            pass


def test_env_var_forces_backend(monkeypatch):
    q = k = v = torch.randn(1, 1, 4, 8)
    monkeypatch.setenv("ZOO_BACKEND", "reference")
    ops.attention(q, k, v)
    assert ops.last_path("attention") == "reference"
    monkeypatch.setenv("ZOO_BACKEND", "nope")
    with pytest.raises(ValueError, match="ZOO_BACKEND"):
        ops.attention(q, k, v)


def test_forced_backend_missing_for_op_falls_back():
    q = k = v = torch.randn(1, 1, 4, 8)
    with ops.use_backend("natten"):  # attention has no natten path: falls back to the CPU default
        ops.attention(q, k, v)
    assert ops.last_path("attention") == "sdpa"


def test_auto_on_cpu_picks_sdpa():
    q = k = v = torch.randn(1, 1, 4, 8)
    ops.attention(q, k, v)
    assert ops.last_path("attention") == "sdpa"
    impl = _dispatch.select("attention", torch.device("cpu"), torch.float32)
    assert impl.backend == "sdpa"
