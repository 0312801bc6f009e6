import pytest
import torch
import torch.nn.functional as F

import zoo.ops as ops
from zoo.layers import DynamicPosBias, PartitionAttention


def _mlp_by_hand(m: DynamicPosBias, d: torch.Tensor) -> torch.Tensor:
    """The DPB MLP written out: Linear(2→p), then 3x (LayerNorm → ReLU → Linear); heads at the end."""

    def ln_relu_lin(seq, x):
        x = F.layer_norm(x, (x.shape[-1],), seq[0].weight, seq[0].bias, eps=1e-5)
        return F.linear(torch.relu(x), seq[2].weight, seq[2].bias)

    p = F.linear(d, m.pos_proj.weight, m.pos_proj.bias)
    if m.residual:
        p = p + ln_relu_lin(m.pos1, p)
        p = p + ln_relu_lin(m.pos2, p)
    else:
        p = ln_relu_lin(m.pos2, ln_relu_lin(m.pos1, p))
    return ln_relu_lin(m.pos3, p)


def _randomize(m: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            is_norm_weight = name.endswith(".0.weight")  # LayerNorm weights of pos1/pos2/pos3
            p.copy_(
                1.0 + 0.3 * torch.randn(p.shape, generator=g)
                if is_norm_weight
                else torch.randn(p.shape, generator=g)
            )


@pytest.mark.parametrize("group", [(3, 3), (2, 4), (1, 5), (4, 1)])
@pytest.mark.parametrize("residual", [False, True])
def test_dpb_equals_loop_over_query_key_pairs(group, residual):
    m = DynamicPosBias(32, 3, residual=residual)  # official width: 32 // 4 = 8
    _randomize(m)
    gh, gw = group
    out = m(group)
    n = gh * gw
    assert out.shape == (3, n, n)
    ref = torch.empty(3, n, n)
    for i in range(n):
        for j in range(n):
            (yi, xi), (yj, xj) = divmod(i, gw), divmod(j, gw)
            ref[:, i, j] = _mlp_by_hand(m, torch.tensor([float(yi - yj), float(xi - xj)]))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # translation invariance: query (1, 1) / key (0, 0) has the bias of query (gh-1, gw-1) / key (gh-2, gw-2)
    if gh >= 2 and gw >= 2:
        q2, k2 = (gh - 1) * gw + gw - 1, (gh - 2) * gw + gw - 2
        torch.testing.assert_close(out[:, gw + 1, 0], out[:, q2, k2])


def test_dpb_official_layout_keys_and_no_buffers():
    m = DynamicPosBias(64 // 4, 2)  # what CrossFormer-T stage 1 builds: pos_dim 4
    assert m.pos_dim == 4
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "pos_proj.weight": (4, 2), "pos_proj.bias": (4,),
        "pos1.0.weight": (4,), "pos1.0.bias": (4,), "pos1.2.weight": (4, 4), "pos1.2.bias": (4,),
        "pos2.0.weight": (4,), "pos2.0.bias": (4,), "pos2.2.weight": (4, 4), "pos2.2.bias": (4,),
        "pos3.0.weight": (4,), "pos3.0.bias": (4,), "pos3.2.weight": (2, 4), "pos3.2.bias": (2,),
    }  # fmt: skip
    assert list(m.buffers()) == []
    # official table: offsets (dh, dw) with dh outer, ascending; the centre row is offset (0, 0)
    from zoo.layers.dynamic_pos_bias import relative_offsets, relative_position_index

    off = relative_offsets((2, 3))
    assert off.shape == (15, 2) and off[0].tolist() == [-1.0, -2.0] and off[1].tolist() == [-1.0, -1.0]
    idx = relative_position_index((2, 3))
    assert (off[idx.diagonal()] == 0).all()
    assert off[idx[5, 0]].tolist() == [1.0, 2.0]  # query (1, 2) - key (0, 0)


def test_dpb_gradients_dtype_and_meta():
    m = DynamicPosBias(16, 2).double()
    b = m((3, 2))
    assert b.dtype == torch.float64
    b.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    with torch.device("meta"):
        mm = DynamicPosBias(128, 4)
        out = mm((7, 7))
    assert mm.pos_proj.weight.is_meta and out.shape == (4, 49, 49)
    with pytest.raises(ValueError, match="dim >= 4"):
        DynamicPosBias(3, 2)
    with pytest.raises(ValueError, match="positive"):
        m((0, 3))


# ---------------------------------------------------------------------------------------------------------
# PartitionAttention + DPB: CrossFormer SDA (window) / LDA (interval, dilated) against a brute-force attention


def _groups_by_hand(H, W, partition, G, iv):
    """Per real pixel: a group id and its coordinates in group units (after bottom/right padding)."""
    ids, coords = [], []
    for h in range(H):
        for w in range(W):
            if partition == "window":  # G x G tiles
                ids.append((h // G, w // G))
                coords.append((h % G, w % G))
            elif partition == "interval":  # pixels iv apart over the whole map
                ids.append((h % iv, w % iv))
                coords.append((h // iv, w // iv))
            else:  # dilated: G x G pixels iv apart inside each (G·iv) region of the padded map
                R = G * iv
                ids.append((h // R, w // R, h % iv, w % iv))
                coords.append(((h % R) // iv, (w % R) // iv))
    return ids, torch.tensor(coords, dtype=torch.float32)


def _brute_force(m, x, partition, G, iv):
    B, H, W, C = x.shape
    ids, coords = _groups_by_hand(H, W, partition, G, iv)
    N = H * W
    keep = torch.tensor([[ids[i] == ids[j] for j in range(N)] for i in range(N)])
    offsets = coords[:, None, :] - coords[None, :, :]  # [N, N, 2], query - key
    bias = _mlp_by_hand(m.pos, offsets).permute(2, 0, 1)  # [heads, N, N]
    bias = bias.masked_fill(~keep, float("-inf"))
    heads, d = m.num_heads, m.dim_head
    qkv = m.qkv(x.reshape(B, N, C)).reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    attn = (qkv[0] * d**-0.5) @ qkv[1].transpose(-1, -2) + bias
    out = attn.softmax(-1) @ qkv[2]
    return m.proj(out.transpose(1, 2).reshape(B, N, heads * d)).reshape(B, H, W, C)


def _cross_attention(partition, G, iv, dim=16, heads=2):
    size = iv if partition == "interval" else G
    m = PartitionAttention(
        dim,
        heads,
        partition,
        size,
        interval=iv,
        pos_bias=DynamicPosBias(dim // 4, heads),
        pos_bias_name="pos",
    )
    _randomize(m.pos, 1)
    return m.eval()


@pytest.mark.parametrize(
    "partition,hw",
    [("window", (7, 5)), ("interval", (7, 5)), ("dilated", (9, 14)), ("dilated", (5, 6)), ("window", (6, 6))],
)
def test_partition_attention_with_dpb_matches_brute_force(partition, hw):
    torch.manual_seed(0)
    G, iv = 3, 2
    m = _cross_attention(partition, G, iv)
    x = torch.randn(2, *hw, 16)
    with ops.use_backend("reference"):
        out = m(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, _brute_force(m, x, partition, G, iv), rtol=1e-4, atol=1e-4)


def test_dilated_equals_interval_when_the_map_fits_one_region():
    # official main-branch LDA (G, I fixed, pad to G·I) = crossformer-branch LDA (I fixed, pad to I) here
    torch.manual_seed(0)
    dil = _cross_attention("dilated", 3, 4)
    itv = _cross_attention("interval", 3, 4)
    itv.load_state_dict(dil.state_dict())
    for hw in [(7, 7), (12, 10), (5, 11)]:
        x = torch.randn(1, *hw, 16)
        torch.testing.assert_close(dil(x), itv(x), rtol=1e-5, atol=1e-5)


def test_small_map_fallback_override_and_gradients():
    # CrossFormer: a map not larger than G is attended as (min(H, W))-windows, whatever the block's mode
    torch.manual_seed(0)
    lda = _cross_attention("dilated", 7, 2)
    sda = _cross_attention("window", 4, 1)
    sda.load_state_dict(lda.state_dict())
    x = torch.randn(2, 4, 6, 16, requires_grad=True)
    out = lda(x, partition="window", size=4)
    torch.testing.assert_close(out, sda(x))
    torch.testing.assert_close(out, _brute_force(lda, x, "window", 4, 1), rtol=1e-4, atol=1e-4)
    out.square().sum().backward()
    assert all(p.grad is not None for p in lda.pos.parameters()) and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="partition"):
        lda(x, partition="shifted")
    with torch.device("meta"):
        mm = PartitionAttention(
            64, 2, "dilated", 7, interval=8, pos_bias=DynamicPosBias(16, 2), pos_bias_name="pos"
        )
    assert mm.pos.pos_proj.weight.is_meta and mm.interval == (8, 8)
