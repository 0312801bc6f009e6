"""Triton backend plumbing: lazy kernel imports, availability, and a whole layer on the triton path."""

import os
import subprocess
import sys

import torch

import zoo.ops as ops
from zoo.layers.partition_attention import PartitionAttention
from zoo.layers.pos_bias import RelPosBias
from zoo.ops import triton as zt


def test_import_zoo_never_imports_kernels():
    code = (
        "import sys, zoo, zoo.ops, zoo.layers; "
        "bad = [m for m in sys.modules if m.startswith('zoo.ops.triton.')]; "
        "assert not bad, bad; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_available_reports_the_interpreter():
    assert zt.interpreting() or torch.cuda.is_available()
    assert zt.available()
    assert zt.available("cpu") == zt.interpreting()
    status = ops.backend_status()["triton"]
    assert status[0]


def test_partition_attention_layer_with_padding_on_triton():
    """MaxViT-style block attention with a learnable table on a map that needs padding (table + padding
    mask summed: a per-group bias), forward and parameter gradients equal to the reference path."""
    torch.manual_seed(0)
    m = PartitionAttention(8, 2, "window", 3, pos_bias=RelPosBias(3, 2), pos_bias_name="rel_pos")
    torch.nn.init.normal_(m.rel_pos.relative_position_bias_table)
    x = torch.randn(1, 5, 4, 8)
    res = {}
    for backend in ("reference", "triton"):
        m.zero_grad()
        with ops.use_backend(backend):
            out = m(x)
        assert ops.last_path("attention") == backend
        out.square().sum().backward()
        res[backend] = (out, [p.grad.clone() for p in m.parameters()])
    torch.testing.assert_close(res["triton"][0], res["reference"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(res["triton"][1], res["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
