"""Bit-exact tests of int_matmul / int_matmul_scaled against exact int64 arithmetic, on every backend."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import BACKENDS

import lowbit.ops as ops
from lowbit.ops import backends, native, reference

needs_native = pytest.mark.skipif(
    not native.available(), reason=native.why_not_native() or "native available"
)


def exact_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The oracle: int64 a @ b.T (torch's integer matmul is exact), checked to fit int32."""
    acc = a.long() @ b.long().t()
    assert acc.abs().max() < 2**31 if acc.numel() else True
    return acc.to(torch.int32)


def codes(gen: torch.Generator, shape: tuple[int, ...], bits: int, lo: int | None = None) -> torch.Tensor:
    qmin, qmax = (-128, 127) if bits == 8 else (-8, 7)
    return torch.randint(qmin if lo is None else lo, qmax + 1, shape, generator=gen, dtype=torch.int8)


def as_layout(a_mk: torch.Tensor, b_nk: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous operands in the layout's storage order (a (M,K) / (K,M); b (N,K) / (K,N))."""
    if layout == "nt":
        return a_mk, b_nk
    if layout == "nn":
        return a_mk, b_nk.t().contiguous()
    return a_mk.t().contiguous(), b_nk.t().contiguous()


SHAPES = [
    pytest.param((1, 1, 1), id="1x1x1"),
    pytest.param((7, 5, 3), id="ragged-tiny"),  # below one 6x16 tile, K not a multiple of 4
    pytest.param((13, 37, 33), id="ragged-MNK"),  # partial tiles in M and N, K tail of 1
    pytest.param((6, 16, 64), id="one-tile"),  # exactly one micro-tile
    pytest.param((100, 70, 515), id="K-across-512"),  # int4 int16 widening boundary crossed by 3
    pytest.param((33, 200, 1030), id="multi-block"),  # several M/N/K blocks with tails
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nt", "nn", "tn"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_random_exact(gen, backend, layout, bits, shape):
    m, n, k = shape
    a, b = codes(gen, (m, k), bits), codes(gen, (n, k), bits)
    x, y = as_layout(a, b, layout)
    got = ops.int_matmul(x, y, bits=bits, layout=layout, backend=backend)
    assert got.dtype == torch.int32 and got.shape == (m, n)
    assert torch.equal(got, exact_nt(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bits,k,va,vb",
    [
        pytest.param(8, 1031, -128, -128, id="int8-all-min"),  # largest products, positive
        pytest.param(8, 1031, -128, 127, id="int8-min-max"),  # largest negative
        pytest.param(8, 777, 127, 127, id="int8-all-max"),
        pytest.param(4, 512, -8, -8, id="int4-K512-min"),  # exactly one int16 accumulation block
        pytest.param(4, 513, -8, -8, id="int4-K513-min"),  # one past the widening boundary
        pytest.param(4, 1024, 7, -8, id="int4-K1024-mixed"),
        pytest.param(4, 2049, -8, 7, id="int4-K2049"),
    ],
)
def test_extreme_codes(backend, bits, k, va, vb):
    m, n = 9, 35
    a = torch.full((m, k), va, dtype=torch.int8)
    b = torch.full((n, k), vb, dtype=torch.int8)
    got = ops.int_matmul(a, b, bits=bits, backend=backend)
    assert torch.equal(got, exact_nt(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a_lo,b_lo", [(-64, -128), (-128, -64), (-128, -128)], ids=["a7", "b7", "full"])
def test_int8_paths_exact(gen, backend, a_lo, b_lo):
    """7-bit activations, 7-bit weights and full range each take their own native path; all exact."""
    a = torch.randint(a_lo, -a_lo if a_lo == -64 else 128, (50, 300), generator=gen, dtype=torch.int8)
    b = torch.randint(b_lo, -b_lo + 1 if b_lo == -64 else 128, (40, 300), generator=gen, dtype=torch.int8)
    assert torch.equal(ops.int_matmul(a, b, bits=8, backend=backend), exact_nt(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_int4_and_strided(gen, backend):
    a, b = codes(gen, (11, 40), 4), codes(gen, (21, 40), 4)
    got = ops.int_matmul(reference.pack_int4(a), reference.pack_int4(b), bits=4, backend=backend)
    assert torch.equal(got, exact_nt(a, b))
    # a non-contiguous view: every other column of a wider matrix
    wide = codes(gen, (11, 80), 8)
    assert torch.equal(
        ops.int_matmul(wide[:, ::2], codes(gen, (3, 40), 8) * 0, bits=8, backend=backend),
        torch.zeros(11, 3, dtype=torch.int32),
    )
    w = codes(gen, (5, 40), 8)
    assert torch.equal(ops.int_matmul(wide[:, ::2], w, bits=8, backend=backend), exact_nt(wide[:, ::2], w))


def test_unpack_native_matches_reference(gen):
    packed = torch.randint(0, 256, (37, 19), generator=gen, dtype=torch.uint8)
    want = reference.unpack_int4(packed)
    assert torch.equal(reference.pack_int4(want), packed)
    if native.available():
        from lowbit.ops import native_gemm

        assert torch.equal(native_gemm.unpack_int4(packed), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    a = torch.zeros(0, 5, dtype=torch.int8)
    assert ops.int_matmul(a, torch.zeros(3, 5, dtype=torch.int8), bits=8, backend=backend).shape == (0, 3)
    got = ops.int_matmul(
        torch.zeros(4, 0, dtype=torch.int8), torch.zeros(3, 0, dtype=torch.int8), bits=4, backend=backend
    )
    assert torch.equal(got, torch.zeros(4, 3, dtype=torch.int32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nt", "nn", "tn"])
@pytest.mark.parametrize("bits", [8, 4])
def test_scaled_matches_reference_bitwise(gen, backend, layout, bits):
    m, n, k = 29, 45, 130
    a, b = codes(gen, (m, k), bits), codes(gen, (n, k), bits)
    x, y = as_layout(a, b, layout)
    sa = torch.rand(m, generator=gen) * 0.1 + 1e-3  # a different scale per row and column
    sb = torch.rand(n, generator=gen) * 0.01 + 1e-4
    bias = torch.randn(n, generator=gen)
    want = (exact_nt(a, b).float() * sa[:, None]) * sb[None, :] + bias[None, :]
    got = ops.int_matmul_scaled(x, y, sa, sb, bias, bits=bits, layout=layout, backend=backend)
    assert torch.equal(got, want)
    out = torch.empty(m, n)
    assert (
        ops.int_matmul_scaled(x, y, 0.5, sb, None, bits=bits, layout=layout, out=out, backend=backend) is out
    )
    assert torch.equal(out, (exact_nt(a, b).float() * 0.5) * sb[None, :])


@pytest.mark.parametrize("backend", BACKENDS)
def test_int_matmul_out(gen, backend):
    a, b = codes(gen, (20, 70), 8), codes(gen, (30, 70), 8)
    out = torch.full((20, 30), 7, dtype=torch.int32)
    assert ops.int_matmul(a, b, bits=8, out=out, backend=backend) is out
    assert torch.equal(out, exact_nt(a, b))
    with pytest.raises(ValueError, match="out must be"):
        ops.int_matmul(a, b, bits=8, out=torch.empty(20, 30), backend=backend)


def test_k_limits_documented():
    assert ops.MAX_K[8] == 131071 and ops.MAX_K[4] == 33554431


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "va,vb",
    [
        pytest.param(-128, -128, id="s16-path"),  # 131071 * 16384 = 2**31 - 16384: the largest exact result
        pytest.param(-128, -64, id="u8s7-path"),  # 7-bit b: a shifted by 128
        pytest.param(-64, 127, id="u7s8-path"),  # 7-bit a: a shifted by 64
    ],
)
def test_int8_at_max_k(backend, va, vb):
    k = ops.MAX_K[8]
    a = torch.full((2, k), va, dtype=torch.int8)
    b = torch.full((3, k), vb, dtype=torch.int8)
    assert torch.equal(
        ops.int_matmul(a, b, bits=8, backend=backend), torch.full((2, 3), va * vb * k, dtype=torch.int32)
    )


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        pytest.param(dict(a=torch.zeros(2, 3), bits=8), TypeError, "int8 codes", id="float-a"),
        pytest.param(dict(a=[[1]], bits=8), TypeError, "torch.Tensor", id="list-a"),
        pytest.param(dict(bits=5), ValueError, "bits", id="bits5"),
        pytest.param(dict(layout="tt"), ValueError, "layout", id="layout"),
        pytest.param(
            dict(b=torch.zeros(2, 4, dtype=torch.int8)), ValueError, "reduction dims", id="K-mismatch"
        ),
        pytest.param(dict(a=torch.zeros(2, 3, 1, dtype=torch.int8)), ValueError, "2-D", id="3-D"),
        pytest.param(
            dict(a=torch.full((2, 3), 9, dtype=torch.int8), bits=4), ValueError, "outside", id="int4-range"
        ),
        pytest.param(dict(backend="gpu"), ValueError, "backend", id="backend"),
        pytest.param(
            dict(a=torch.zeros(2, 3, dtype=torch.uint8), bits=8), TypeError, "int8", id="uint8-8bit"
        ),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(kwargs, err, match, backend):
    args = dict(
        a=torch.zeros(2, 3, dtype=torch.int8),
        b=torch.zeros(2, 3, dtype=torch.int8),
        bits=4,
        layout="nt",
        backend=backend,
    )
    args.update(kwargs)
    a, b = args.pop("a"), args.pop("b")
    with pytest.raises(err, match=match):
        ops.int_matmul(a, b, **args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "va,vb",
    [
        pytest.param(-8, -8, id="largest-result"),  # 64 * MAX_K[4] = 2**31 - 64
        pytest.param(7, -8, id="wrapping-acc"),  # (7 + 8) * -8 * K wraps int32; the offset fix undoes it
    ],
)
def test_int4_at_max_k(backend, va, vb):
    k = ops.MAX_K[4]
    a = torch.full((1, k), va, dtype=torch.int8)
    b = torch.full((1, k), vb, dtype=torch.int8)
    got = ops.int_matmul(a, b, bits=4, backend=backend)
    assert torch.equal(got, torch.full((1, 1), va * vb * k, dtype=torch.int32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [8, 4])
def test_k_beyond_max_k_raises_naming_it(backend, bits):
    """K > MAX_K is refused up front (every entry point), naming MAX_K and the fix."""
    k = ops.MAX_K[bits] + 1
    a = torch.zeros(1, k, dtype=torch.int8)
    match = rf"MAX_K\[{bits}\] = {k - 1}.*split K"
    with pytest.raises(ValueError, match=match):
        ops.int_matmul(a, a, bits=bits, backend=backend)
    with pytest.raises(ValueError, match=match):
        ops.int_matmul_scaled(a, a, 1.0, 1.0, bits=bits, backend=backend)
    with pytest.raises(ValueError, match=match):
        ops.pack_weight(a, 1.0, bits=bits, backend=backend)


def test_meta_device_rejected():
    a = torch.zeros(2, 3, dtype=torch.int8, device="meta")
    with pytest.raises(ValueError, match="CPU"):
        ops.api._int_matmul_cpu(a, a, 8, "nt", "reference")


def test_backend_reports():
    report = ops.backend()
    assert report.chosen in backends.CONCRETE
    assert set(report.reasons) == set(backends.CONCRETE) - {report.chosen}
    assert all(report.reasons.values())  # every backend not chosen says why
    assert report.chosen in str(report) and report.cpu in str(report)
    assert (ops.why_not_native() == "") == native.available()


@needs_native
def test_native_is_used_when_available():
    assert ops.backend().chosen != "reference"  # a native ISA, or onednn where it measured faster


def test_unavailable_native_is_reported_not_hidden(gen, monkeypatch):
    """Without native kernels: backend() says why, "auto" uses the reference, "native" raises that reason."""
    monkeypatch.setattr(native, "_load", lambda: (None, "simulated: no AVX2"))
    monkeypatch.setattr(backends, "_onednn_is_fast", lambda: False)
    backends._auto.cache_clear()
    try:
        report = ops.backend()
        assert report.chosen == "reference"
        assert report.reasons["avx2"] == "simulated: no AVX2"
        assert report.reasons["avx512-vnni"] == "simulated: no AVX2"
        assert ops.why_not_native() == "simulated: no AVX2"
        a, b = codes(gen, (5, 9), 4), codes(gen, (4, 9), 4)
        assert torch.equal(ops.int_matmul(a, b, bits=4), exact_nt(a, b))
        with pytest.raises(RuntimeError, match="simulated: no AVX2"):
            ops.int_matmul(a, b, bits=4, backend="native")
        with pytest.raises(RuntimeError, match="simulated: no AVX2"):
            ops.int_matmul(a, b, bits=4, backend="avx2")
    finally:
        backends._auto.cache_clear()


@pytest.mark.parametrize(
    ("call", "err", "match"),
    [
        (lambda a: ops.int_matmul(a, a, bits=8.0), ValueError, "bits must be the int 4 or 8, got 8.0"),
        (lambda a: ops.int_matmul(a, a, bits=True), ValueError, "bits must be the int 4 or 8"),
        (lambda a: ops.int_matmul(a, a, bits=8, layout="tt"), ValueError, "layout must be one of"),
        (lambda a: ops.int_matmul_scaled(a, a, 1.0, 1.0, bits=4.0), ValueError, "bits must be the int"),
        (lambda a: ops.quantize_rows(a.float(), 8.0), ValueError, "bits must be an int in"),
        (lambda a: ops.pack_weight(a[0], 1.0, bits=8), TypeError, "2-D tensor of codes"),
        (lambda a: ops.pack_weight([[1, 2]], 1.0, bits=8), TypeError, "got a list"),
    ],
)
def test_argument_errors_name_the_argument(call, err, match):
    """Issue 14: these reached torch's schema (a pybind cast error) or an IndexError before."""
    with pytest.raises(err, match=match):
        call(torch.zeros(2, 2, dtype=torch.int8))
