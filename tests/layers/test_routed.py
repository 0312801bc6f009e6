import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.ops as ops
from zoo.layers import AttentionLePE, BiLevelRoutingAttention, Block, DWConvPos, LePE


def _keep_mask(q, k, H, W, n_win, topk, scale):
    """Brute force on row-major tokens: token i may attend to token j when j's region is one of the
    topk regions (by mean-q · mean-k over all channels) of i's region. Returns bool [B, N, N]."""
    B = q.shape[0]
    rh, rw = H // n_win, W // n_win
    region = torch.tensor([(y // rh) * n_win + x // rw for y in range(H) for x in range(W)])
    R = n_win * n_win
    keep = torch.zeros(B, H * W, H * W, dtype=torch.bool)
    for b in range(B):
        qm = torch.stack([q[b, region == r].mean(0) for r in range(R)])
        km = torch.stack([k[b, region == r].mean(0) for r in range(R)])
        aff = (qm * scale) @ km.T
        for r in range(R):
            chosen = set(aff[r].argsort(descending=True)[:topk].tolist())
            for i in (region == r).nonzero().flatten().tolist():
                keep[b, i] = torch.tensor([int(region[j]) in chosen for j in range(H * W)])
    return keep


def _manual_bra(m, x, keep=None):
    """BRA by hand on an unpadded map: qkv, masked dense attention (or dense), + LePE(v), wo."""
    B, H, W, C = x.shape
    h = m.num_heads
    q, k, v = m.qkv(x.reshape(B, H * W, C)).split([m.qk_dim, m.qk_dim, m.dim], -1)
    if keep is None:
        keep = _keep_mask(q.detach(), k.detach(), H, W, m.n_win[0], m.topk, m.scale)
    heads = [t.reshape(B, H * W, h, -1).transpose(1, 2) for t in (q, k, v)]
    with ops.use_backend("reference"):
        out = ops.attention(*heads, keep[:, None], scale=m.scale)
    out = out.transpose(1, 2).reshape(B, H, W, C)
    v_map = v.reshape(B, H, W, C).permute(0, 3, 1, 2)
    lepe = F.conv2d(v_map, m.lepe.weight, m.lepe.bias, padding=m.lepe.kernel_size[0] // 2, groups=C)
    return m.wo(out + lepe.permute(0, 2, 3, 1))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_bra_matches_brute_force_routing_with_masked_dense_attention(backend):
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(8, num_heads=2, n_win=3, topk=2, qk_dim=12, side_dwconv=3).eval()
    x = torch.randn(2, 6, 6, 8)
    with ops.use_backend(backend):
        out = m(x)
    assert ops.last_path("routed_attention") == backend
    assert out.shape == x.shape
    torch.testing.assert_close(out, _manual_bra(m, x), rtol=1e-5, atol=1e-5)
    assert m.scale == 12**-0.5  # official: qk_dim of all heads


@pytest.mark.parametrize("topk", [-1, 9, 20])
def test_bra_dense_mode_equals_dense_attention_plus_lepe(topk):
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(8, num_heads=2, n_win=3, topk=topk, side_dwconv=5)
    assert m.dense
    x = torch.randn(1, 6, 3, 8)
    keep = torch.ones(1, 18, 18, dtype=torch.bool)
    torch.testing.assert_close(m(x), _manual_bra(m, x, keep), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,n_win", [((5, 6), 2), ((7, 5), 3), ((3, 2), 7)])
def test_bra_pads_with_zeros_like_official_auto_pad_and_crops(hw, n_win):
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(8, num_heads=2, n_win=n_win, topk=2)
    H, W = hw
    x = torch.randn(2, H, W, 8)
    out = m(x)
    assert out.shape == x.shape
    Hp, Wp = -(-H // n_win) * n_win, -(-W // n_win) * n_win
    padded = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    torch.testing.assert_close(out, m(padded)[:, :H, :W], rtol=1e-5, atol=1e-5)


def test_bra_paths_agree_on_padded_map_with_gradients():
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(16, num_heads=4, n_win=2, topk=2, side_dwconv=5)
    x = torch.randn(2, 7, 5, 16, requires_grad=True)
    params = [x, m.qkv.weight, m.qkv.bias, m.lepe.weight, m.wo.weight]
    res = {}
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            y = m(x)
        res[backend] = (y, torch.autograd.grad(y.square().sum(), params))
    torch.testing.assert_close(res["sdpa"][0], res["reference"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(res["sdpa"][1], res["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_attention_lepe_matches_formula_at_odd_size():
    torch.manual_seed(0)
    m = AttentionLePE(16, num_heads=4)
    x = torch.randn(2, 5, 3, 16)
    out = m(x)
    B, H, W, C = x.shape
    qkv = (x.reshape(B, H * W, C) @ m.qkv.weight.T).reshape(B, H * W, 3, 4, 4).permute(2, 0, 3, 1, 4)
    attn = (qkv[0] @ qkv[1].transpose(-2, -1) * 4**-0.5).softmax(-1) @ qkv[2]
    attn = attn.transpose(1, 2).reshape(B, H, W, C)
    lepe = F.conv2d(x.permute(0, 3, 1, 2), m.lepe.weight, m.lepe.bias, padding=2, groups=C)
    torch.testing.assert_close(out, m.proj(attn + lepe.permute(0, 2, 3, 1)), rtol=1e-5, atol=1e-5)


def test_state_dict_layout_matches_official_biformer_tiny():
    # stages.0.0.attn.* (BRA: qkv.qkv -> qkv) and stages.3.0.attn.* (AttentionLePE) of biformer_tiny
    bra = BiLevelRoutingAttention(64, num_heads=2, n_win=7, topk=1, qk_dim=64, side_dwconv=5)
    assert {k: tuple(v.shape) for k, v in bra.state_dict().items()} == {
        "qkv.weight": (192, 64), "qkv.bias": (192,), "lepe.weight": (64, 1, 5, 5), "lepe.bias": (64,),
        "wo.weight": (64, 64), "wo.bias": (64,),
    }
    full = AttentionLePE(512)
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == {
        "qkv.weight": (1536, 512), "proj.weight": (512, 512), "proj.bias": (512,),
        "lepe.weight": (512, 1, 5, 5), "lepe.bias": (512,),
    }
    assert full.num_heads == 8 and full.scale == 64**-0.5 and full.lepe_on == "x"


def test_dwconv_pos_and_lepe_are_depthwise_convs_on_channels_last_maps():
    torch.manual_seed(0)
    pos = DWConvPos(6)
    assert tuple(pos.weight.shape) == (6, 1, 3, 3) and tuple(pos.bias.shape) == (6,)
    assert LePE(6).kernel_size == (5, 5)
    x = torch.randn(2, 5, 4, 6)
    expect = F.conv2d(x.permute(0, 3, 1, 2), pos.weight, pos.bias, padding=1, groups=6).permute(0, 2, 3, 1)
    torch.testing.assert_close(pos(x), expect)
    # BiFormer's block: x + pos_embed(x) before norm1, then the mixer
    blk = Block(6, BiLevelRoutingAttention(6, 2, n_win=2, topk=1), mlp_ratio=3,
                norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), pos=pos)
    assert blk(x).shape == x.shape


def test_meta_device_construction():
    with torch.device("meta"):
        mods = [BiLevelRoutingAttention(64, 2, 7, 1, side_dwconv=5), AttentionLePE(64)]
        mods += [DWConvPos(64), LePE(64)]
    mods.append(BiLevelRoutingAttention(32, 4, 7, 4, qk_dim=16, device="meta", dtype=torch.float64))
    for m in mods:
        assert all(p.device.type == "meta" for p in m.parameters())
    assert mods[-1].qkv.weight.dtype == torch.float64 and mods[-1].qkv.weight.shape == (64, 32)


def test_bad_arguments_raise_clear_errors():
    cases = [
        (lambda: BiLevelRoutingAttention(10, num_heads=4), "must divide dim=10"),
        (lambda: BiLevelRoutingAttention(8, num_heads=2, qk_dim=5), "qk_dim=5"),
        (lambda: BiLevelRoutingAttention(8, 2, n_win=0), "n_win must be a positive"),
        (lambda: BiLevelRoutingAttention(8, 2, topk=0), "topk must be a positive int"),
        (lambda: BiLevelRoutingAttention(8, 2, side_dwconv=4), "side_dwconv must be 0"),
        (lambda: BiLevelRoutingAttention(8, 2, lepe_on="q"), "lepe_on must be"),
        (lambda: AttentionLePE(12, num_heads=8), "must divide dim=12"),
        (lambda: DWConvPos(8, kernel=2), "kernel must be a positive odd int"),
    ]
    for make, msg in cases:
        with pytest.raises(ValueError, match=msg):
            make()
    m = BiLevelRoutingAttention(8, 2, n_win=2, topk=1)
    with pytest.raises(ValueError, match=r"expects \[B, H, W, 8\]"):
        m(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"expects \[B, H, W, 6\]"):
        DWConvPos(6)(torch.randn(1, 6, 4, 4))
    with pytest.raises(TypeError):
        BiLevelRoutingAttention(8, 2, kv_downsample_mode="identity")


def test_no_lepe_when_side_dwconv_is_zero():
    m = BiLevelRoutingAttention(8, 2, n_win=2, topk=1, side_dwconv=0)
    assert m.lepe is None and "lepe.weight" not in m.state_dict()
    assert m(torch.randn(1, 4, 4, 8)).shape == (1, 4, 4, 8)
