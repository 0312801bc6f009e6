import pytest
import torch
import torch.nn.functional as F

import zoo.ops as ops
from zoo.layers import NeighborhoodAttention1D, NeighborhoodAttention2D


def _layer(cls=NeighborhoodAttention2D, dim=16, heads=2, ks=3, dil=1, **kw):
    torch.manual_seed(0)
    m = cls(dim, heads, ks, dil, dtype=torch.float64, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def test_official_key_names_and_shapes():
    m = NeighborhoodAttention2D(32, 4, 7, 2)
    sd = m.state_dict()
    assert list(sd) == ["rpb", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    assert sd["rpb"].shape == (4, 13, 13) and sd["qkv.weight"].shape == (96, 32)
    assert 0.015 < sd["rpb"].std() < 0.025  # trunc_normal_(std=0.02, a=-2, b=2) as NATTEN
    m = NeighborhoodAttention2D(32, 4, 7, rel_pos_bias=False, qkv_bias=False)
    assert m.rpb is None and set(m.state_dict()) == {"qkv.weight", "proj.weight", "proj.bias"}
    assert NeighborhoodAttention1D(32, 4, 5).rpb.shape == (4, 9)
    assert NeighborhoodAttention2D(32, 4, 7, None).dilation == 1  # official NATLayer passes dilation=None


@pytest.mark.parametrize("hw,dil", [((9, 11), 2), ((7, 13), 1), ((6, 6), 2)])
def test_matches_manual_composition(hw, dil):
    """qkv split (q/k/v outer, heads inner), op with the layer's rpb and scale, proj."""
    m = _layer(dil=dil)
    x = torch.randn(2, *hw, 16, dtype=torch.float64)
    out = m(x)
    assert out.shape == x.shape
    qkv = m.qkv(x).reshape(2, *hw, 3, 2, 8).permute(3, 0, 4, 1, 2, 5)
    with ops.use_backend("reference"):
        o = ops.neighborhood_attention2d(qkv[0], qkv[1], qkv[2], 3, dil, m.rpb, scale=8**-0.5)
    expect = m.proj(o.permute(0, 2, 3, 1, 4).reshape(2, *hw, 16))
    torch.testing.assert_close(out, expect)


def _neighbors(i, n, ks, dil):
    """NATTEN's neighborhood of position ``i`` on an axis of length ``n`` (``n >= ks * dil``): the ``ks``
    positions of ``i``'s dilation group (``i mod dil``) centred on ``i``, shifted inwards at the borders, each
    with its relative-position-bias index ``(key - query) / dil + ks - 1``."""
    group = list(range(i % dil, n, dil))
    at = i // dil
    start = min(max(at - ks // 2, 0), len(group) - ks)
    return [(group[j], j - at + ks - 1) for j in range(start, start + ks)]


def _brute_force_layer(m, x, ks, dil):
    """The layer written out with loops: zero-pad bottom/right to ``ks * dil``, qkv, per-query softmax over
    its ``ks × ks`` neighbours with ``scale · q·k + rpb``, crop, proj."""
    B, H, W, C = x.shape
    heads, hd = m.num_heads, C // m.num_heads
    Hp, Wp = max(H, ks * dil), max(W, ks * dil)
    xp = x.new_zeros(B, Hp, Wp, C)
    xp[:, :H, :W] = x
    q, k, v = (xp @ m.qkv.weight.T + m.qkv.bias).reshape(B, Hp, Wp, 3, heads, hd).unbind(3)
    out = x.new_zeros(B, H, W, heads, hd)
    for i in range(H):
        for j in range(W):
            nb = [(a, b, ra, rb) for a, ra in _neighbors(i, Hp, ks, dil) for b, rb in _neighbors(j, Wp, ks, dil)]
            keys = torch.stack([k[:, a, b] for a, b, _, _ in nb], 1)  # [B, ks², heads, hd]
            vals = torch.stack([v[:, a, b] for a, b, _, _ in nb], 1)
            bias = torch.stack([m.rpb[:, ra, rb] for _, _, ra, rb in nb], 0)  # [ks², heads]
            logits = torch.einsum("bhd,bnhd->bnh", q[:, i, j], keys) * hd**-0.5 + bias
            out[:, i, j] = torch.einsum("bnh,bnhd->bhd", logits.softmax(1), vals)
    return out.reshape(B, H, W, C) @ m.proj.weight.T + m.proj.bias


def test_neighbors_helper_on_known_cases():
    # ks 3, dil 1 at the left border, inside, at the right border of an axis of 7
    assert _neighbors(0, 7, 3, 1) == [(0, 2), (1, 3), (2, 4)]
    assert _neighbors(3, 7, 3, 1) == [(2, 1), (3, 2), (4, 3)]
    assert _neighbors(6, 7, 3, 1) == [(4, 0), (5, 1), (6, 2)]
    # dil 2 on 9: the odd positions {1, 3, 5, 7} are one group, 7 its last member; {0, 2, 4, 6, 8} the other
    assert _neighbors(7, 9, 3, 2) == [(3, 0), (5, 1), (7, 2)]
    assert _neighbors(4, 9, 3, 2) == [(2, 1), (4, 2), (6, 3)]


@pytest.mark.parametrize("hw", [(1, 1), (3, 8), (5, 7), (8, 3), (13, 5)])
def test_any_size_matches_brute_force(hw):
    """Maps smaller than the window (6) on one or both axes and larger ones: the values of a loop over every
    query's dilated neighbourhood (official NATTEN semantics), whatever path the layer takes."""
    m = _layer(ks=3, dil=2)
    x = torch.randn(2, *hw, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), _brute_force_layer(m, x, 3, 2), rtol=1e-10, atol=1e-10)


def test_small_map_is_zero_padded_before_qkv_and_cropped():
    """Legacy NATTEN: pad [B, H, W, C] with zeros at bottom/right to kernel*dilation, attend, crop, proj."""
    m = _layer(ks=3, dil=2)  # window 6
    x = torch.randn(2, 4, 9, 16, dtype=torch.float64)
    out = m(x)
    padded = F.pad(x, (0, 0, 0, 0, 0, 2))  # H 4 -> 6, W 9 stays
    expect = m(padded)[:, :4]
    torch.testing.assert_close(out, expect)
    # padded tokens are keys like any other (not masked): their values change the result
    padded_other = F.pad(x, (0, 0, 0, 0, 0, 2), value=1.0)
    assert not torch.allclose(m(padded_other)[:, :4], out)

    m1 = _layer(NeighborhoodAttention1D, ks=5, dil=1)
    s = torch.randn(2, 3, 16, dtype=torch.float64)
    torch.testing.assert_close(m1(s), m1(F.pad(s, (0, 0, 0, 2)))[:, :3])


def test_1d_matches_manual_composition():
    m = _layer(NeighborhoodAttention1D, ks=3, dil=2)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    qkv = m.qkv(x).reshape(2, 11, 3, 2, 8).permute(2, 0, 3, 1, 4)
    o = ops.neighborhood_attention1d(qkv[0], qkv[1], qkv[2], 3, 2, m.rpb)
    torch.testing.assert_close(m(x), m.proj(o.transpose(1, 2).reshape(2, 11, 16)))


def test_backward_reaches_all_parameters():
    m = NeighborhoodAttention2D(16, 2, 3, 2)
    x = torch.randn(1, 7, 9, 16, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_attention_dropout_in_training_only():
    m = _layer(attn_drop=0.5)
    x = torch.randn(1, 6, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), m(x))  # eval: deterministic
    m.train()
    torch.manual_seed(1)
    a = m(x)
    assert ops.last_path("neighborhood_attention2d") == "reference"
    assert not torch.allclose(a, m.eval()(x))


def test_meta_device_construction():
    with torch.device("meta"):
        m = NeighborhoodAttention2D(64, 4, 7, 4)
    assert all(p.device.type == "meta" for p in m.parameters())
    m = NeighborhoodAttention1D(64, 4, 7, device="meta", dtype=torch.bfloat16)
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in m.parameters())
    m = m.to_empty(device="cpu")
    m.reset_parameters()
    assert torch.isfinite(m.rpb).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="does not divide"):
        NeighborhoodAttention2D(30, 4, 7)
    with pytest.raises(ValueError, match="odd int"):
        NeighborhoodAttention2D(32, 4, 6)
    with pytest.raises(ValueError, match="dilation"):
        NeighborhoodAttention2D(32, 4, 7, 0)
    with pytest.raises(TypeError):
        NeighborhoodAttention2D(32, 4, 7, bias=True)  # NATTEN<=0.14 spelling; the zoo uses rel_pos_bias
    m = NeighborhoodAttention2D(32, 4, 3)
    with pytest.raises(ValueError, match=r"expects \[B, H, W, 32\]"):
        m(torch.randn(1, 32, 8, 8))
    with pytest.raises(ValueError, match=r"expects \[B, H, W, 32\]"):
        m(torch.randn(8, 8, 32))
