import pytest
import torch
from torch import nn

import zoo.ops as ops
from zoo.layers import PartitionAttention


def _group_id(H, W, partition, size):
    """Brute force: the group each real pixel belongs to, from its coordinates (after bottom/right pad)."""
    sh, sw = size
    Hp, Wp = -(-H // sh) * sh, -(-W // sw) * sw
    ids = torch.empty(H, W, dtype=torch.long)
    for i in range(H):
        for j in range(W):
            if partition == "window":
                ids[i, j] = (i // sh) * 1000 + j // sw
            elif partition == "grid":  # sh x sw grid: stride Hp/sh
                ids[i, j] = (i % (Hp // sh)) * 1000 + j % (Wp // sw)
            else:  # interval: pixels sh apart
                ids[i, j] = (i % sh) * 1000 + j % sw
    return ids.flatten()


@pytest.mark.parametrize("partition,size", [("window", (3, 2)), ("grid", (2, 3)), ("interval", (2, 2))])
@pytest.mark.parametrize("hw", [(6, 6), (7, 5)])
def test_partition_attention_equals_masked_dense_attention(partition, size, hw):
    torch.manual_seed(0)
    H, W = hw
    m = PartitionAttention(16, 2, partition, size).eval()
    x = torch.randn(2, H, W, 16)
    out = m(x)
    assert out.shape == x.shape
    # dense attention over real pixels, keys restricted to the query's group
    ids = _group_id(H, W, partition, size)
    keep = ids[:, None] == ids[None, :]
    qkv = m.qkv(x.reshape(2, H * W, 16)).reshape(2, H * W, 3, 2, 8).permute(2, 0, 3, 1, 4)
    with ops.use_backend("reference"):
        ref = ops.attention(qkv[0], qkv[1], qkv[2], keep)
    ref = m.proj(ref.transpose(1, 2).reshape(2, H * W, 16)).view(2, H, W, 16)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


class _TableBias(nn.Module):
    def __init__(self, heads, n):
        super().__init__()
        self.table = nn.Parameter(torch.randn(heads, n, n))

    def forward(self, group_hw):
        return self.table


def test_position_bias_is_added_per_group_and_gets_gradient():
    torch.manual_seed(0)
    pb = _TableBias(2, 4)
    m = PartitionAttention(8, 2, "window", 2, pos_bias=pb, pos_bias_name="rel_pos")
    assert m.rel_pos is pb and m.pos_bias is pb
    x = torch.randn(1, 2, 2, 8)  # a single window: dense attention with the table as bias
    out = m(x)
    qkv = m.qkv(x.reshape(1, 4, 8)).reshape(1, 4, 3, 2, 4).permute(2, 0, 3, 1, 4)
    ref = ops.attention(qkv[0], qkv[1], qkv[2], pb.table[None])
    ref = m.proj(ref.transpose(1, 2).reshape(1, 4, 8)).view(1, 2, 2, 8)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert pb.table.grad is not None and pb.table.grad.abs().sum() > 0


def test_sdpa_and_reference_paths_agree_with_padding():
    torch.manual_seed(0)
    m = PartitionAttention(16, 4, "grid", 3, pos_bias=_TableBias(4, 9))
    x = torch.randn(2, 8, 7, 16, requires_grad=True)
    res = {}
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            y = m(x)
        res[backend] = (y, torch.autograd.grad(y.square().sum(), (x, m.rel_pos.table)))
    torch.testing.assert_close(res["sdpa"][0], res["reference"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(res["sdpa"][1], res["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_errors_and_meta_device():
    with pytest.raises(ValueError, match="does not divide"):
        PartitionAttention(10, 3)
    with pytest.raises(ValueError, match="partition"):
        PartitionAttention(8, 2, "shifted")
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        PartitionAttention(8, 2)(torch.randn(2, 4, 8))
    with torch.device("meta"):
        m = PartitionAttention(64, 2, "window", 7)
    assert m.qkv.weight.is_meta


def _swin_shifted_reference(m: PartitionAttention, x: torch.Tensor, ws: int) -> torch.Tensor:
    """Official Swin SW-MSA written out: pad, roll by -ws//2, windows, biased attention + region mask,
    merge, roll back, crop."""
    B, H, W, C = x.shape
    s = ws // 2
    xp, _ = ops.pad_to_multiple(x, ws)
    Hp, Wp = xp.shape[1], xp.shape[2]
    xr = torch.roll(xp, (-s, -s), dims=(1, 2))
    g = ops.window_partition(xr, ws)
    qkv = m.qkv(g).reshape(g.shape[0], ws * ws, 3, m.num_heads, m.dim_head).permute(2, 0, 3, 1, 4)
    bias = m.rel_pos((ws, ws)).unsqueeze(0) + PartitionAttention.shift_mask((Hp, Wp), ws, s).unsqueeze(1).repeat(
        B, 1, 1, 1
    )
    with ops.use_backend("reference"):
        out = ops.attention(qkv[0], qkv[1], qkv[2], bias, scale=m.scale)
    out = m.proj(out.transpose(1, 2).reshape(g.shape[0], ws * ws, C))
    out = torch.roll(ops.window_merge(out, (ws, ws), (Hp, Wp)), (s, s), dims=(1, 2))
    return out[:, :H, :W]


@pytest.mark.parametrize("hw", [(14, 14), (11, 17)])
def test_shift_option_is_swin_shifted_window_attention(hw):
    from zoo.layers import RelPosBias

    torch.manual_seed(0)
    m = PartitionAttention(16, 2, "window", 7, pos_bias=RelPosBias(7, 2, layout="swin"), mask_padding=False,
                           shift=True).eval()
    with torch.no_grad():
        m.rel_pos.relative_position_bias_table.normal_()
        x = torch.randn(2, *hw, 16)
        with ops.use_backend("reference"):
            got = m(x)
        torch.testing.assert_close(got, _swin_shifted_reference(m, x, 7), rtol=1e-5, atol=1e-5)
        with ops.use_backend("reference"):  # shift=0 for one call: plain windows
            plain = m(x, shift=0)
        assert not torch.allclose(plain, got)


def test_shift_needs_unmasked_windows():
    with pytest.raises(ValueError, match="shift"):
        PartitionAttention(16, 2, "window", 7, shift=True)  # mask_padding defaults to True
    with pytest.raises(ValueError, match="shift"):
        PartitionAttention(16, 2, "grid", 7, mask_padding=False, shift=True)
