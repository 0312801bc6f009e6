"""Checks shared by the layer tests (as fixtures: the tests import with ``--import-mode=importlib``)."""

from __future__ import annotations

import pytest
import torch


def _assert_backward_is_the_derivative(m, x, directions=3, eps=1e-6):
    """The input gradient of ``(w * m(x)).sum()`` (random ``w``) against central differences of the forward
    along random directions ``u`` (float64): ``<grad, u> == (L(x + eps u) - L(x - eps u)) / 2 eps``."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(m(x).shape, generator=g, dtype=x.dtype)

    def loss(z):
        return (m(z) * w).sum()

    (grad,) = torch.autograd.grad(loss(x), x)
    for _ in range(directions):
        u = torch.randn(x.shape, generator=g, dtype=x.dtype)
        numeric = (loss(x + eps * u) - loss(x - eps * u)).detach() / (2 * eps)
        torch.testing.assert_close((grad * u).sum(), numeric, rtol=1e-6, atol=1e-9)


@pytest.fixture
def assert_backward_is_the_derivative():
    """``assert_backward_is_the_derivative(module, x)``: the module's input gradient is the derivative of its
    forward (float64 central differences along random directions; catches a gradient 1% off, which
    ``gradcheck(fast_mode=True)`` missed for conv + norm)."""
    return _assert_backward_is_the_derivative
