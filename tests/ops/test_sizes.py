"""zoo.ops.sizes: the one pair helper and the one set of "is a graph being captured?" answers."""

import numpy as np
import pytest
import torch

import zoo.ops as ops
from zoo.ops import sizes


def test_pair_repeats_normalises_plain_numbers_and_keeps_traced_sizes():
    assert ops.pair(3) == (3, 3)
    h, w = ops.pair([np.int64(2), 5])
    assert (h, w) == (2, 5) and type(h) is int
    t = torch.tensor(7)  # a size as the TorchScript ONNX exporter shows it
    h, w = ops.pair((t, 4))
    assert h is t and w == 4  # never int()-ed: that would bake the example size into the graph
    assert ops.pair(t)[0] is t


def test_pair_checks_length_and_positivity_of_plain_ints_only():
    with pytest.raises(ValueError, match=r"size must be an int or \(h, w\) pair, got \(1, 2, 3\)"):
        ops.pair((1, 2, 3))
    with pytest.raises(ValueError, match=r"Layer: window must be a positive int or \(h, w\) pair, got \(0, 2\)"):
        ops.pair((0, 2), name="Layer: window")
    assert ops.pair((0, 2)) == (0, 2)  # no name: no positivity rule (paddings, offsets)
    assert ops.pair(torch.tensor(0), name="Layer: window")[0].item() == 0  # traced: cannot be checked


def test_pair_keeps_symbolic_sizes_under_torch_export():
    seen = []

    class M(torch.nn.Module):
        def forward(self, x):
            h, w = ops.pair((x.shape[1], x.shape[2]))
            seen.append((type(h), type(w)))
            return x.new_zeros(h, w) + x.sum()

    dim = torch.export.Dim("h", min=2, max=64)
    torch.export.export(M(), (torch.randn(1, 5, 6),), dynamic_shapes=({1: dim},))
    assert seen[-1] == (torch.SymInt, int)


def test_capture_questions_outside_and_inside_each_kind_of_capture():
    assert not (ops.is_torchscript() or ops.is_tracing() or ops.is_capturing())
    assert sizes._in_onnx_export() is torch.onnx.is_in_onnx_export() is False
    seen = {}

    class M(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def forward(self, x):
            # first call only: torch.jit.trace runs the module again, untraced, to check the trace
            seen.setdefault(self.kind, (ops.is_torchscript(), ops.is_tracing(), ops.is_capturing(),
                                        sizes._in_onnx_export() == torch.onnx.is_in_onnx_export()))
            return x + 1

    x = torch.randn(2, 3)
    torch.jit.trace(M("jit"), (x,))
    torch.export.export(M("export"), (x,))
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(M("onnx"), (x,), io.BytesIO(), dynamo=False)
    assert seen["jit"] == (True, True, True, True)
    assert seen["export"] == (False, True, True, True)
    assert seen["onnx"] == (True, True, True, True)
