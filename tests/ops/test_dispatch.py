import json
import warnings

import pytest
import torch

import zoo.ops as ops
from zoo.ops import _dispatch
from zoo.ops import neighborhood as nb
from zoo.ops import triton as zt

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_dispatcher():
    """Each test starts and ends with ZOO_BACKEND, the record and the caches as they are on disk/in os.environ
    (monkeypatch undoes its changes before this fixture's teardown runs refresh)."""
    _dispatch.refresh()
    yield
    _dispatch.refresh()


def test_explain_lists_backends_and_why_the_other_paths_did_not_run():
    status = ops.backend_status()
    assert status["reference"][0] and status["sdpa"][0]
    assert set(status) == set(ops.BACKENDS)
    assert "not called yet" in ops.explain()
    q = k = v = torch.randn(1, 1, 4, 8)
    ops.attention(q, k, v)
    text = ops.explain()
    for name in ops.BACKENDS:
        assert name in text
    block = text[text.index("  attention "):]
    assert "ran sdpa (cpu, float32, auto, eager)" in block
    assert "reference: ranked below sdpa in the cpu order" in block
    assert "validation record (validated.json): 0 entries" in text


def test_use_backend_nests_and_restores():
    assert ops.forced_backend() is None
    with ops.use_backend("reference"):
        assert ops.forced_backend() == "reference"
        with ops.use_backend("sdpa", strict=True):
            assert ops.forced_backend() == "sdpa"
            assert "forced: sdpa by use_backend, strict" in ops.explain()
        assert ops.forced_backend() == "reference"
    assert ops.forced_backend() is None


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown backend"):
        with ops.use_backend("cudnn"):
            pass


def test_env_var_is_read_once_and_refresh_rereads_it(monkeypatch):
    q = k = v = torch.randn(1, 1, 4, 8)
    monkeypatch.setenv("ZOO_BACKEND", "reference")
    ops.attention(q, k, v)
    assert ops.last_path("attention") == "sdpa"  # not re-read per call
    ops.refresh()
    assert ops.forced_backend() == "reference"
    ops.attention(q, k, v)
    assert ops.last_path("attention") == "reference"
    assert "forced: reference by ZOO_BACKEND='reference'" in ops.explain()
    with ops.use_backend(None):  # None: what ZOO_BACKEND says
        assert ops.forced_backend() == "reference"
    with ops.use_backend("sdpa"):  # the context manager wins
        ops.attention(q, k, v)
    assert ops.last_path("attention") == "sdpa"
    monkeypatch.setenv("ZOO_BACKEND", "nope")
    ops.refresh()
    with pytest.raises(ValueError, match="ZOO_BACKEND='nope' is not a backend"):
        ops.attention(q, k, v)


def test_forced_backend_missing_for_op_falls_back_and_says_so():
    q = k = v = torch.randn(1, 1, 4, 8)
    with ops.use_backend("natten"):  # attention has no natten path: falls back to the CPU default
        ops.attention(q, k, v)
    d = ops.last_decision("attention")
    assert d.impl.backend == "sdpa" and d.fell_back
    assert dict(d.refused)["natten"] == ("attention has no natten path (its paths: reference, sdpa, triton)",)
    assert "forced natten -> FELL BACK" in ops.explain()
    with ops.use_backend("natten", strict=True):  # strict applies to ops that have the path; this one has not
        ops.attention(q, k, v)
    assert ops.last_path("attention") == "sdpa"


def test_strict_raises_with_the_reasons_instead_of_falling_back():
    q, k, v = (torch.randn(1, 2, 4, 4, 8, requires_grad=True) for _ in range(3))
    with ops.use_backend("flex"):  # CPU flex has no backward: falls back, recorded
        ops.routed_attention(q, k, v, 2, 2)
    d = ops.last_decision("routed_attention")
    assert d.fell_back and d.impl.backend == "sdpa"
    assert "no CPU backward" in dict(d.refused)["flex"][0]
    with ops.use_backend("flex", strict=True):
        with pytest.raises(ops.BackendUnavailableError, match=r"use_backend\('flex', strict=True\).*no CPU backward"):
            ops.routed_attention(q, k, v, 2, 2)
        with torch.no_grad():  # flex can run a forward on CPU: strict is satisfied
            ops.routed_attention(q, k, v, 2, 2)
    assert ops.last_path("routed_attention") == "flex"


def test_decision_is_made_once_per_signature(monkeypatch):
    calls = []
    real = _dispatch.decide

    def counting(*args, **kw):
        calls.append(args[:3])
        return real(*args, **kw)

    monkeypatch.setattr(_dispatch, "decide", counting)
    q = k = v = torch.randn(1, 1, 4, 8)
    for _ in range(5):
        ops.attention(q, k, v)
    assert len(calls) == 1
    ops.attention(q.double(), k.double(), v.double())  # a new dtype: a new decision
    with ops.use_backend("reference"):  # a forced backend: a new decision
        ops.attention(q, k, v)
        ops.attention(q, k, v)
    assert len(calls) == 3
    assert ops.last_path("attention") == "reference"


def test_auto_on_cpu_picks_sdpa():
    q = k = v = torch.randn(1, 1, 4, 8)
    ops.attention(q, k, v)
    assert ops.last_path("attention") == "sdpa"
    impl = _dispatch.select("attention", CPU, torch.float32)
    assert impl.backend == "sdpa"


# ------------------------------------------------------------------------------------------- CUDA ordering
@pytest.fixture
def fake_gpu(monkeypatch):
    """Every fast path "available" on a pretend sm_90 GPU: the selection logic runs, no CUDA tensor is made."""
    monkeypatch.setattr(zt, "available", lambda device=None: True)
    monkeypatch.setattr(nb, "has_module", lambda name: True)
    monkeypatch.setattr(_dispatch, "device_arch", lambda device: "sm_90" if device.type == "cuda" else device.type)
    _dispatch.refresh()


_ATTN = dict(nq=49, nk=49, d=32, dv=32, ndim=4, has_bias=True, needs_grad=False)
_NA = dict(tokens=196, has_rpb=True, dropout=False, needs_grad=False)
_NA_NORPB = dict(tokens=196, has_rpb=False, dropout=False, needs_grad=False)
_ROUTED = dict(needs_grad=False, dense=False)


def test_cuda_defaults_skip_unvalidated_kernels(fake_gpu):
    """With an empty validation record, triton/natten/flex are never a CUDA default, whatever is installed."""
    assert _dispatch.validation_records() == []
    cases = [("attention", _ATTN), ("neighborhood_attention2d", _NA), ("neighborhood_attention2d", _NA_NORPB),
             ("neighborhood_attention1d", _NA_NORPB), ("routed_attention", _ROUTED)]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for op, sig in cases:
            d = _dispatch.decide(op, CUDA, dtype, **sig)
            assert d.impl.backend == "sdpa", (op, sig, d.describe())
            gated = 0
            for name, why in d.refused:
                impl = _dispatch._REGISTRY[op][name]
                if name in _dispatch.GATED and not impl.supports(CUDA, dtype, **sig):  # its own rules allow it
                    assert why[-1].startswith(f"not validated on sm_90/{str(dtype)[6:]}"), (op, name, why)
                    gated += 1
            assert gated >= 1, (op, sig, d.describe())
    assert _dispatch.decide("linear", CUDA, torch.bfloat16, small=True).impl.backend == "reference"


def _write_record(tmp_path, monkeypatch, *entries):
    path = tmp_path / "validated.json"
    path.write_text(json.dumps({"records": [dict(zip(("op", "backend", "arch", "dtype"), e)) for e in entries]}))
    monkeypatch.setattr(_dispatch, "VALIDATION_RECORD", path)
    _dispatch.refresh()


def test_a_validation_record_makes_a_kernel_the_default_for_its_arch_and_dtype_only(fake_gpu, tmp_path,
                                                                                    monkeypatch):
    _write_record(tmp_path, monkeypatch, ("attention", "triton", "sm_90", "bfloat16"),
                  ("neighborhood_attention2d", "natten", "sm_90", "bfloat16"))
    assert _dispatch.decide("attention", CUDA, torch.bfloat16, **_ATTN).impl.backend == "triton"
    assert _dispatch.decide("attention", CUDA, torch.float16, **_ATTN).impl.backend == "sdpa"
    # the kernel's own CUDA rule still applies: no bias -> SDPA's flash kernels
    assert _dispatch.decide("attention", CUDA, torch.bfloat16, **{**_ATTN, "has_bias": False}).impl.backend == "sdpa"
    assert _dispatch.decide("neighborhood_attention2d", CUDA, torch.bfloat16, **_NA_NORPB).impl.backend == "natten"
    d = _dispatch.decide("neighborhood_attention2d", CUDA, torch.bfloat16, **_NA)  # RPB: natten cannot
    assert d.impl.backend == "sdpa" and "NATTEN >= 0.20 has none" in dict(d.refused)["natten"][0]
    monkeypatch.setattr(_dispatch, "device_arch", lambda device: "sm_80")  # another GPU: not validated
    _dispatch.refresh()
    assert _dispatch.decide("attention", CUDA, torch.bfloat16, **_ATTN).impl.backend == "sdpa"
    assert "zoo/ops/validated.json" in ops.explain() or "validated.json" in ops.explain()


def test_malformed_validation_record_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "validated.json"
    path.write_text(json.dumps({"records": [{"op": "attention", "backend": "triton"}]}))
    monkeypatch.setattr(_dispatch, "VALIDATION_RECORD", path)
    with pytest.raises(ValueError, match=r"record 0 lacks \['arch', 'dtype'\]"):
        _dispatch.validation_records()


def test_committed_record_names_registered_paths_only():
    for r in _dispatch.validation_records():
        assert r["backend"] in _dispatch._REGISTRY[r["op"]], r
        assert r["backend"] in _dispatch.GATED, r


def test_opted_in_kernel_that_cannot_run_on_the_gpu_falls_back_with_one_warning(fake_gpu):
    """Forced triton on a (pretend) GPU with no record: the first call self-checks; here building the CUDA
    sample fails (no CUDA in this process), which is refused like a kernel that fails to compile."""
    with ops.use_backend("triton"):
        with pytest.warns(RuntimeWarning, match="triton path of attention failed its self-check"):
            impl = _dispatch.select("attention", CUDA, torch.bfloat16, **_ATTN)
        assert impl.backend == "sdpa"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the second call neither checks again nor warns
            assert _dispatch.select("attention", CUDA, torch.bfloat16, **{**_ATTN, "nq": 16}).backend == "sdpa"
    assert ops.last_decision("attention").fell_back
    with ops.use_backend("triton", strict=True):
        with pytest.raises(ops.BackendUnavailableError, match="self-check failed"):
            _dispatch.select("attention", CUDA, torch.bfloat16, **_ATTN)


# ------------------------------------------------------------------------------------------- self-check
@pytest.fixture
def fake_op():
    """An op with a reference (2x) and a "triton" path whose function the test sets."""
    op = "_test_double"
    kernel = {"fn": None}
    _dispatch.register(op, "reference")(lambda x: 2 * x)
    _dispatch.register(op, "triton")(lambda x: kernel["fn"](x))
    _dispatch.register_sample(op, lambda device, dtype, backend: (torch.arange(6.0).to(device, dtype),))
    yield op, kernel
    _dispatch._REGISTRY.pop(op)
    _dispatch._SAMPLES.pop(op)
    _dispatch.refresh()


def test_self_check_refuses_a_kernel_that_returns_wrong_values(fake_op):
    op, kernel = fake_op
    kernel["fn"] = lambda x: 2 * x + 0.5
    x = torch.ones(3)
    assert _dispatch.select(op, CPU, torch.float32).backend == "reference"  # triton is not a CPU default
    with ops.use_backend("triton"):
        with pytest.warns(RuntimeWarning, match="failed its self-check on cpu"):
            impl = _dispatch.select(op, CPU, torch.float32)
        assert impl.backend == "reference"
        torch.testing.assert_close(impl.fn(x), 2 * x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _dispatch.select(op, CPU, torch.float32).backend == "reference"
        d = _dispatch.last_decision(op)
        assert d.fell_back and "self-check failed (AssertionError" in dict(d.refused)["triton"][0]
        # another dtype is another first call: checked (and refused) again
        with pytest.warns(RuntimeWarning, match="float64"):
            assert _dispatch.select(op, CPU, torch.float64).backend == "reference"
    with ops.use_backend("triton", strict=True):
        with pytest.raises(ops.BackendUnavailableError, match="self-check failed"):
            _dispatch.select(op, CPU, torch.float32)


def test_self_check_passes_a_right_kernel_and_refuses_one_that_raises(fake_op):
    op, kernel = fake_op
    kernel["fn"] = lambda x: x + x
    with ops.use_backend("triton"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.select(op, CPU, torch.float32).backend == "triton"
    kernel["fn"] = lambda x: (_ for _ in ()).throw(RuntimeError("PTX compile error: boom"))
    _dispatch.refresh()
    with ops.use_backend("triton"), pytest.warns(RuntimeWarning, match="RuntimeError: PTX compile error: boom"):
        assert _dispatch.select(op, CPU, torch.float32).backend == "reference"


def test_every_gated_path_has_a_self_check_sample_the_reference_runs():
    for op, impls in _dispatch._REGISTRY.items():
        if not any(name in _dispatch.GATED for name in impls):
            continue
        assert op in _dispatch._SAMPLES, f"{op} has a gated path but no self-check sample"
        for backend in impls:
            args = _dispatch._SAMPLES[op](CPU, torch.float32, backend)
            out = impls["reference"].fn(*args)
            assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("op", ["routed_attention", "neighborhood_attention1d", "neighborhood_attention2d"])
def test_self_check_passes_the_flex_paths_on_cpu(op):
    """The self-check of a real gated path that is right (FlexAttention runs forward on the CPU): it passes,
    so the samples and the comparison are sound, and a forced flex then runs without a warning."""
    impl = _dispatch._REGISTRY[op]["flex"]
    assert _dispatch._run_self_check(op, impl, CPU, torch.float32) is None


def test_torch_export_takes_the_reference_path_by_itself():
    """Under torch.export (also the dynamo ONNX exporter) the ops pick their export-safe path without the caller
    forcing a backend: the reference (SDPA with a learnable bias is mis-traced there); a forced sdpa is honoured."""

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(1, 2, 4, 4))

        def forward(self, q):
            return ops.attention(q, q, q, self.bias)

    q = torch.randn(1, 2, 4, 8)
    ops.attention(q, q, q, torch.zeros(1, 2, 4, 4))
    assert ops.last_path("attention") == "sdpa"  # eager default on CPU

    def has_sdpa(ep) -> bool:
        return any("scaled_dot_product" in str(n.target) for n in ep.graph.nodes)

    assert not has_sdpa(torch.export.export(Attn(), (q,)))
    with torch.no_grad():  # TorchScript (inference): sdpa, recorded as an export decision
        torch.jit.trace(Attn(), (q,), check_trace=False)
    assert ops.last_decision("attention").mode == "export" and ops.last_path("attention") == "sdpa"
    with ops.use_backend("sdpa"):
        assert has_sdpa(torch.export.export(Attn(), (q,)))


def test_dispatch_under_torch_compile_reads_no_file():
    """The validation record is read at import and by refresh(), never while a dispatch is traced: a file read
    there broke BiFormer's graph into 12 under torch.compile (the routed op's dispatch checks the record)."""
    import torch._dynamo

    from zoo.layers import BiLevelRoutingAttention

    _dispatch.refresh()  # forgets every decision, so the traced call decides (and checks the record) anew
    try:
        layer = BiLevelRoutingAttention(32, num_heads=2, n_win=2, topk=2).eval()
        torch._dynamo.reset()
        with torch.no_grad():
            out = torch._dynamo.explain(layer)(torch.randn(1, 8, 8, 32))
        assert out.graph_break_count == 0, [str(r.reason)[:200] for r in out.break_reasons]
    finally:
        _dispatch.refresh()
