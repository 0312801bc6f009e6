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


def test_torch_export_takes_the_reference_path_by_itself():
    """Under torch.export (also the dynamo ONNX exporter) the ops pick their export-safe path without the caller
    forcing a backend: the reference (SDPA with a learnable bias is mis-traced there); a forced sdpa is honoured."""

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(1, 2, 4, 4))

        def forward(self, q):
            return ops.attention(q, q, q, self.bias)

    q = torch.randn(1, 2, 4, 8)
    ops.attention(q, q, q, torch.zeros(1, 2, 4, 4))
    assert ops.last_path("attention") == "sdpa"  # eager default on CPU

    def has_sdpa(ep) -> bool:
        return any("scaled_dot_product" in str(n.target) for n in ep.graph.nodes)

    assert not has_sdpa(torch.export.export(Attn(), (q,)))
    with ops.use_backend("sdpa"):
        assert has_sdpa(torch.export.export(Attn(), (q,)))
