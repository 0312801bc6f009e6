import pytest
import torch
from torch import nn

from zoo.layers import Block, DropPath, LayerScale, Mlp, PartitionAttention, get_act_layer


def test_block_is_pre_norm_residual():
    torch.manual_seed(0)
    mixer = PartitionAttention(8, 2, "window", 2)
    blk = Block(8, mixer, mlp_ratio=2.0, layer_scale=0.5).eval()
    x = torch.randn(2, 4, 6, 8)
    y = x + 0.5 * mixer(blk.norm1(x))
    y = y + 0.5 * blk.mlp(blk.norm2(y))
    torch.testing.assert_close(blk(x), y)
    assert blk.mlp.fc1.out_features == 16
    assert isinstance(blk.ls1, LayerScale) and blk.ls1.gamma.shape == (8,)


def test_block_pos_term_added_first():
    pos = nn.Linear(4, 4)
    blk = Block(4, nn.Identity(), pos=pos).eval()
    x = torch.randn(1, 3, 3, 4)
    x1 = x + pos(x)
    x1 = x1 + blk.norm1(x1)
    x1 = x1 + blk.mlp(blk.norm2(x1))
    torch.testing.assert_close(blk(x), x1)


def test_drop_path_training_and_eval():
    dp = DropPath(0.5)
    x = torch.ones(1000, 3)
    dp.train()
    y = dp(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.4 < kept < 0.6
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0}
    dp.eval()
    assert torch.equal(dp(x), x)


def test_mlp_and_activations():
    m = Mlp(4, 8, 3, act_layer="gelu_tanh")
    assert isinstance(m.act, nn.GELU) and m.act.approximate == "tanh"
    assert m(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown activation"):
        get_act_layer("gelu_fast")
