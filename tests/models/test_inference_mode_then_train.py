"""Regression: a model used under ``torch.inference_mode()`` must train afterwards.

Cached index tables (neighborhood windows, masks) built during an inference-mode forward were inference
tensors, so the next training step failed with "Inference tensors cannot be saved for backward" (found by
tools/bench_models.py, which times inference before the training step)."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo

NANOS = [n for n in zoo.list_models() if n.endswith("_nano")]


@pytest.mark.parametrize("name", NANOS)
def test_train_step_after_inference_mode(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3)
    x = torch.randn(2, 3, 72, 80)  # not a multiple of 32: padding and masks are built too
    with torch.inference_mode():
        model.eval()(x)
    loss = model.train()(x).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
