import pytest
import torch
import torch.nn.functional as F

import zoo.ops as ops
from zoo.layers import AgentAttention

f64 = torch.float64


def _randomize(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m.eval()


def _linear_1d(t, size):
    """Resize the last dim of ``t`` linearly (half-pixel centres), via F.interpolate 'linear'."""
    lead = t.shape[:-1]
    return F.interpolate(t.reshape(1, -1, t.shape[-1]), size=size, mode="linear").reshape(*lead, size)


def _manual(m, x, prefix=None):
    """Agent attention written out with einsums from the official formulas (independent of the module).

    Biases: ``an/na`` resized bilinearly to the map; ``ah``/``aw`` (``ha``/``wa``) resized 1-D along their own
    axis and broadcast-summed — equal to the official bilinear resize of the broadcast sum. PVT spatial
    reduction (``sr_ratio > 1``, official ``agent_pvt.py``): keys/values from ``norm(sr(x))`` on the reduced
    map, the agent biases resized to that map, V resized bilinearly back to the map before ``dwc``.
    """
    B, H, W, C = x.shape
    h, n, p = m.num_heads, m.agent_num, m.pool_size
    d = C // h
    t = x.reshape(B, H * W, C)
    P = 0 if prefix is None else 1
    if P:
        t = torch.cat([prefix, t], 1)
    s_r = m.sr_ratio
    kv_in, Hk, Wk = t, H, W
    if s_r > 1:  # official PVT: x_ = norm(sr(x)), kv = kv(x_)
        red = F.conv2d(x.permute(0, 3, 1, 2), m.sr.weight, m.sr.bias, stride=s_r)  # [B, C, H//s, W//s]
        Hk, Wk = red.shape[2], red.shape[3]
        kv_in = F.layer_norm(red.flatten(2).transpose(1, 2), (C,), m.norm.weight, m.norm.bias, m.norm.eps)
    q, k, v = (
        (t @ m.qkv.weight.T + m.qkv.bias).split(C, dim=-1)
        if m.qkv_layout == "qkv"
        else (t @ m.q.weight.T + m.q.bias, *(kv_in @ m.kv.weight.T + m.kv.bias).split(C, dim=-1))
    )
    agent = F.adaptive_avg_pool2d(q[:, P:].reshape(B, H, W, C).permute(0, 3, 1, 2), p)  # [B, C, p, p]
    agent = agent.flatten(2).transpose(1, 2).reshape(B, n, h, d)
    q, k, v = (z.reshape(B, -1, h, d) for z in (q, k, v))
    an = F.interpolate(m.an_bias, size=(Hk, Wk), mode="bilinear").reshape(h, n, Hk * Wk)
    na = F.interpolate(m.na_bias, size=(H, W), mode="bilinear").reshape(h, n, H * W)
    ah = _linear_1d(m.ah_bias[:, :, :, 0], Hk)  # [h, n, Hk]
    aw = _linear_1d(m.aw_bias[:, :, 0, :], Wk)  # [h, n, Wk]
    ha = _linear_1d(m.ha_bias[:, :, 0, :].transpose(1, 2), H)  # [h, n, H]
    wa = _linear_1d(m.wa_bias[:, 0, :, :].transpose(1, 2), W)  # [h, n, W]
    ab = an + (ah[..., :, None] + aw[..., None, :]).reshape(h, n, Hk * Wk)  # [h, n, Hk·Wk]
    qb = (na + (ha[..., :, None] + wa[..., None, :]).reshape(h, n, H * W)).transpose(1, 2)  # [h, HW, n]
    if P:
        ab = torch.cat([m.ac_bias[0], ab], dim=2)
        qb = torch.cat([m.ca_bias[0], qb], dim=1)
    s = d**-0.5
    A = (torch.einsum("bahd,bjhd->bhaj", agent, k) * s + ab).softmax(-1)
    agent_v = torch.einsum("bhaj,bjhd->bahd", A, v)
    Q = (torch.einsum("bihd,bahd->bhia", q, agent) * s + qb).softmax(-1)
    out = torch.einsum("bhia,bahd->bihd", Q, agent_v).reshape(B, -1, C)
    v_map = v[:, P:].reshape(B, Hk, Wk, C).permute(0, 3, 1, 2)
    if s_r > 1:
        v_map = F.interpolate(v_map, size=(H, W), mode="bilinear")
    local = F.conv2d(v_map, m.dwc.weight, m.dwc.bias, padding=1, groups=C).flatten(2).transpose(1, 2)
    out = torch.cat([out[:, :P], out[:, P:] + local], 1)
    out = out @ m.proj.weight.T + m.proj.bias
    return out[:, P:].reshape(B, H, W, C), out[:, :P]


@pytest.mark.parametrize("layout", ["qkv", "q_kv"])
@pytest.mark.parametrize("hw", [(6, 6), (5, 9), (3, 2)])
def test_matches_manual_formula_at_training_and_other_sizes(layout, hw):
    m = _randomize(AgentAttention(12, 3, agent_num=4, train_size=6, qkv_layout=layout, dtype=f64))
    x = torch.randn(2, *hw, 12, dtype=f64)
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            y = m(x)
        assert y.shape == x.shape
        torch.testing.assert_close(y, _manual(m, x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hw", [(4, 4), (5, 3)])
def test_deit_flavour_class_token(hw):
    m = _randomize(AgentAttention(8, 2, agent_num=4, train_size=4, cls_token=True, dtype=f64))
    x, cls = torch.randn(2, *hw, 8, dtype=f64), torch.randn(2, 1, 8, dtype=f64)
    y, cls_out = m(x, cls)
    ey, ecls = _manual(m, x, cls)
    torch.testing.assert_close(y, ey, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cls_out, ecls, rtol=1e-10, atol=1e-10)
    tokens = torch.cat([cls, x.reshape(2, -1, 8)], 1)
    torch.testing.assert_close(m.forward_tokens(tokens, hw), torch.cat([ecls, ey.reshape(2, -1, 8)], 1))


def test_bias_resize_is_identity_at_training_size():
    m = _randomize(AgentAttention(8, 2, agent_num=9, train_size=(5, 7)))
    ab, qb = m.position_biases((5, 7))
    # the official classification composition: an/na interpolated to the window, ah+aw and ha+wa used as is
    an = F.interpolate(m.an_bias, size=(5, 7), mode="bilinear").reshape(1, 2, 9, 35)
    na = F.interpolate(m.na_bias, size=(5, 7), mode="bilinear").reshape(1, 2, 9, 35).transpose(2, 3)
    torch.testing.assert_close(ab, an + (m.ah_bias + m.aw_bias).reshape(1, 2, 9, 35), rtol=0, atol=0)
    torch.testing.assert_close(qb, na + (m.ha_bias + m.wa_bias).reshape(1, 2, 35, 9), rtol=0, atol=0)
    # 7x7 an/na at a 7x7 map, and the agent-grid resize at the trained grid, are exact identities too
    m7 = _randomize(AgentAttention(8, 2, agent_num=4, train_size=7, agent_shape=2))
    ab7, _ = m7.position_biases((7, 7))
    expect7 = (m7.an_bias + (m7.ah_bias + m7.aw_bias)).reshape(1, 2, 4, 49)
    torch.testing.assert_close(ab7, expect7, rtol=0, atol=0)
    # other sizes: new shapes, parameters untouched
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ab, qb = m.position_biases((3, 11))
    assert ab.shape == (1, 2, 9, 33) and qb.shape == (1, 2, 33, 9)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_downstream_agent_shape_resizes_biases_along_the_agent_grid():
    m = _randomize(AgentAttention(8, 2, agent_num=9, train_size=4, agent_shape=(2, 4)))
    ab, qb = m.position_biases((4, 4))
    assert ab.shape == (1, 2, 8, 16) and qb.shape == (1, 2, 16, 8)
    base = AgentAttention(8, 2, agent_num=9, train_size=4)
    base.load_state_dict(m.state_dict())
    ab0, qb0 = base.position_biases((4, 4))  # [1, 2, 9, 16]: resize the 3x3 agent grid to 2x4 by hand
    grid = ab0[0].reshape(2, 3, 3, 16).permute(0, 3, 1, 2)
    expect = F.interpolate(grid, size=(2, 4), mode="bilinear").reshape(2, 16, 8).transpose(1, 2)
    torch.testing.assert_close(ab[0], expect)
    x = torch.randn(1, 5, 6, 8)
    assert m(x).shape == x.shape


@pytest.mark.parametrize("hw", [(6, 6), (7, 5), (2, 2), (2, 9)])
def test_pvt_spatial_reduction_matches_manual_formula_and_gradcheck(hw):
    """sr_ratio 2 at the training size, at odd sizes (floor of the reduced map) and down to a 1×1 key map."""
    m = _randomize(AgentAttention(8, 2, agent_num=4, train_size=6, qkv_layout="q_kv", sr_ratio=2, dtype=f64))
    assert m.ah_bias.shape == (2, 4, 3, 1) and m.ha_bias.shape == (2, 6, 1, 4)
    x = torch.randn(2, *hw, 8, dtype=f64)
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            torch.testing.assert_close(m(x), _manual(m, x)[0], rtol=1e-10, atol=1e-10)
    # the backward is the derivative of the forward (finite differences, float64)
    xg = x[:1].clone().requires_grad_(True)
    with ops.use_backend("reference"):
        assert torch.autograd.gradcheck(m, (xg,))


def test_sdpa_and_reference_agree_forward_and_backward_through_the_layer():
    m = _randomize(AgentAttention(12, 3, agent_num=9, train_size=5))
    x = torch.randn(2, 7, 4, 12, requires_grad=True)
    params = [x, m.an_bias, m.ah_bias, m.wa_bias, m.qkv.weight]
    res = {}
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            y = m(x)
        assert ops.last_path("agent_attention") == backend
        res[backend] = (y, torch.autograd.grad(y.square().sum(), params))
    torch.testing.assert_close(res["sdpa"][0], res["reference"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(res["sdpa"][1], res["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw", [(1, 1), (2, 1), (1, 5)])
def test_tiny_maps_smaller_than_agent_grid(hw):
    """Maps smaller than the 3×3 agent grid: adaptive pooling repeats the queries, values match the formula."""
    m = _randomize(AgentAttention(8, 2, agent_num=9, train_size=4, dtype=f64))
    x = torch.randn(2, *hw, 8, dtype=f64)
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            torch.testing.assert_close(m(x), _manual(m, x)[0], rtol=1e-10, atol=1e-10)
    # closed form at 1×1: the agent->key softmax has one key (weight 1), so every agent carries v and the
    # query->agent softmax averages copies of v: y = proj(v + dwc(v)), the conv seeing only its centre tap
    if hw == (1, 1):
        v = x.reshape(2, 8) @ m.qkv.weight[16:].T + m.qkv.bias[16:]
        local = v * m.dwc.weight[:, 0, 1, 1] + m.dwc.bias
        torch.testing.assert_close(m(x).reshape(2, 8), (v + local) @ m.proj.weight.T + m.proj.bias)


# official state-dict entries (LeapLabTHU/Agent-Attention@207ce3e; shared/parity keys.tsv) of one block's attn
OFFICIAL = {
    "swin_t_stage1": (
        dict(dim=96, num_heads=3, agent_num=9, train_size=56),
        {
            "an_bias": (3, 9, 7, 7),
            "na_bias": (3, 9, 7, 7),
            "ah_bias": (1, 3, 9, 56, 1),
            "aw_bias": (1, 3, 9, 1, 56),
            "ha_bias": (1, 3, 56, 1, 9),
            "wa_bias": (1, 3, 1, 56, 9),
            "qkv.weight": (288, 96),
            "qkv.bias": (288,),
            "proj.weight": (96, 96),
            "proj.bias": (96,),
            "dwc.weight": (96, 1, 3, 3),
            "dwc.bias": (96,),
        },
    ),
    "pvt_t_stage1": (
        dict(dim=64, num_heads=1, agent_num=9, train_size=56, qkv_layout="q_kv"),
        {
            "an_bias": (1, 9, 7, 7),
            "na_bias": (1, 9, 7, 7),
            "ah_bias": (1, 1, 9, 56, 1),
            "aw_bias": (1, 1, 9, 1, 56),
            "ha_bias": (1, 1, 56, 1, 9),
            "wa_bias": (1, 1, 1, 56, 9),
            "q.weight": (64, 64),
            "q.bias": (64,),
            "kv.weight": (128, 64),
            "kv.bias": (128,),
            "proj.weight": (64, 64),
            "proj.bias": (64,),
            "dwc.weight": (64, 1, 3, 3),
            "dwc.bias": (64,),
        },
    ),
    "deit_t": (
        dict(dim=192, num_heads=3, agent_num=49, train_size=14, cls_token=True),
        {
            "an_bias": (3, 49, 7, 7),
            "na_bias": (3, 49, 7, 7),
            "ah_bias": (1, 3, 49, 14, 1),
            "aw_bias": (1, 3, 49, 1, 14),
            "ha_bias": (1, 3, 14, 1, 49),
            "wa_bias": (1, 3, 1, 14, 49),
            "ac_bias": (1, 3, 49, 1),
            "ca_bias": (1, 3, 1, 49),
            "qkv.weight": (576, 192),
            "qkv.bias": (576,),
            "proj.weight": (192, 192),
            "proj.bias": (192,),
            "dwc.weight": (192, 1, 3, 3),
            "dwc.bias": (192,),
        },
    ),
}


@pytest.mark.parametrize("flavour", sorted(OFFICIAL))
def test_meta_construction_with_official_keys_and_shapes(flavour):
    kwargs, keys = OFFICIAL[flavour]
    with torch.device("meta"):
        m = AgentAttention(**kwargs)
    sd = m.state_dict()
    assert list(sd) == list(keys)  # names and order of the official state dict
    # shapes: the official ones, but ah/aw/ha/wa_bias without their leading 1 (rank 4: channels_last works)
    rank4 = {k: s[1:] if k in ("ah_bias", "aw_bias", "ha_bias", "wa_bias") else s for k, s in keys.items()}
    assert {k: tuple(v.shape) for k, v in sd.items()} == rank4
    assert all(v.is_meta for v in sd.values())


@pytest.mark.parametrize("flavour", sorted(OFFICIAL))
def test_official_rank5_biases_load_and_channels_last(flavour):
    kwargs, keys = OFFICIAL[flavour]
    small = {**kwargs, "dim": 2 * kwargs["num_heads"], "train_size": 8 if kwargs["train_size"] > 8 else 4}
    if small["agent_num"] == 49:
        small["agent_num"] = 4
    m = AgentAttention(**small).eval()
    ref = _randomize(AgentAttention(**small))
    official = {k: v.unsqueeze(0) if v.dim() == 4 and k in ("ah_bias", "aw_bias", "ha_bias", "wa_bias") else v
                for k, v in ref.state_dict().items()}
    assert official["ah_bias"].dim() == 5
    m.load_state_dict(official)  # the official rank-5 layout loads as is
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
    x = torch.randn(2, 6, 5, small["dim"])
    prefix = torch.randn(2, 1, small["dim"]) if small.get("cls_token") else None
    want = ref(x, prefix) if prefix is not None else ref(x)
    m.to(memory_format=torch.channels_last)  # raised "required rank 4 tensor" with rank-5 parameters
    got = m(x, prefix) if prefix is not None else m(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise_one_clear_error_each():
    cases = [
        (dict(dim=10, num_heads=3), "must divide dim"),
        (dict(dim=8, num_heads=2, agent_num=8), "perfect square"),
        (dict(dim=8, num_heads=2, qkv_layout="kqv"), "qkv_layout"),
        (dict(dim=8, num_heads=2, sr_ratio=2), "spatial reduction"),
        (dict(dim=8, num_heads=2, sr_ratio=0), "sr_ratio must be"),
        (dict(dim=8, num_heads=2, dwc_kernel=4), "dwc_kernel"),
        (dict(dim=8, num_heads=2, train_size=0), "train_size"),
        (dict(dim=8, num_heads=2, train_size=2, qkv_layout="q_kv", sr_ratio=4), "smaller than sr_ratio"),
        (dict(dim=8, num_heads=2, agent_shape=(2, 0)), "agent_shape"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            AgentAttention(**kwargs)
    with pytest.raises(TypeError):
        AgentAttention(8, 2, window_size=7)
    m = AgentAttention(8, 2, agent_num=4, train_size=4)
    with pytest.raises(ValueError, match=r"\[B, H, W, C=8\]"):
        m(torch.randn(1, 16, 8))
    with pytest.raises(ValueError, match=r"\[B, H, W, C=8\]"):
        m(torch.randn(1, 4, 4, 6))
    with pytest.raises(ValueError, match="cls_token=False"):
        m(torch.randn(1, 4, 4, 8), torch.randn(1, 1, 8))
    mc = AgentAttention(8, 2, agent_num=4, train_size=4, cls_token=True)
    with pytest.raises(ValueError, match="needs prefix"):
        mc(torch.randn(1, 4, 4, 8))
    with pytest.raises(ValueError, match="tokens must be"):
        mc.forward_tokens(torch.randn(1, 16, 8), (4, 4))
    ms = AgentAttention(8, 2, agent_num=4, train_size=4, qkv_layout="q_kv", sr_ratio=2)
    with pytest.raises(ValueError, match="smaller than sr_ratio"):
        ms(torch.randn(1, 1, 4, 8))
