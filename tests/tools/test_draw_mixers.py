"""The mixer figures (tools/draw_mixers.py, docs/mixers.md) show what the ops compute.

Every key set the tool draws is computed from the mixer itself (gradients on the reference path); here the same
panels are compared with sets written by hand from each mixer's definition, at the drawn query and at others
(corners, borders), and the committed PNGs must be what the tool draws now.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zoo.layers import BiLevelRoutingAttention

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("tools_draw_mixers", ROOT / "tools" / "draw_mixers.py")
dm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dm)

FIGURES = {f.name: f for f in dm.FIGURES}


# ------------------------------------------------------------------------------------------ hand-made sets
def box(hw, rows, cols) -> torch.Tensor:
    """The positions ``rows × cols`` of an ``hw`` map."""
    mask = torch.zeros(hw, dtype=torch.bool)
    for i, j in itertools.product(rows, cols):
        mask[i, j] = True
    return mask


def na_axis(length: int, k: int, d: int, i: int) -> list[int]:
    """NAT/DiNAT along one axis: the positions sharing ``i``'s residue mod ``d``, ``k`` consecutive ones of them
    centred on ``i``, slid back inside when the centred run would leave the axis (never cut short)."""
    same = [p for p in range(length) if p % d == i % d]
    at = same.index(i)
    start = at - k // 2
    start = max(0, min(start, len(same) - k))
    return same[start:start + k]


def region_boxes(hw, n_win, regions) -> torch.Tensor:
    rh, rw = hw[0] // n_win, hw[1] // n_win
    out = torch.zeros(hw, dtype=torch.bool)
    for r in regions:
        a, b = divmod(int(r), n_win)
        out[a * rh:(a + 1) * rh, b * rw:(b + 1) * rw] = True
    return out


def top_regions(m, x, n_win, topk, query) -> list[int]:
    """BiFormer's routing by hand: region means of q and k (all channels), q·k, the top-k regions of the
    query's region."""
    H, W = x.shape[1:3]
    qk = F.linear(x[0], m.qkv.weight, m.qkv.bias)[..., : 2 * m.qk_dim].detach()
    q, k = qk[..., : m.qk_dim], qk[..., m.qk_dim:]
    rh, rw = H // n_win, W // n_win

    def means(t):
        return torch.stack([t[a * rh:(a + 1) * rh, b * rw:(b + 1) * rw].mean((0, 1))
                            for a in range(n_win) for b in range(n_win)])

    own = (query[0] // rh) * n_win + query[1] // rw
    affinity = means(k) @ means(q)[own]
    return affinity.argsort(descending=True)[:topk].tolist()


def probe(panel, query=None) -> torch.Tensor:
    mixer = panel.module()
    return dm.receptive_set(mixer, dm.example_input(panel.hw, mixer.qkv.in_features), query or panel.query)


QUERIES_16 = [(6, 9), (0, 0), (15, 15), (0, 13), (9, 1), (15, 7)]


# ------------------------------------------------------------------------------- window / grid / CrossFormer SDA
def own_tile(length: int, i: int) -> list[int]:
    """Window partition of 4 along one axis: the 4 positions of ``i``'s own tile."""
    return list(range(i // 4 * 4, i // 4 * 4 + 4))


def stride_4(length: int, i: int) -> list[int]:
    """Grid partition with stride H/G = 4 along one axis: the positions with ``i``'s offset in every block."""
    return [r for r in range(length) if r % 4 == i % 4]


@pytest.mark.parametrize("query", QUERIES_16)
@pytest.mark.parametrize(
    "figure, index, axis",
    [
        pytest.param("window_grid", 0, own_tile, id="maxvit_window"),  # MaxViT window 4x4 on 16x16
        pytest.param("window_grid", 1, stride_4, id="maxvit_grid"),  # MaxViT grid 4x4 on 16x16
        pytest.param("crossformer", 0, own_tile, id="crossformer_sda"),  # CrossFormer SDA: group window 4
    ],
)
def test_partition_key_set_is_the_product_of_the_per_axis_sets(figure, index, axis, query):
    panel = FIGURES[figure].panels[index]
    (i, j), (H, W) = query, panel.hw
    assert torch.equal(probe(panel, query), box(panel.hw, axis(H, i), axis(W, j)))


# ------------------------------------------------------------------------------------------ CrossFormer
@pytest.mark.parametrize("query", QUERIES_16)
def test_crossformer_lda_is_every_interval_th_pixel_of_the_query_s_region(query):
    panel = FIGURES["crossformer"].panels[1]  # G = 4, I = 2: regions of G·I = 8, pixels 2 apart inside
    i, j = query
    rows = [r for r in range(16) if r // 8 == i // 8 and r % 2 == i % 2]
    cols = [c for c in range(16) if c // 8 == j // 8 and c % 2 == j % 2]
    assert len(rows) == len(cols) == 4
    assert torch.equal(probe(panel, query), box(panel.hw, rows, cols))


def test_crossformer_lda_on_a_map_of_one_region_is_the_stride_h_over_g_grid():
    panel = FIGURES["crossformer"].panels[1]  # G·I = 8 = the map: the released models' grid of stride H/G = 2
    m = panel.module()
    for query in [(0, 0), (3, 6), (7, 7)]:
        got = dm.receptive_set(m, dm.example_input((8, 8)), query)
        rows = [r for r in range(8) if r % 2 == query[0] % 2]
        cols = [c for c in range(8) if c % 2 == query[1] % 2]
        assert torch.equal(got, box((8, 8), rows, cols))


# ------------------------------------------------------------------------------------------ routed
@pytest.mark.parametrize("query", [(6, 9), (13, 2), (0, 0), (15, 15)])
def test_routed_is_the_union_of_the_top_k_regions(query):
    panel = FIGURES["routed"].panels[0]
    m = panel.module()
    assert (m.n_win, m.topk, m.lepe) == ((4, 4), 3, None)
    x = dm.example_input(panel.hw)
    got = dm.receptive_set(m, x, query)
    assert torch.equal(got, region_boxes(panel.hw, 4, top_regions(m, x, 4, 3, query)))
    assert int(got.sum()) == 3 * 16


def test_routed_figure_routes_the_two_queries_differently():
    first, second = FIGURES["routed"].panels
    a, b = probe(first), probe(second)
    assert not torch.equal(a, b)
    assert not a[first.query], "docs/mixers.md: the drawn query's own region is not among its top-k"


# ------------------------------------------------------------------------------------------ agent
def test_agent_weights_cover_every_key_and_factor_through_the_agents():
    panel = FIGURES["agent"].panels[0]
    H, W = panel.hw
    rows = torch.stack([dm.agent_weights(panel.hw, panel.agents, (i, j)).flatten()
                        for i in range(H) for j in range(W)])  # [queries, keys]
    assert bool((rows > 0).all()), "agent attention is global: every key has a weight"
    torch.testing.assert_close(rows.sum(1), torch.ones(H * W, dtype=rows.dtype))
    # each query's weights are a mix of the n = 16 agents' rows: rank 16, not 256
    assert int(torch.linalg.matrix_rank(rows)) == panel.agents**2


def test_agent_module_reads_every_position():
    from zoo.layers import AgentAttention

    torch.manual_seed(0)
    m = AgentAttention(16, 1, agent_num=16, train_size=16).double()
    got = dm.receptive_set(m, dm.example_input((16, 16)), (6, 9))
    assert bool(got.all())
    assert m.dwc.kernel_size == (3, 3) and m.dwc.groups == 16  # the depthwise conv of V docs/mixers.md names


# ------------------------------------------------------------------------------------------ neighborhood
@pytest.mark.parametrize("figure, dilation", [("neighborhood", 1), ("dilated", 2)])
@pytest.mark.parametrize("query", [(6, 9), (0, 14), (14, 1), (0, 0), (15, 15), (1, 8), (8, 15)])
def test_neighborhood_is_k_by_k_dilated_and_slid_inside_at_borders(figure, dilation, query):
    panel = FIGURES[figure].panels[0]
    m = panel.module()
    assert (m.kernel_size, m.dilation) == (5, dilation)
    got = dm.receptive_set(m, dm.example_input(panel.hw), query)
    expect = box(panel.hw, na_axis(16, 5, dilation, query[0]), na_axis(16, 5, dilation, query[1]))
    assert torch.equal(got, expect)
    assert int(got.sum()) == 25, "near a border the window moves inward; it never shrinks"
    steps = {abs(a - b) for a in got.nonzero()[:, 0].tolist() for b in got.nonzero()[:, 0].tolist()}
    assert min(steps - {0}) == dilation


def test_drawn_border_queries_are_off_centre():
    corner = FIGURES["neighborhood"].panels[1]
    got = probe(corner)
    assert corner.query == (0, 14) and torch.equal(got, box(corner.hw, range(5), range(11, 16)))
    border = FIGURES["dilated"].panels[1]
    assert border.query == (14, 1)
    assert torch.equal(probe(border), box(border.hw, [6, 8, 10, 12, 14], [1, 3, 5, 7, 9]))


# ------------------------------------------------------------------------------------------ hybrid
def test_hybrid_panels_are_the_model_s_own_mixers():
    nat_panel, bra_panel = FIGURES["hybrid"].panels
    nat, bra = dm.hybrid_mixers()
    assert (nat.kernel_size, nat.dilation) == (7, 1)
    assert (bra.n_win, bra.topk, bra.lepe.kernel_size) == ((7, 7), 16, (5, 5))

    i, j = nat_panel.query
    got = probe(nat_panel)
    assert torch.equal(got, box((14, 14), na_axis(14, 7, 1, i), na_axis(14, 7, 1, j)))

    m = bra_panel.module()
    x = dm.example_input((14, 14), m.dim)
    i, j = bra_panel.query
    routed = region_boxes((14, 14), 7, top_regions(m, x, 7, 16, (i, j)))
    lepe = box((14, 14), range(max(0, i - 2), min(14, i + 3)), range(max(0, j - 2), min(14, j + 3)))  # zero pad
    assert torch.equal(dm.receptive_set(m, x, (i, j)), routed | lepe)


def test_hybrid_stage_4_is_dense_attention():
    import zoo

    model = zoo.create_model("hybrid_nat_biformer_nano")
    routed = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert [m.dense for m in routed] == [False] * 6 + [True] * 2  # depths 2/2/6/2: stage 3 routed, stage 4 dense


def test_the_families_alternate_their_mixers_as_docs_mixers_md_says():
    import zoo
    from zoo.layers import NeighborhoodAttention2D, PartitionAttention

    def mixers(name, kind):
        return [m for m in zoo.create_model(name).modules() if isinstance(m, kind)]

    partitions = [m.partition for m in mixers("maxvit_nano", PartitionAttention)]
    assert partitions == ["window", "grid"] * (len(partitions) // 2)  # MaxViT: block, then grid attention
    lda = [m.long_distance for m in mixers("crossformer_nano", PartitionAttention)]
    assert any(lda) and not any(a and b for a, b in zip(lda, lda[1:]))  # SDA and LDA alternate
    dilations = [m.dilation for m in mixers("dinat_nano", NeighborhoodAttention2D)]
    assert set(dilations[0::2]) == {1} and max(dilations[1::2]) > 1  # plain, dilated, plain, ...


# ------------------------------------------------------------------------------------------ the files
def test_committed_figures_are_what_the_tool_draws_now(capsys):
    assert dm.main(["--check"]) == 0, capsys.readouterr().out + "\nrun `python tools/draw_mixers.py`"


def test_docs_show_every_figure_and_readme_links_them():
    names = sorted(p.name for p in (ROOT / "docs" / "figures" / "mixers").glob("*.png"))
    assert names == sorted(f"{f.name}.png" for f in dm.FIGURES)
    doc = (ROOT / "docs" / "mixers.md").read_text()
    for name in names:
        assert f"figures/mixers/{name}" in doc, name
    readme = (ROOT / "README.md").read_text()
    assert "docs/mixers.md" in readme
    assert "docs/figures/mixers/" in readme
