"""timm's channels_last convention: ``model.to(memory_format=torch.channels_last)`` with a channels_last input
gives the contiguous model's output, for every family (the Agent models had rank-5 bias parameters once)."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo

# one model per family (and per Agent flavour: Swin, PVT, DeiT); the nano sizes where the family has one
MODELS = [
    "maxvit_nano",
    "biformer_nano",
    "crossformer_nano",
    "agent_swin_nano",
    "agent_pvt_t",
    "agent_deit_t",
    "nat_nano",
    "dinat_nano",
    "hybrid_nat_biformer_nano",
]


def test_every_family_is_covered():
    families = {timm.models.model_entrypoint(n).__module__ for n in zoo.list_models()}
    covered = {timm.models.model_entrypoint(n).__module__ for n in MODELS}
    assert families == covered, f"families without a channels_last test: {sorted(families - covered)}"


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_output_equals_contiguous(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        model.to(memory_format=torch.channels_last)
        assert all(p.dim() < 5 for p in model.parameters())
        assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                   for p in model.parameters()), "no parameter was converted"
        got = model(x.to(memory_format=torch.channels_last))
        feats = timm.create_model(name, features_only=True).eval().to(memory_format=torch.channels_last)
        maps = feats(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert [m.shape[1] for m in maps] == feats.feature_info.channels()
