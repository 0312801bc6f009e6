"""Draw which key positions one query of each token mixer attends to (docs/mixers.md, docs/figures/mixers/).

    python tools/draw_mixers.py                          # regenerate docs/figures/mixers/*.png
    python tools/draw_mixers.py --out /tmp/mixers --only routed neighborhood
    python tools/draw_mixers.py --check                  # exit 1 if a committed figure is out of date

The sets are not drawn from a description: each mixer module of ``zoo.layers`` (or a family's module, or the
hybrid model's own mixers) runs on a small random map on the reference path, in float64, and the drawn keys of a
query ``p`` are the input positions ``x[j]`` on which ``out[p]`` depends, the nonzero entries of the gradient of
``out[p]`` (projected on a random direction) with respect to ``x``. A position a mixer ignores gets an exact zero
gradient (it is never gathered, or its softmax weight is exactly 0), so the picture shows what the op computes;
``tests/tools/test_draw_mixers.py`` compares the same sets with ones written by hand from each mixer's definition.
Agent attention sees every key; its figure shades each key by the query's effective weight, the gradient of
``out[p]`` with respect to a one-channel ``v`` of :func:`zoo.ops.agent_attention`.
"""

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402  (the checkout's zoo when run as python tools/draw_mixers.py)
from zoo import ops  # noqa: E402
from zoo.layers import BiLevelRoutingAttention, NeighborhoodAttention2D, PartitionAttention  # noqa: E402

OUT_DIR = ROOT / "docs" / "figures" / "mixers"
DIM = 16  # channels of the example maps (one head: heads do not change which keys a query sees)
DTYPE = torch.float64


# ------------------------------------------------------------------------------------------------ the sets
def example_input(hw: tuple[int, int], dim: int = DIM, seed: int = 0) -> torch.Tensor:
    """The random map ``[1, H, W, dim]`` (float64) a mixer is probed with."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, hw[0], hw[1], dim, generator=g, dtype=DTYPE)


def receptive_set(mixer: nn.Module, x: torch.Tensor, query: tuple[int, int], seed: int = 1) -> torch.Tensor:
    """``[H, W]`` bool: the key positions of ``x: [1, H, W, C]`` that the mixer's output at ``query`` reads.

    The nonzero entries of ``d <out[query], r> / dx`` for a random direction ``r``, on the reference path
    (``zoo.ops.use_backend("reference")``), in eval mode. The query part of ``mixer.qkv``'s output (its first
    ``qk_dim`` or third of the channels) is detached by a forward hook, so the gradient flows only through keys
    and values: the query's own position is in the set only when it is one of its keys.
    """
    mixer = mixer.eval()
    qkv = mixer.qkv
    q_width = getattr(mixer, "qk_dim", None) or qkv.out_features // 3

    def keys_and_values_only(module, args, out):
        return torch.cat([out[..., :q_width].detach(), out[..., q_width:]], dim=-1)

    x = x.detach().clone().requires_grad_(True)
    handle = qkv.register_forward_hook(keys_and_values_only)
    try:
        with ops.use_backend("reference"):
            out = mixer(x)
    finally:
        handle.remove()
    r = torch.randn(out.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out[0, query[0], query[1]] * r).sum().backward()
    return x.grad[0].abs().sum(-1) > 0


def agent_weights(
    hw: tuple[int, int], agents: int, query: tuple[int, int], dim: int = DIM, seed: int = 0
) -> torch.Tensor:
    """``[H, W]`` float: the effective weight of every key in the output of ``query`` under agent attention.

    :func:`zoo.ops.agent_attention` with random ``q = k`` maps, the agents = ``q`` average-pooled to an
    ``agents×agents`` grid (as Agent-Swin/PVT/DeiT), and a one-channel ``v``: the output at the query is
    ``sum_j w_j v_j``, so the gradient with respect to ``v`` is the weight row ``w`` (reference path).
    """
    H, W = hw
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, W, dim, generator=g, dtype=DTYPE) * 2.0  # sharper than unit logits, for the eye
    agent = ops.adaptive_avg_pool2d_matmul(q, agents).reshape(1, 1, agents * agents, dim)
    qf = q.reshape(1, 1, H * W, dim)
    v = torch.zeros(1, 1, H * W, 1, dtype=DTYPE, requires_grad=True)
    with ops.use_backend("reference"):
        out = ops.agent_attention(qf, qf, v, agent)
    out[0, 0, query[0] * W + query[1], 0].backward()
    return v.grad.reshape(H, W)


# ------------------------------------------------------------------------------------------------ the figures
@dataclass(frozen=True)
class Panel:
    """One map: a mixer (built fresh, seeded) probed at one query."""

    title: str
    build: Callable[[], nn.Module]
    hw: tuple[int, int]
    query: tuple[int, int]
    lines: int | None = None  # draw partition boundaries every `lines` pixels
    weights: bool = False  # agent attention: shade keys by weight (build is unused)
    agents: int = 0

    def module(self) -> nn.Module:
        torch.manual_seed(0)
        return self.build().to(DTYPE)

    def compute(self) -> torch.Tensor:
        """``[H, W]``: bool key set, or float weights for an agent panel."""
        if self.weights:
            return agent_weights(self.hw, self.agents, self.query)
        mixer = self.module()
        return receptive_set(mixer, example_input(self.hw, mixer.qkv.in_features), self.query)


@dataclass(frozen=True)
class Figure:
    name: str
    caption: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _crossformer(long_distance: bool) -> nn.Module:
    from zoo.models.crossformer import CrossFormerAttention

    return CrossFormerAttention(DIM, 1, group_size=4, interval=2, long_distance=long_distance)


@functools.lru_cache(maxsize=1)
def hybrid_mixers(name: str = "hybrid_nat_biformer_nano") -> tuple[nn.Module, nn.Module]:
    """The hybrid model's first neighborhood mixer (stages 1-2) and first routed mixer (stage 3)."""
    torch.manual_seed(0)
    model = zoo.create_model(name)
    nat = next(m for m in model.modules() if isinstance(m, NeighborhoodAttention2D))
    bra = next(m for m in model.modules() if type(m) is BiLevelRoutingAttention and not m.dense)
    return nat, bra


def _agent_none() -> nn.Module:
    raise AssertionError("agent panels are computed from zoo.ops.agent_attention")


HW = (16, 16)
Q = (6, 9)
FIGURES: tuple[Figure, ...] = (
    Figure("window_grid", "MaxViT: block (window) and grid attention", (
        Panel("window 4×4 (block attention)", lambda: PartitionAttention(DIM, 1, "window", 4), HW, Q, lines=4),
        Panel("grid 4×4 (grid attention)", lambda: PartitionAttention(DIM, 1, "grid", 4), HW, Q, lines=4),
    )),
    Figure("crossformer", "CrossFormer: short- and long-distance attention (G = 4, I = 2)", (
        Panel("SDA: 4×4 group", lambda: _crossformer(False), HW, Q, lines=4),
        Panel("LDA: 4×4 group, interval 2", lambda: _crossformer(True), HW, Q, lines=8),
    )),
    Figure("routed", "BiFormer: bi-level routing, 4×4 regions, top-3 (LePE off)", (
        Panel("query in region (1, 2)", lambda: BiLevelRoutingAttention(DIM, 1, 4, 3, side_dwconv=0), HW, Q,
              lines=4),
        Panel("query in region (3, 0)", lambda: BiLevelRoutingAttention(DIM, 1, 4, 3, side_dwconv=0), HW,
              (13, 2), lines=4),
    )),
    Figure("agent", "Agent attention: 4×4 pooled agents, weight of every key", (
        Panel("query (6, 9)", _agent_none, HW, Q, lines=4, weights=True, agents=4),
        Panel("query (13, 2)", _agent_none, HW, (13, 2), lines=4, weights=True, agents=4),
    )),
    Figure("neighborhood", "NAT: 5×5 neighborhood, clamped inside the map", (
        Panel("centre", lambda: NeighborhoodAttention2D(DIM, 1, 5), HW, Q),
        Panel("near a corner", lambda: NeighborhoodAttention2D(DIM, 1, 5), HW, (0, 14)),
    )),
    Figure("dilated", "DiNAT: 5×5 neighborhood, dilation 2", (
        Panel("centre", lambda: NeighborhoodAttention2D(DIM, 1, 5, dilation=2), HW, Q),
        Panel("border", lambda: NeighborhoodAttention2D(DIM, 1, 5, dilation=2), HW, (14, 1)),
    )),
    Figure("hybrid", "hybrid_nat_biformer_nano's mixers, 14×14 map", (
        Panel("stages 1-2: NAT 7×7", lambda: hybrid_mixers()[0], (14, 14), (3, 10)),
        Panel("stage 3: top-16 regions + LePE 5×5", lambda: hybrid_mixers()[1], (14, 14), (3, 10),
              lines=2),
    )),
)


# ------------------------------------------------------------------------------------------------ drawing
KEY = (0.30, 0.45, 0.69)
QUERY = (0.87, 0.33, 0.18)
EMPTY = (0.92, 0.92, 0.92)


def _image(values: torch.Tensor, query: tuple[int, int], weights: bool):
    import numpy as np

    H, W = values.shape
    img = np.empty((H, W, 3))
    if weights:  # white -> KEY by weight relative to the largest
        t = (values / values.max()).double().numpy()[..., None]
        img[:] = 1.0 - t * (1.0 - np.array(KEY))
    else:
        img[:] = EMPTY
        img[values.numpy()] = KEY
    if weights or values[query]:
        img[query] = QUERY
    return img


def draw(figure: Figure, path: Path) -> list[torch.Tensor]:
    """Compute every panel of ``figure`` and write it as a PNG; returns the panels' sets / weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    values = [p.compute() for p in figure.panels]
    n = len(figure.panels)
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 3.4), squeeze=False, layout="constrained")
    for ax, panel, v in zip(axes[0], figure.panels, values):
        H, W = panel.hw
        ax.imshow(_image(v, panel.query, panel.weights), interpolation="nearest")
        if not panel.weights and not v[panel.query]:  # the query is not one of its own keys: outline it
            qy, qx = panel.query
            ax.add_patch(Rectangle((qx - 0.5, qy - 0.5), 1, 1, fill=False, edgecolor=QUERY, linewidth=2))
        ax.set_xticks([x - 0.5 for x in range(W + 1)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(H + 1)], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        if panel.lines:
            for b in range(panel.lines, max(H, W), panel.lines):
                if b < H:
                    ax.axhline(b - 0.5, color="black", linewidth=1.2)
                if b < W:
                    ax.axvline(b - 0.5, color="black", linewidth=1.2)
        keys = "all keys" if panel.weights else f"{int(v.sum())} keys"
        ax.set_title(f"{panel.title}\n{keys}", fontsize=8.5)
    fig.suptitle(figure.caption, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return values


def _same_pixels(a: Path, b: Path) -> bool:
    import matplotlib.image
    import numpy as np

    return a.is_file() and b.is_file() and np.array_equal(matplotlib.image.imread(a), matplotlib.image.imread(b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DIR, help=f"folder for the PNGs (default {OUT_DIR})")
    names = [f.name for f in FIGURES]
    ap.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"some of: {', '.join(names)}")
    ap.add_argument("--check", action="store_true",
                    help="draw into a temporary folder and fail (exit 1) if a PNG in --out differs or is missing")
    args = ap.parse_args(argv)
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for figure in FIGURES:
            if args.only and figure.name not in args.only:
                continue
            path = (Path(tmp) if args.check else args.out) / f"{figure.name}.png"
            values = draw(figure, path)
            counts = ", ".join("all" if p.weights else str(int(v.sum())) for p, v in zip(figure.panels, values))
            if not args.check:
                print(f"wrote {path} (keys per panel: {counts})")
            elif not _same_pixels(path, args.out / path.name):
                stale.append(path.name)
    if stale:
        print(f"out of date in {args.out}: {', '.join(stale)} (run python tools/draw_mixers.py)")
        return 1
    if args.check:
        print(f"{args.out}: every figure is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
