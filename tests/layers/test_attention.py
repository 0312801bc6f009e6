"""TokenAttention: plain multi-head self-attention over tokens, with the keys and values of timm's ViT Attention."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Attention

import zoo.ops as ops
from zoo.layers import TokenAttention


@pytest.mark.parametrize("backend", ["reference", None])
def test_token_attention_matches_timm_vit_attention(backend):
    torch.manual_seed(0)
    ref = Attention(24, num_heads=3, qkv_bias=True).eval()
    m = TokenAttention(24, 3).eval()
    assert list(m.state_dict()) == list(ref.state_dict())
    m.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 1 + 5 * 7, 24)
    with torch.no_grad(), ops.use_backend(backend):
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


def test_token_attention_refuses_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="must divide"):
        TokenAttention(10, 3)
