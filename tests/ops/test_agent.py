import pytest
import torch
import torch.nn.functional as F

import zoo.ops as ops


def _inputs(B=2, h=3, Nq=10, Nk=12, n=4, d=8, dv=6, dtype=torch.float32, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype, requires_grad=grad)

    return r(B, h, Nq, d), r(B, h, Nk, d), r(B, h, Nk, dv), r(B, h, n, d)


def test_reference_matches_hand_computed_loops():
    q, k, v, agent = _inputs(B=1, h=2, Nq=5, Nk=6, n=3, d=4, dv=3, dtype=torch.float64)
    ab = torch.randn(1, 2, 3, 6, dtype=torch.float64)
    qb = torch.randn(2, 5, 3, dtype=torch.float64)
    s = 0.7
    with ops.use_backend("reference"):
        out = ops.agent_attention(q, k, v, agent, ab, qb, scale=s)
    assert ops.last_path("agent_attention") == "reference"
    assert out.shape == (1, 2, 5, 3)
    for hh in range(2):
        # stage 1: every agent is a softmax-weighted mean of the values
        agent_v = []
        for a in range(3):
            logits = [sum(agent[0, hh, a, c] * k[0, hh, j, c] for c in range(4)) * s + ab[0, hh, a, j]
                      for j in range(6)]
            e = [torch.exp(x - max(logits)) for x in logits]
            agent_v.append(sum(e[j] / sum(e) * v[0, hh, j] for j in range(6)))
        # stage 2: every query reads the agents
        for i in range(5):
            logits = [sum(q[0, hh, i, c] * agent[0, hh, a, c] for c in range(4)) * s + qb[hh, i, a]
                      for a in range(3)]
            e = [torch.exp(x - max(logits)) for x in logits]
            expect = sum(e[a] / sum(e) * agent_v[a] for a in range(3))
            torch.testing.assert_close(out[0, hh, i], expect, rtol=1e-12, atol=1e-12)


def test_default_scale_is_head_dim_rsqrt_and_equals_two_dense_attentions():
    q, k, v, agent = _inputs()
    ab, qb = torch.randn(3, 4, 12), torch.randn(1, 3, 10, 4)
    with ops.use_backend("reference"):
        out = ops.agent_attention(q, k, v, agent, ab, qb)
        two = ops.attention(q, agent, ops.attention(agent, k, v, ab, scale=8**-0.5), qb, scale=8**-0.5)
    torch.testing.assert_close(out, two, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "ab_shape,qb_shape",
    [(None, None), ((1, 3, 4, 12), (1, 3, 10, 4)), ((2, 3, 4, 12), (3, 10, 4)), ((4, 12), None)],
)
def test_sdpa_matches_reference_forward_and_backward(ab_shape, qb_shape):
    q, k, v, agent = _inputs(grad=True)
    ab = None if ab_shape is None else torch.randn(ab_shape, requires_grad=True)
    qb = None if qb_shape is None else torch.randn(qb_shape, requires_grad=True)
    inputs = [t for t in (q, k, v, agent, ab, qb) if t is not None]
    res = {}
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            out = ops.agent_attention(q, k, v, agent, ab, qb)
        assert ops.last_path("agent_attention") == backend
        w = torch.linspace(-1, 1, out.numel()).view_as(out)
        res[backend] = (out, torch.autograd.grad((out * w).sum(), inputs))
    torch.testing.assert_close(res["sdpa"][0], res["reference"][0], rtol=1e-5, atol=1e-5)
    for gs, gr in zip(res["sdpa"][1], res["reference"][1]):
        assert gs.shape == gr.shape
        torch.testing.assert_close(gs, gr, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_gradcheck_float64(backend):
    q, k, v, agent = _inputs(B=1, h=2, Nq=4, Nk=5, n=2, d=3, dv=2, dtype=torch.float64, grad=True)
    ab = torch.randn(1, 2, 2, 5, dtype=torch.float64, requires_grad=True)
    qb = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    with ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda *a: ops.agent_attention(*a), (q, k, v, agent, ab, qb))
    assert ops.last_path("agent_attention") == backend


def test_bool_masks_match_additive_masks():
    q, k, v, agent = _inputs()
    keep = torch.rand(1, 1, 4, 12) > 0.3
    keep[..., 0] = True
    add = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            torch.testing.assert_close(
                ops.agent_attention(q, k, v, agent, keep), ops.agent_attention(q, k, v, agent, add)
            )


@pytest.mark.parametrize(
    "hw,out", [((8, 8), (2, 2)), ((7, 5), (3, 2)), ((28, 28), 3), ((14, 14), 4), ((2, 3), (5, 4))]
)
def test_adaptive_pool_matmul_equals_torch(hw, out):
    x = torch.randn(2, *hw, 5, dtype=torch.float64, requires_grad=True)
    got = ops.adaptive_avg_pool2d_matmul(x, out)
    ref = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), out).permute(0, 2, 3, 1)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    g1, = torch.autograd.grad((got * w).sum(), x)
    g2, = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    x32 = x.detach().float()
    torch.testing.assert_close(
        ops.adaptive_avg_pool2d_matmul(x32, out),
        F.adaptive_avg_pool2d(x32.permute(0, 3, 1, 2), out).permute(0, 2, 3, 1),
    )


def test_adaptive_pool_matmul_uneven_bins_by_hand():
    # 5 -> 3 bins: rows [0,2), [1,4), [3,5) (floor/ceil rule, overlapping)
    x = torch.arange(5.0).view(1, 5, 1, 1)
    got = ops.adaptive_avg_pool2d_matmul(x, (3, 1)).flatten()
    torch.testing.assert_close(got, torch.tensor([0.5, 2.0, 3.5]))


def test_bad_inputs_raise_clear_errors():
    q, k, v, agent = _inputs()
    with pytest.raises(ValueError, match="agent must be"):
        ops.agent_attention(q, k, v, agent[..., :4])
    with pytest.raises(ValueError, match="agent must be"):
        ops.agent_attention(q, k, v, agent[0])
    with pytest.raises(ValueError, match="same number of keys"):
        ops.agent_attention(q, k, v[:, :, :5], agent)
    with pytest.raises(ValueError, match="must be"):
        ops.agent_attention(q[0], k, v, agent)
    with pytest.raises(ValueError, match="agent_bias .* does not broadcast"):
        ops.agent_attention(q, k, v, agent, torch.zeros(3, 10, 12))
    with pytest.raises(ValueError, match="query_bias .* does not broadcast"):
        ops.agent_attention(q, k, v, agent, None, torch.zeros(3, 4, 10))
    with pytest.raises(ValueError, match="float bias or a bool mask"):
        ops.agent_attention(q, k, v, agent, torch.zeros(4, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="dtype"):
        ops.agent_attention(q, k, v, agent.double())
    bad = agent.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'agent'.*1 NaN"):
        ops.agent_attention(q, k, v, bad)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        ops.adaptive_avg_pool2d_matmul(torch.zeros(2, 3, 4), 2)
    with pytest.raises(ValueError, match="positive"):
        ops.adaptive_avg_pool2d_matmul(torch.zeros(1, 3, 4, 2), (0, 2))


def test_adaptive_pool_matmul_exports_with_dynamic_hw():
    class Pool(torch.nn.Module):
        def forward(self, x):
            return ops.adaptive_avg_pool2d_matmul(x, (3, 2))

    H, W = torch.export.Dim("H", min=2, max=64), torch.export.Dim("W", min=2, max=64)
    ep = torch.export.export(Pool(), (torch.randn(1, 8, 8, 4),), dynamic_shapes=({1: H, 2: W},))
    for hw in [(8, 8), (13, 5), (2, 7)]:
        x = torch.randn(1, *hw, 4)
        ref = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), (3, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(ep.module()(x), ref)


def test_cpu_autograd_defaults_to_reference_and_forced_sdpa_still_runs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, requires_grad=True) for _ in range(3))
    agent = torch.randn(1, 2, 4, 8)
    ops.agent_attention(q, k, v, agent).sum().backward()
    assert ops.last_path("agent_attention") == "reference"  # SDPA's CPU backward recomputes: slower here
    with ops.use_backend("sdpa"):
        ops.agent_attention(q, k, v, agent).sum().backward()
    assert ops.last_path("agent_attention") == "sdpa"
    with torch.no_grad():
        ops.agent_attention(q, k, v, agent)
    assert ops.last_path("agent_attention") == "sdpa"
