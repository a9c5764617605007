"""Backend selection: CPUID, the context manager, explicit arguments and the reasons given, on any machine
(CPUs without a feature are simulated), plus bit-exactness of every runnable backend on training layouts."""

from __future__ import annotations

import threading

import pytest
import torch
from tests.helpers import BACKENDS, NATIVE_ISAS

import lowbit.ops as ops
from lowbit.ops import backends, native

needs_native = pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native")


@pytest.fixture
def fresh_auto():
    """Forget the once-per-process choice before and after a test that simulates another CPU."""
    backends._auto.cache_clear()
    yield
    backends._auto.cache_clear()


def _exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.long() @ b.long().t()).to(torch.int32)


def test_unknown_backend_names_the_choices():
    a = torch.zeros(2, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.int_matmul(a, a, bits=8, backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of"), backends.use_backend("fastest"):
        pass


def test_amx_is_reported_unshipped_not_silently_dropped():
    reason = backends._why_not("amx")
    assert "no AMX kernel is shipped" in reason
    with pytest.raises(RuntimeError, match="no AMX kernel"):
        ops.int_matmul(
            torch.zeros(1, 1, dtype=torch.int8), torch.zeros(1, 1, dtype=torch.int8), bits=8, backend="amx"
        )
    assert "amx" in ops.backend().reasons


@needs_native
def test_cpu_without_vnni_falls_back_to_avx2_and_says_why(monkeypatch, fresh_auto):
    lib = native.lib()

    class NoVnni:
        def __getattr__(self, name):
            return getattr(lib, name)

        @staticmethod
        def lowbit_cpu_has_avx512vnni():
            return 0

    monkeypatch.setattr(native, "lib", lambda: NoVnni())
    monkeypatch.setattr(backends, "_onednn_is_fast", lambda: False)
    report = ops.backend()
    assert report.chosen == "avx2"
    assert "lacks AVX-512 VNNI" in report.reasons["avx512-vnni"]
    assert "no fast kernel" in report.reasons["onednn"]
    with pytest.raises(RuntimeError, match="lacks AVX-512 VNNI"):
        backends.resolve("avx512-vnni")
    assert backends.resolve("native") == "avx2"


def test_no_native_library_picks_onednn_only_where_it_is_fast(monkeypatch, fresh_auto):
    monkeypatch.setattr(native, "_load", lambda: (None, "simulated: library missing"))
    monkeypatch.setattr(backends, "_onednn_is_fast", lambda: True)
    assert ops.backend().chosen == "onednn"
    backends._auto.cache_clear()
    monkeypatch.setattr(backends, "_onednn_is_fast", lambda: False)
    assert ops.backend().chosen == "reference"


def test_auto_choice_is_measured_once(monkeypatch, fresh_auto):
    """Where two fast backends qualify, the faster one on this CPU wins, measured once per process."""
    calls = []
    times = {"onednn": 1.0}

    def fake_time(first, second):
        calls.append((first, second))
        return times.get(first, 2.0), times.get(second, 2.0)

    if not native.available():
        pytest.skip(native.why_not_native())
    monkeypatch.setattr(backends, "_onednn_is_fast", lambda: True)
    monkeypatch.setattr(backends, "_time_pair", fake_time)
    assert ops.backend().chosen == "onednn"
    assert "slower on this CPU" in ops.backend().reasons[backends.resolve("native")]
    assert len(calls) == 1  # the second report reused the cached measurement
    backends._auto.cache_clear()
    times["onednn"] = 1.7  # faster, but within the margin: lowbit's own kernel stays
    assert ops.backend().chosen == backends.resolve("native")


@pytest.mark.parametrize("backend", BACKENDS)
def test_use_backend_routes_auto_calls(gen, backend):
    a = torch.randint(-128, 128, (9, 21), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (5, 21), generator=gen, dtype=torch.int8)
    with backends.use_backend(backend) as chosen:
        assert chosen == backend
        assert ops.backend().chosen == backend
        assert torch.equal(ops.int_matmul(a, b, bits=8), _exact(a, b))
    assert ops.backend().chosen != backend or backend == backends._auto()[0]


def test_use_backend_is_per_thread():
    seen = {}

    def other():
        seen["other"] = ops.backend().chosen

    with backends.use_backend("reference"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert ops.backend().chosen == "reference"
    assert seen["other"] == backends._auto()[0]


def test_cpu_summary_names_model_and_flags():
    text = backends.cpu_summary()
    name, flags = backends.cpu()
    assert name in text
    if "avx2" in flags:
        assert "avx2" in text


@pytest.mark.parametrize("backend", NATIVE_ISAS)
@pytest.mark.parametrize("k", [1, 4, 1023, 1024, 1025, 2049, 3073])  # around each ISA's K-slice boundaries
@pytest.mark.parametrize("n", [1, 16, 17, 63, 64, 65, 80])  # 1..5 B panels: every VNNI remainder width
def test_native_isas_exact_across_panels_and_slices(gen, backend, k, n):
    a = torch.randint(-128, 128, (13, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    assert torch.equal(ops.int_matmul(a, b, bits=8, backend=backend), _exact(a, b))
    a4, b4 = (t.clamp(-8, 7) for t in (a, b))
    assert torch.equal(ops.int_matmul(a4, b4, bits=4, backend=backend), _exact(a4, b4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_layouts_and_mixed_bits_exact(gen, backend):
    """The three training products (nt, nn, tn) and the 8-bit x 4-bit bit-split product, every backend."""
    c, d, n = 97, 70, 45
    x4 = torch.randint(-8, 8, (c, d), generator=gen, dtype=torch.int8)
    w4 = torch.randint(-8, 8, (n, d), generator=gen, dtype=torch.int8)
    g4 = torch.randint(-8, 8, (c, n), generator=gen, dtype=torch.int8)
    g8 = torch.randint(-128, 128, (c, n), generator=gen, dtype=torch.int8)  # merged bit-split gradient codes
    assert torch.equal(ops.int_matmul(x4, w4, bits=4, layout="nt", backend=backend), _exact(x4, w4))
    assert torch.equal(ops.int_matmul(g4, w4, bits=4, layout="nn", backend=backend), _exact(g4, w4.t()))
    assert torch.equal(ops.int_matmul(g4, x4, bits=4, layout="tn", backend=backend), _exact(g4.t(), x4.t()))
    assert torch.equal(ops.int_matmul(g8, w4, bits=8, layout="nn", backend=backend), _exact(g8, w4.t()))
    assert torch.equal(ops.int_matmul(g8, x4, bits=8, layout="tn", backend=backend), _exact(g8.t(), x4.t()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("static", [False, True])
def test_fused_linear_bit_identical_on_every_backend(gen, backend, static):
    """pack_weight + linear (fused quantize, GEMM, epilogue) equals the reference bit for bit, M large enough
    to take the fused in-GEMM quantization on the native ISAs."""
    m, k, n = 400, 130, 70
    x = torch.randn(m, k, generator=gen)
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    sw = torch.rand(n, generator=gen) + 0.5
    bias = torch.randn(n, generator=gen)
    act_scale = float(x.abs().max()) / 127 if static else None
    want = ops.linear(
        x, ops.pack_weight(w, sw, bits=8, backend="reference"), bias, act_scale=act_scale, backend="reference"
    )
    got = ops.linear(
        x, ops.pack_weight(w, sw, bits=8, backend=backend), bias, act_scale=act_scale, backend=backend
    )
    assert torch.equal(got, want)


def test_onednn_k1_degenerate_strides_exact():
    """torch 2.13's CPU _int_mm misreads a K = 1 right operand with degenerate strides; the backend copes."""
    a = torch.tensor([[3], [-5]], dtype=torch.int8)
    b = torch.tensor([[2], [-7], [11], [127], [-128]], dtype=torch.int8)  # (N, 1): its .t() has stride (1, 1)
    assert torch.equal(ops.int_matmul(a, b, bits=8, backend="onednn"), _exact(a, b))


def test_use_backend_and_report_are_public_in_lowbit_ops(gen):
    """The README's example: ``lowbit.ops.use_backend`` / ``lowbit.ops.BackendReport``."""
    w = torch.randint(-127, 128, (8, 16), generator=gen, dtype=torch.int8)
    x = torch.randn(4, 16, generator=gen)
    want = ops.linear(x, ops.pack_weight(w, 0.1, bits=8, backend="reference"), backend="reference")
    with ops.use_backend("reference") as chosen:
        assert chosen == "reference" and isinstance(ops.backend(), ops.BackendReport)
        assert torch.equal(ops.linear(x, ops.pack_weight(w, 0.1, bits=8)), want)
