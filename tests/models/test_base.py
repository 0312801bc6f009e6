"""The shared skeleton, with a small config of test-only parts."""

import pytest
import torch
from torch import nn

from zoo.layers import Block, PartitionAttention
from zoo.models import Backbone, NetCfg, StageCfg, register_block, register_downsampler, register_stem


class _Patch(nn.Module):
    def __init__(self, i, o, stride, dd):
        super().__init__()
        self.proj = nn.Conv2d(i, o, 3 if stride == 2 else 4, stride, 1 if stride == 2 else 0, **dd)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


class _Down(_Patch):
    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2))


@register_stem("_test_patch")
def _stem(in_chans, out_dim, device=None, dtype=None):
    return _Patch(in_chans, out_dim, 4, dict(device=device, dtype=dtype))


@register_downsampler("_test_down")
def _down(in_dim, out_dim, device=None, dtype=None):
    return _Down(in_dim, out_dim, 2, dict(device=device, dtype=dtype))


@register_block("_test_window")
def _block(dim, *, index, depth, stage, drop_path, heads, device=None, dtype=None):
    mode = "window" if index % 2 == 0 else "grid"
    mixer = PartitionAttention(dim, heads, mode, 4, device=device, dtype=dtype)
    return Block(dim, mixer, drop_path=drop_path, device=device, dtype=dtype)


def _cfg(head="classifier"):
    dims = (8, 16, 24, 32)
    stages = tuple(
        StageCfg(2, d, "_test_window", dict(heads=2), None if i == 0 else "_test_down") for i, d in enumerate(dims)
    )
    return NetCfg("_test_patch", stages, drop_path_rate=0.1, head=head, head_hidden_size=20,
                  no_weight_decay=("norm1.weight",))


@pytest.mark.parametrize("head", ["classifier", "norm_mlp"])
def test_forward_shapes_and_features(head):
    torch.manual_seed(0)
    m = Backbone(_cfg(head), num_classes=5).eval()
    x = torch.randn(2, 3, 70, 45)  # odd, non-square: the blocks pad and crop
    assert m(x).shape == (2, 5)
    feats = m.forward_features(x)
    assert feats.shape == (2, 3, 2, 32)  # 70 -> 17 -> 9 -> 5 -> 3 ; 45 -> 11 -> 6 -> 3 -> 2
    inter = m.forward_intermediates(x, intermediates_only=True)
    assert [t.shape[1] for t in inter] == [8, 16, 24, 32]
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32]
    final, inter2 = m.forward_intermediates(x, indices=[1, 3], norm=True)
    torch.testing.assert_close(final, feats)
    torch.testing.assert_close(inter2[1], feats.permute(0, 3, 1, 2))
    pre = m.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, m.head_hidden_size)
    assert m.head_hidden_size == (20 if head == "norm_mlp" else 32)


def test_reset_classifier_prune_and_grad_checkpointing():
    torch.manual_seed(0)
    m = Backbone(_cfg(), num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = m(x)
    m.set_grad_checkpointing(True)
    torch.testing.assert_close(m(x), ref)
    m.reset_classifier(0)
    assert m(x).shape == (1, 32)
    m.reset_classifier(0, "")
    assert m(x).shape == (1, 2, 2, 32)
    kept = m.prune_intermediate_layers([0, 1])
    assert kept == [0, 1] and len(m.stages) == 2 and m.num_features == 16


def test_no_weight_decay_and_group_matcher():
    m = Backbone(_cfg(), num_classes=5)
    nwd = m.no_weight_decay()
    assert nwd and all("norm1.weight" in n for n in nwd)
    names = {n for n, _ in m.named_parameters()}
    assert nwd <= names
    from timm.models._manipulate import group_parameters

    groups = group_parameters(m, m.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1


def test_backward_reaches_every_parameter():
    m = Backbone(_cfg(), num_classes=5).train()
    m(torch.randn(2, 3, 64, 64)).mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_bad_inputs():
    m = Backbone(_cfg(), num_classes=5).eval()
    with pytest.raises(ValueError, match="3-D tensor.*unsqueeze"):
        m(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="channels-last"):
        m(torch.randn(1, 64, 64, 3))
    with pytest.raises(ValueError, match="smaller than the minimum 32x32"):
        m(torch.randn(1, 3, 16, 64))
    x = torch.randn(2, 3, 64, 64)
    x[1, 2, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"batch 1, channel 2, pixel \(5, 7\)"):
        m(x)
    with pytest.raises(TypeError):
        Backbone(_cfg(), not_an_arg=1)


def test_meta_device_build():
    with torch.device("meta"):
        m = Backbone(_cfg(), num_classes=5)
    assert all(p.is_meta for p in m.parameters())
    out = m(torch.randn(1, 3, 64, 64, device="meta"))
    assert out.shape == (1, 5)


def test_stage_strides_set_feature_info():
    """A stem of another stride and stages that stride in their blocks (MaxViT) say so in the config; the
    strides are feature_info bookkeeping and stay out of the weights' architecture facts."""
    from zoo.models._pretrained import architecture_facts

    cfg = _cfg()
    assert [f["reduction"] for f in Backbone(cfg).feature_info] == [4, 8, 16, 32]
    strided = cfg.replace(stem_stride=2, stages=tuple(s.__class__(**{**s.__dict__, "stride": 2}) for s in cfg.stages))
    m = Backbone(strided)
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32]
    assert [f["reduction"] for f in Backbone(cfg.replace(stem_stride=8)).feature_info] == [8, 16, 32, 64]
    assert architecture_facts(m) == architecture_facts(Backbone(cfg))


def test_maxvit_unpooled_head_output_is_channels_last():
    import timm

    m = timm.create_model("maxvit_nano", num_classes=3, global_pool="").eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 96)).shape == (1, 2, 3, 3)
