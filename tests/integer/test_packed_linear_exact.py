"""The fused GEMM + requantize kernel (PackedLinear): bit-exact vs int_matmul + the reference requantize."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import NATIVE_ISAS

from lowbit.integer.fast import PackedLinear, requant_channels, to_offset
from lowbit.ops import backends, int_matmul, native

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")


@pytest.fixture(autouse=True, params=NATIVE_ISAS)
def isa(request):
    """Every test runs on each native ISA's GEMM tile (kind 0 on avx2, kind 4 on avx512-vnni)."""
    with backends.use_backend(request.param) as chosen:
        yield chosen


def _case(gen: torch.Generator, m: int, k: int, n: int, off: int, shifts: tuple[int, int]):
    w = torch.randint(-64, 65, (n, k), generator=gen, dtype=torch.int8)
    w[0] = 64  # extreme 7-bit codes
    w[-1] = -64
    lo = 0 if off == 0 else -128
    x = torch.randint(lo, 128, (m, k), generator=gen, dtype=torch.int8)
    x[0] = 127 if off == 0 else -128  # extreme input rows
    x[-1] = 0
    bias = torch.randint(-(2**20), 2**20, (n,), generator=gen, dtype=torch.int32)
    bias[1 % n] = 2**31 - 1  # accumulator + bias saturates to int32
    mult = torch.randint(2**23, 2**24, (n,), generator=gen, dtype=torch.int32)
    shift = torch.randint(*shifts, (n,), generator=gen, dtype=torch.int32)
    return w, x, bias, mult, shift


@pytest.mark.parametrize(("m", "k", "n"), [(50, 64, 48), (7, 36, 45), (1, 4, 1), (97, 256, 100)], ids=str)
@pytest.mark.parametrize("off", [128, 0])
@pytest.mark.parametrize("relu", [False, True])
def test_int8_output_bit_exact(m: int, k: int, n: int, off: int, relu: bool, gen: torch.Generator) -> None:
    w, x, bias, mult, shift = _case(gen, m, k, n, off, (26, 36))
    acc = int_matmul(x, w, bits=8, layout="nt")
    want = requant_channels(acc, bias, mult, shift, relu=relu, backend="reference")
    pl = PackedLinear(w, bias, mult, shift, relu, off)
    xu = to_offset(x, off)
    assert torch.equal(pl(xu), want)
    assert torch.equal(pl(xu, out_off=128), to_offset(want, 128))
    if m * n > 100:  # saturated and in-range outputs both occur
        assert int((want.abs() == 127).sum()) > 0 and int((want.abs() < 120).sum()) > 0
    small = PackedLinear(w, bias // 4096, mult, shift, relu, off)  # no int32 saturation: the fast epilogue
    assert small.fast or k > 1000
    want_small = requant_channels(acc, bias // 4096, mult, shift, relu=relu, backend="reference")
    assert torch.equal(small(xu), want_small)


@pytest.mark.parametrize(("m", "k", "n"), [(50, 1024, 32), (13, 20, 17)], ids=str)
@pytest.mark.parametrize("off", [128, 0])
def test_residual_output_bit_exact(m: int, k: int, n: int, off: int, gen: torch.Generator) -> None:
    w, x, bias, mult, shift = _case(gen, m, k, n, off, (8, 20))
    acc = int_matmul(x, w, bits=8, layout="nt")
    r0 = torch.randint(-(2**31), 2**31 - 1, (m, n), generator=gen, dtype=torch.int32)
    r0[0] = 2**31 - 1  # residual saturation
    want = requant_channels(acc, bias, mult, shift, residual=r0.clone(), backend="reference")
    got = PackedLinear(w, bias, mult, shift, False, off)(to_offset(x, off), residual=r0.clone())
    assert torch.equal(got, want)


def test_rejects_wide_weights_and_bad_inputs(gen: torch.Generator) -> None:
    ones = torch.ones(4, dtype=torch.int32)
    with pytest.raises(ValueError, match="-64, 64"):
        PackedLinear(torch.full((4, 8), 65, dtype=torch.int8), None, ones, ones, False, 128)
    with pytest.raises(ValueError, match="K % 4"):
        PackedLinear(torch.ones(4, 6, dtype=torch.int8), None, ones, ones, False, 128)
    pl = PackedLinear(torch.ones(4, 8, dtype=torch.int8), None, ones, ones, False, 128)
    with pytest.raises(ValueError, match="uint8"):
        pl(torch.zeros(3, 8, dtype=torch.int8))


@pytest.mark.parametrize(("m", "k", "n"), [(50, 64, 48), (7, 34, 45), (1, 2, 1), (97, 384, 100)], ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_wide_weights_int16_path_bit_exact(m: int, k: int, n: int, relu: bool, gen: torch.Generator) -> None:
    """Full-range int8 weights (and inputs) take the exact int16 path."""
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    w[0] = -128
    x = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    x[0] = -128
    bias = torch.randint(-(2**20), 2**20, (n,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**23, 2**24, (n,), generator=gen, dtype=torch.int32)
    shift = torch.randint(26, 36, (n,), generator=gen, dtype=torch.int32)
    acc = int_matmul(x, w, bits=8, layout="nt")
    pl = PackedLinear(w, bias, mult, shift, relu, 0)
    assert pl.wide
    assert torch.equal(pl(x), requant_channels(acc, bias, mult, shift, relu=relu, backend="reference"))
    r0 = torch.randint(-(2**31), 2**31 - 1, (m, n), generator=gen, dtype=torch.int32)
    want = requant_channels(acc, bias, mult, shift - 16, relu=relu, residual=r0.clone(), backend="reference")
    got = PackedLinear(w, bias, mult, shift - 16, relu, 0)(x, residual=r0.clone())
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="int8"):
        pl(to_offset(x, 128))
