"""Agent-DeiT on timm's ``VisionTransformer`` (zoo/models/agent_deit.py): the model inherits timm's block loop,
pruning and classifier reset, and its blocks get the patch grid of each input through the model's
``PatchGrid``, also for non-square grids, with gradient checkpointing and under ``torch.export``."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import zoo  # noqa: F401  (registers the models)
from zoo.models.agent_deit import AgentVisionTransformer

SMALL = dict(embed_dim=48, depth=3, num_heads=2, agent_num=(9, 9, 4, 4), agent_layers=2, img_size=64)


def _small(**kw) -> AgentVisionTransformer:
    torch.manual_seed(0)
    return AgentVisionTransformer(num_classes=5, **{**SMALL, **kw}).eval()


def test_timm_vit_gives_the_loops_pruning_and_head():
    model = timm.create_model("agent_deit_t", num_classes=0, device="meta")
    assert isinstance(model, VisionTransformer)
    for name in ("forward_features", "forward_head", "forward", "prune_intermediate_layers", "group_matcher"):
        assert getattr(AgentVisionTransformer, name) is getattr(VisionTransformer, name), name
    assert [f["module"] for f in model.feature_info] == [f"blocks.{i}" for i in range(12)]


def test_non_square_grids_reach_the_blocks():
    """4x3 and 3x4 patch grids (the same token count) are told apart: each forward's blocks see its grid."""
    model = _small()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        tall = model.forward_intermediates(x, intermediates_only=True)
        assert model.patch_grid.hw == (4, 3)
        wide = model.forward_intermediates(x.transpose(2, 3), intermediates_only=True)
        assert model.patch_grid.hw == (3, 4)
        nhwc = model.forward_intermediates(x, indices=[1], output_fmt="NHWC", intermediates_only=True)
    assert [tuple(m.shape) for m in tall] == [(2, 48, 4, 3)] * 3
    assert [tuple(m.shape) for m in wide] == [(2, 48, 3, 4)] * 3
    torch.testing.assert_close(nhwc[0], tall[1].permute(0, 2, 3, 1), rtol=0, atol=0)


def test_tokens_that_do_not_fill_the_grid_are_refused():
    model = _small()
    tokens = torch.randn(1, 1 + 4 * 4, 48)
    model.patch_grid.hw = (4, 3)
    with pytest.raises(ValueError, match="tokens must be"):
        model.blocks[0](tokens)


def test_grad_checkpointing_recomputes_on_its_own_grid():
    """Checkpointed blocks keep the grid of their forward: a forward on the transposed image (same token count,
    other grid) before the backward leaves the gradients those of the plain model."""
    x = torch.randn(2, 3, 64, 48)
    plain, ckpt = _small().train(), _small().train()
    ckpt.set_grad_checkpointing(True)
    plain(x).square().sum().backward()
    loss = ckpt(x).square().sum()
    with torch.no_grad():
        ckpt(x.transpose(2, 3))
    loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_pruned_model_and_features_only():
    model = _small()
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=[1], intermediates_only=True)
        assert model.prune_intermediate_layers([1]) == [1]
        pruned = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert len(model.blocks) == 2 and isinstance(model.head, torch.nn.Identity)
    torch.testing.assert_close(pruned[0], full[0], rtol=0, atol=0)
    features = timm.create_model("agent_deit_t", features_only=True, out_indices=(3, 11)).eval()
    with torch.no_grad():
        maps = features(torch.randn(0, 3, 40, 72))
    assert [tuple(m.shape) for m in maps] == [(0, 192, 3, 5)] * 2


def test_set_input_size_keeps_the_patch_size():
    model = _small()
    with pytest.raises(ValueError, match="patch size"):
        model.set_input_size(img_size=96, patch_size=8)
    model.set_input_size(img_size=96)
    assert model.img_size == (96, 96) and model.patch_embed.grid_size == (6, 6)
    assert model.blocks[0].attn.train_size == (6, 6)


def test_torch_export_keeps_the_grid_symbolic():
    """The grid the blocks read is the traced size: one exported program is right at other, non-square sizes."""
    from torch.export import Dim

    model = _small()
    ep = torch.export.export(model, (torch.randn(2, 3, 64, 64),),
                             dynamic_shapes={"x": {0: Dim("b", max=64), 2: Dim("h", min=32, max=512),
                                                   3: Dim("w", min=32, max=512)}})
    for shape in [(1, 3, 33, 47), (2, 3, 96, 48)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-4, atol=1e-4)


def test_threads_sharing_the_model_at_different_grids_get_their_own():
    """The grid is thread-local: two threads running 4x3 and 3x4 inputs at once on one model get what each
    gets alone (a grid shared between threads would hand one of them the other's layout)."""
    import threading

    model = _small()
    x = torch.randn(1, 3, 64, 48)
    inputs = {"tall": x, "wide": x.transpose(2, 3).contiguous()}
    with torch.no_grad():
        alone = {k: model(v) for k, v in inputs.items()}
    errors: list[str] = []
    barrier = threading.Barrier(2)

    def run(key):
        barrier.wait()
        for _ in range(20):
            with torch.no_grad():
                out = model(inputs[key])
            if not torch.equal(out, alone[key]):
                errors.append(key)

    threads = [threading.Thread(target=run, args=(k,)) for k in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_copies_and_pickles_keep_one_grid_per_model():
    import copy
    import io

    model = _small()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 48))
    for clone in (copy.deepcopy(model), torch.load(io.BytesIO(_saved(model)), weights_only=False)):
        assert clone.patch_grid.hw == (4, 3)
        assert all(b.grid is clone.patch_grid for b in clone.blocks) and clone.patch_grid is not model.patch_grid
        x = torch.randn(1, 3, 48, 64)
        with torch.no_grad():
            torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)


def _saved(model) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()
