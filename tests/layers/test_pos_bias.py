from functools import partial

import pytest
import torch
import torch.nn.functional as F
from timm.layers import RelPosBias as TimmRelPosBias
from timm.layers import RelPosBiasTf
from timm.layers import resize_rel_pos_bias_table as timm_resize
from timm.models.maxxvit import AttentionCl, grid_partition, grid_reverse, window_partition, window_reverse
from torch import nn

import zoo.ops as ops
from zoo.layers import PartitionAttention, RelPosBias, resize_rel_pos_bias_table, resize_rel_pos_bias_tables

# timm's RegularGridInterpolator (the reference) warns about its own indexing
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*non-contiguous"),
    pytest.mark.filterwarnings("ignore:Using a non-tuple sequence"),
]


def _brute_bias(table, window, layout):
    """Independent formula: loop over query/key coordinates."""
    wh, ww = window
    n = wh * ww
    heads = table.shape[0] if layout == "tf" else table.shape[1]
    out = torch.empty(heads, n, n, dtype=table.dtype)
    for qi in range(n):
        qr, qc = divmod(qi, ww)
        for ki in range(n):
            kr, kc = divmod(ki, ww)
            if layout == "tf":  # key minus query, [heads, 2wh-1, 2ww-1]
                out[:, qi, ki] = table[:, kr - qr + wh - 1, kc - qc + ww - 1]
            else:  # query minus key, [(2wh-1)(2ww-1), heads]
                out[:, qi, ki] = table[(qr - kr + wh - 1) * (2 * ww - 1) + (qc - kc + ww - 1)]
    return out


@pytest.mark.parametrize("window", [(7, 7), (3, 5), (1, 4)])
def test_tf_layout_bit_exact_with_timm(window):
    torch.manual_seed(0)
    ref = RelPosBiasTf(window, 3)
    nn.init.normal_(ref.relative_position_bias_table)
    m = RelPosBias(window, 3, layout="tf")
    m.load_state_dict(ref.state_dict(), strict=True)
    out = m(window)
    assert out.shape == (3, window[0] * window[1], window[0] * window[1])
    assert torch.equal(out, ref.get_bias())
    assert torch.equal(out, _brute_bias(m.relative_position_bias_table.detach(), window, "tf"))


@pytest.mark.parametrize("window", [(4, 4), (2, 3)])
def test_swin_layout_matches_formula_and_timm(window):
    torch.manual_seed(0)
    m = RelPosBias(window, 2, layout="swin")
    nn.init.normal_(m.relative_position_bias_table)
    assert m.relative_position_bias_table.shape == ((2 * window[0] - 1) * (2 * window[1] - 1), 2)
    assert list(m.state_dict()) == ["relative_position_bias_table"]  # index is non-persistent
    out = m(window)
    assert torch.equal(out, _brute_bias(m.relative_position_bias_table.detach(), window, "swin"))
    ref = TimmRelPosBias(window, 2)
    ref.load_state_dict(m.state_dict())
    assert torch.equal(out, ref.get_bias().reshape(out.shape))


@pytest.mark.parametrize("layout", ["tf", "swin"])
def test_resize_identity_at_same_size(layout):
    torch.manual_seed(0)
    m = RelPosBias((3, 4), 2, layout=layout)
    t = m.relative_position_bias_table
    assert resize_rel_pos_bias_table(t, (3, 4), (3, 4)) is t
    for mode in ("geometric", "bicubic"):
        m.resize_mode = mode
        assert torch.equal(m((3, 4)), m())


@pytest.mark.parametrize(
    "src,dst", [((7, 7), (12, 12)), ((7, 7), (4, 4)), ((3, 5), (4, 6)), ((2, 2), (1, 1))]
)
def test_geometric_resize_bit_exact_with_timm(src, dst):
    torch.manual_seed(0)
    tf = torch.randn(3, 2 * src[0] - 1, 2 * src[1] - 1)
    expected = timm_resize(tf, dst, (3, 2 * dst[0] - 1, 2 * dst[1] - 1))
    assert torch.equal(resize_rel_pos_bias_table(tf, dst), expected)
    flat = torch.randn((2 * src[0] - 1) * (2 * src[1] - 1), 3)
    dst_n = (2 * dst[0] - 1) * (2 * dst[1] - 1)
    expected = timm_resize(flat, dst, (dst_n, 3), old_window_size=src)
    assert torch.equal(resize_rel_pos_bias_table(flat, dst, src), expected)


def test_runtime_resize_matches_timm_set_window_size():
    torch.manual_seed(0)
    ref = RelPosBiasTf((3, 3), 2)
    nn.init.normal_(ref.relative_position_bias_table)
    m = RelPosBias((3, 3), 2, layout="tf")
    m.load_state_dict(ref.state_dict())
    ref.set_window_size((5, 4))
    assert torch.equal(m((5, 4)), ref.get_bias())


def test_swin_bicubic_resize_matches_official_swin_formula():
    torch.manual_seed(0)
    m = RelPosBias(3, 2, layout="swin")  # default resize for swin: bicubic
    nn.init.normal_(m.relative_position_bias_table)
    t = m.relative_position_bias_table.detach()
    # official Swin load_pretrained: permute to [1, heads, S, S], bicubic, back to [S'^2, heads]
    exp = (
        F.interpolate(t.permute(1, 0).view(1, 2, 5, 5), size=(9, 9), mode="bicubic").view(2, 81).permute(1, 0)
    )
    assert torch.equal(resize_rel_pos_bias_table(t, 5, mode="bicubic"), exp)
    big = RelPosBias(5, 2, layout="swin")
    big.load_state_dict({"relative_position_bias_table": exp})
    torch.testing.assert_close(m((5, 5)), big(), rtol=0, atol=0)


def test_runtime_resize_has_gradient():
    torch.manual_seed(0)
    for layout in ("tf", "swin"):
        m = RelPosBias((2, 2), 2, layout=layout, resize_mode="geometric", dtype=torch.float64)
        t = torch.randn_like(m.relative_position_bias_table, requires_grad=True)
        f = lambda t: torch.func.functional_call(m, {"relative_position_bias_table": t}, ((3, 2),))  # noqa: B023
        assert f(t).shape == (2, 6, 6)
        assert torch.autograd.gradcheck(f, (t,))


def test_state_dict_resize_for_converters():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.a = RelPosBias(w, 2, layout="tf")
            self.b = RelPosBias(w, 2, layout="swin", resize_mode="geometric")
            self.fc = nn.Linear(2, 2)

    small, big = Net(3), Net(5)
    sd = resize_rel_pos_bias_tables(small.state_dict(), big)
    big.load_state_dict(sd, strict=True)
    assert torch.equal(big.a(), small.a((5, 5)))
    assert torch.equal(big.b(), small.b((5, 5)))
    assert torch.equal(sd["fc.weight"], small.fc.weight)  # other entries pass through


def test_meta_device_and_errors():
    with torch.device("meta"):
        m = RelPosBias((7, 7), 4, layout="swin")
        t = RelPosBias(7, 4, layout="tf")
    assert m.relative_position_bias_table.is_meta and m.relative_position_index.is_meta
    assert m((5, 6)).shape == (4, 30, 30) and t().shape == (4, 49, 49)
    assert resize_rel_pos_bias_table(t.relative_position_bias_table, 9).shape == (4, 17, 17)
    with pytest.raises(ValueError, match="layout"):
        RelPosBias(7, 2, layout="flat")
    with pytest.raises(ValueError, match="resize_mode"):
        RelPosBias(7, 2, resize_mode="nearest")
    with pytest.raises(ValueError, match="old_window"):
        resize_rel_pos_bias_table(torch.zeros(15, 2), 4)  # 3x5 offsets: not square
    with pytest.raises(TypeError):
        RelPosBias(7, 2, window=3)


@pytest.mark.parametrize("partition", ["window", "grid"])
def test_partition_attention_with_tf_bias_matches_timm_maxvit_attention(partition):
    """zoo PartitionAttention + RelPosBias(tf) == timm's AttentionCl(head_first=False) + RelPosBiasTf."""
    torch.manual_seed(0)
    dim, dim_head, size, hw = 16, 8, (2, 3), (4, 6)
    ref = AttentionCl(
        dim, dim, dim_head=dim_head, head_first=False, rel_pos_cls=partial(RelPosBiasTf, window_size=size)
    )
    nn.init.normal_(ref.rel_pos.relative_position_bias_table)
    m = PartitionAttention(dim, dim // dim_head, partition, size, pos_bias=RelPosBias(size, 2, "tf"))
    m.load_state_dict(
        ref.state_dict(), strict=True
    )  # same keys: qkv, rel_pos.relative_position_bias_table, proj
    x = torch.randn(2, *hw, dim)
    part, merge = (
        (window_partition, window_reverse) if partition == "window" else (grid_partition, grid_reverse)
    )
    with torch.no_grad():
        expected = merge(ref(part(x, size)), size, hw)
        with ops.use_backend("reference"):
            out = m(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_resized_bias_exports():
    """The run-time resize uses constant index/weight tensors: torch.export traces it."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rel_pos = RelPosBias(3, 2, layout="tf")

        def forward(self, x):
            return x + self.rel_pos((4, 5))

    net = Net()
    ep = torch.export.export(net, (torch.zeros(2, 20, 20),))
    assert torch.equal(ep.module()(torch.zeros(2, 20, 20)), net.rel_pos((4, 5)))
