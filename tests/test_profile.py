"""zoo.profile: parameter and multiply-add counts as the papers report them."""

from __future__ import annotations

import pytest
from torch import nn

from zoo.profile import count_macs, count_params, model_macs, peak_memory


def test_conv_and_linear_macs_are_exact():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    expected = 16 * 16 * 8 * 3 * 9 + 8 * 16 * 16 * 10
    assert count_macs(model, (3, 16, 16)) == expected
    assert count_params(model) == 8 * 3 * 9 + 8 + 8 * 16 * 16 * 10 + 10


def test_attention_counted_through_reference_path():
    """SDPA counts as 0 in the flop counters; the reference path makes attention visible."""
    from zoo.layers import PartitionAttention

    macs = count_macs(PartitionAttention(32, 2, partition="window", size=4), (8, 8, 32))  # [B, H, W, C] input
    tokens, dim, window = 64, 32, 16
    projections = tokens * dim * 3 * dim + tokens * dim * dim
    attention = 2 * tokens * window * dim  # q.k and attn.v inside 4x4 windows, all heads
    assert macs == projections + attention


@pytest.mark.parametrize(
    "name, gmacs",
    # the official READMEs' FLOPs (rounded to 0.1 G) at 224
    [("crossformer_tiny", 2.9), ("nat_mini", 2.7), ("maxvit_tiny", 5.6), ("agent_swin_t", 4.5), ("agent_pvt_t", 2.0)],
)
def test_paper_figures(name, gmacs):
    params, macs = model_macs(name)
    assert round(macs / 1e9, 1) == pytest.approx(gmacs, abs=0.1)
    assert params > 0


def test_peak_memory_is_the_peak_of_one_call():
    """Two 4 MB temporaries alive at once, then one freed before a third: peak 8 MB, whatever ran before (a
    larger allocation earlier in the process does not hide it, as a process-wide peak resident set would)."""
    import torch

    x = torch.randn(1000, 1000)

    def call():
        a = x * 2
        b = a + 1
        del a
        return (b @ b).sum()

    big = torch.empty(50_000_000, dtype=torch.uint8).fill_(1)  # 50 MB, freed before the measurement
    del big
    first, second = peak_memory(call), peak_memory(call)
    assert first == second
    assert 8_000_000 <= first < 8_000_000 + 4096, first
    assert 4_000_000 <= peak_memory(lambda: (x * 2).sum()) < 4_000_000 + 4096
