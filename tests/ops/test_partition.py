import pytest
import torch

import zoo.ops as ops


def test_window_partition_groups_contiguous_tiles_and_round_trips():
    x = torch.arange(2 * 4 * 6 * 1, dtype=torch.float32).view(2, 4, 6, 1)
    w = ops.window_partition(x, (2, 3))
    assert w.shape == (2 * 2 * 2, 6, 1)
    # first window of first image: rows 0-1, cols 0-2
    assert w[0, :, 0].tolist() == [0, 1, 2, 6, 7, 8]
    # second window: rows 0-1, cols 3-5
    assert w[1, :, 0].tolist() == [3, 4, 5, 9, 10, 11]
    torch.testing.assert_close(ops.window_merge(w, (2, 3), (4, 6)), x)


def test_grid_partition_groups_dilated_pixels_and_round_trips():
    x = torch.arange(4 * 6, dtype=torch.float32).view(1, 4, 6, 1)
    g = ops.grid_partition(x, 2)  # 2x2 grid, stride (2, 3)
    assert g.shape == (2 * 3, 4, 1)
    # group (0, 0): pixels (0,0), (0,3), (2,0), (2,3)
    assert g[0, :, 0].tolist() == [0, 3, 12, 15]
    # group (0, 1): pixels (0,1), (0,4), (2,1), (2,4)
    assert g[1, :, 0].tolist() == [1, 4, 13, 16]
    torch.testing.assert_close(ops.grid_merge(g, 2, (4, 6)), x)


def test_pad_and_mask():
    x = torch.ones(1, 5, 7, 2)
    xp, pad = ops.pad_to_multiple(x, 4)
    assert xp.shape == (1, 8, 8, 2) and pad == (3, 1)
    assert xp[:, 5:].abs().sum() == 0 and xp[:, :, 7:].abs().sum() == 0
    mask = ops.pad_mask((8, 8), pad, 4, "window")
    assert mask.shape == (4, 16, 16)
    # window 0 (rows 0-3, cols 0-3) is all real; window 3 (rows 4-7, cols 4-7): real rows 4, cols 4-6
    assert (mask[0] == 0).all()
    real = (mask[3, 0] == 0).view(4, 4)
    expect = torch.zeros(4, 4, dtype=torch.bool)
    expect[0, :3] = True
    assert torch.equal(real, expect)
    assert ops.pad_mask((8, 8), (0, 0), 4, "window") is None


def test_divisibility_error_says_what_to_do():
    with pytest.raises(ValueError, match="not divisible.*pad_to_multiple"):
        ops.window_partition(torch.ones(1, 5, 6, 2), 2)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        ops.grid_partition(torch.ones(5, 6, 2), 2)
