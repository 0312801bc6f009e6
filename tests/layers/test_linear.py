"""zoo.layers.Linear owns its fast path: nn.Linear's parameters and values, hooks, wrappers, parametrize and
training mode work as with nn.Linear, and the dispatcher's decision is kept per module and input signature."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from zoo import ops
from zoo.layers import Linear, Mlp
from zoo.layers.mlp import linear_act
from zoo.ops import _dispatch

ONEDNN = torch.backends.mkldnn.is_available()


@pytest.fixture(autouse=True)
def _fresh_dispatcher():
    _dispatch.refresh()
    yield
    _dispatch.refresh()


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the calls that reach the oneDNN path of linear (its registered function, wrapped)."""
    calls = []
    impl = _dispatch._REGISTRY["linear"]["onednn"]

    def spy(*args):
        calls.append(args[0].shape)
        return impl.fn(*args)

    monkeypatch.setitem(_dispatch._REGISTRY["linear"], "onednn", _dispatch.Impl("onednn", spy, impl.supports))
    _dispatch.refresh()
    return calls


def _pair(bias=True):
    torch.manual_seed(0)
    plain = nn.Linear(16, 24, bias=bias)
    fc = Linear(16, 24, bias=bias)
    fc.load_state_dict(plain.state_dict())  # strict: the same keys
    return plain, fc


@pytest.mark.parametrize("bias", [True, False])
def test_same_parameters_and_values_as_nn_linear(bias):
    plain, fc = _pair(bias)
    assert isinstance(fc, nn.Linear)
    assert list(fc.state_dict()) == list(plain.state_dict())
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(fc(x), plain(x))  # training mode, grad on
    fc.eval()
    with torch.no_grad():
        for _ in range(3):  # the first call decides, the later ones reuse the decision
            torch.testing.assert_close(fc(x), plain(x))
        torch.testing.assert_close(fc(x, act="gelu_tanh"), F.gelu(plain(x), approximate="tanh"))
    with pytest.raises(ValueError, match="input has 8 features"), torch.no_grad():
        fc(torch.randn(2, 8))
    with pytest.raises(ValueError, match="unknown activation"), torch.no_grad():
        fc(x, act="tanh")


def test_forward_hooks_fire_on_the_module_and_inside_mlp():
    plain, fc = _pair()
    fc.eval()
    x = torch.randn(4, 16)
    seen, pre = [], []
    fc.register_forward_hook(lambda m, i, o: seen.append(o))
    fc.register_forward_pre_hook(lambda m, i: pre.append(i[0].shape))
    with torch.no_grad():
        for _ in range(2):
            out = fc(x)
    assert len(seen) == 2 and len(pre) == 2 and torch.equal(seen[-1], out)

    mlp = Mlp(16, 32, act_layer="gelu").eval()
    hidden = []
    mlp.fc1.register_forward_hook(lambda m, i, o: hidden.append(o))
    with torch.no_grad():
        y = mlp(x)
        # fused: fc1's call returns the activated hidden layer, and that is what the hook sees
        torch.testing.assert_close(hidden[0], F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)))
        torch.testing.assert_close(y, mlp.fc2(hidden[0]))


def test_global_module_hooks_fire():
    _, fc = _pair()
    calls = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    try:
        with torch.no_grad():
            fc.eval()(torch.randn(2, 16))
            linear_act(nn.Linear(16, 4), torch.randn(2, 16), nn.ReLU())  # a plain nn.Linear: modules as they are
    finally:
        handle.remove()
    assert calls == ["Linear", "Linear", "ReLU"]


class LoRA(nn.Module):
    """A wrapper as PEFT puts in place of a Linear: base(x) + B(A(x))."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base
        self.a = nn.Linear(base.in_features, rank, bias=False)
        self.b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.b.weight)

    def forward(self, x):
        return self.base(x) + self.b(self.a(x))


def test_a_lora_style_wrapper_replacing_fc1_runs_unfused():
    torch.manual_seed(0)
    mlp = Mlp(16, 32, act_layer="gelu_tanh").eval()
    x = torch.randn(2, 7, 16)
    mlp.fc1 = LoRA(mlp.fc1)
    with torch.no_grad():
        out = mlp(x)
        want = mlp.fc2(F.gelu(mlp.fc1.base(x) + mlp.fc1.b(mlp.fc1.a(x)), approximate="tanh"))
    torch.testing.assert_close(out, want)
    sd = mlp.state_dict()
    assert "fc1.base.weight" in sd and "fc1.a.weight" in sd


def test_parametrized_weight_is_used_on_every_path():
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    plain, fc = _pair()
    parametrize.register_parametrization(fc, "weight", Double())
    x = torch.randn(5, 16)
    want = F.linear(x, 2 * plain.weight, plain.bias)
    torch.testing.assert_close(fc(x), want)  # training mode
    fc.eval()
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(fc(x), want)
        with ops.use_backend("onednn"):
            torch.testing.assert_close(fc(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_training_mode_takes_the_autograd_reference(onednn_calls):
    _, fc = _pair()
    x = torch.randn(4, 16)
    with ops.use_backend("onednn"):
        with torch.no_grad():
            fc.train()(x)
        assert onednn_calls == []  # training mode: the reference even when forced and under no_grad
        out = fc(x)
        out.sum().backward()  # the reference path has a backward
        assert fc.weight.grad is not None and onednn_calls == []
        with torch.no_grad():
            fc.eval()(x)
        assert len(onednn_calls) == 1  # eval + no_grad: the forced path runs


def test_eval_module_decides_once_per_signature(monkeypatch):
    decisions = []
    real = _dispatch.decide

    def counting(*args, **kw):
        decisions.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(_dispatch, "decide", counting)
    _, fc = _pair()
    fc.eval()
    x = torch.randn(2, 16)
    with torch.no_grad():
        for _ in range(5):
            fc(x)
        assert len(decisions) == 1 and fc._plan is not None
        plan = fc._plan
        for _ in range(3):
            fc(x)
        assert fc._plan is plan  # reused, not re-made
        fc(torch.randn(3, 16))  # another input shape: a new plan (the dispatcher's cache answers)
        assert fc._plan is not plan
        with ops.use_backend("reference"):  # another forced backend: a new decision
            fc(x)
        assert len(decisions) == 2 and ops.last_decision("linear").forced == "reference"
        fc(x)  # back to auto
        assert ops.last_decision("linear").forced is None
        _dispatch.refresh()  # a new generation: decided afresh
        fc(x)
        assert len(decisions) == 3


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_explain_reports_the_path_of_kept_decisions():
    fc = Linear(64, 256).eval()
    big, small = torch.randn(256, 64), torch.randn(2, 64)
    with torch.no_grad():
        fc(small)
        fc(small)
        assert ops.last_path("linear") == "reference"
        fc(big)  # ONEDNN_MIN_MACS reached: oneDNN, through zoo.ops.linear's own cache on every call
        assert ops.last_path("linear") == "onednn" and fc._plan is None
        fc(small)
        fc(small)
        assert ops.last_path("linear") == "reference"
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a big linear re-reads autocast on each call
            assert fc(big).dtype == torch.bfloat16 and ops.last_path("linear") == "reference"
    assert "ran reference (cpu, float32, auto, eager)" in ops.explain()


def test_eval_with_grad_enabled_trains_through_the_reference():
    plain, fc = _pair()
    fc.eval()
    x = torch.randn(300, 16)
    fc(x).square().sum().backward()
    plain(x).square().sum().backward()
    assert ops.last_path("linear") == "reference"
    torch.testing.assert_close(fc.weight.grad, plain.weight.grad)


def test_traced_and_compiled_graphs():
    import torch._dynamo as dynamo

    _, fc = _pair()
    fc.eval()
    x = torch.randn(300, 16)
    with torch.no_grad():
        fc(x)  # a kept decision must not leak into a trace
        traced = torch.jit.trace(fc, x)
        assert "mkldnn" not in str(traced.graph)
        torch.testing.assert_close(traced(x[:7]), F.linear(x[:7], fc.weight, fc.bias))
        dynamo.reset()
        report = dynamo.explain(lambda t: fc(t, act="gelu"))(x)
    assert report.graph_break_count == 0, report.break_reasons
