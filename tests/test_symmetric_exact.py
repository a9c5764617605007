"""lowbit's one symmetric (absmax) quantizer and its fast paths, bit for bit.

``lowbit.quantizers.quantize_symmetric`` / ``symmetric_scale`` / ``symmetric_codes`` define the arithmetic;
the fused native row quantizer (every backend), the generic ``quantize``, int4-naive training, the training
kernels' absmax, integer conversion's weight codes and PTQ's static-scale codes must give the same bits on
fresh random inputs and on edge cases (zeros, ties, saturation, subnormal and huge rows, NaN/Inf, odd
shapes). The call sites' old formulas are written out here too, so the refactoring is checked bit-identical.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers import BACKENDS

import lowbit.ops as ops
from lowbit.formats import INT4_SYMMETRIC, IntFormat, int_format
from lowbit.integer.convert import _act_scale, _weight_codes
from lowbit.ops.linear import quantize_static as ops_quantize_static
from lowbit.ptq.modules import quantize_static
from lowbit.quantizers import absmax, quantize, quantize_symmetric, symmetric_codes, symmetric_scale
from lowbit.training import _kernels
from lowbit.training.functional import _per_tensor_int4

SHAPES = [(1, 1), (3, 5), (7, 33), (17, 64), (5, 300)]


def edge_matrix(gen: torch.Generator, m: int, k: int) -> torch.Tensor:
    """Random rows of very different magnitudes, then (as far as rows go) a zero row, exact .5 ties, a
    subnormal row, a huge row, a -0.0 row and one outlier."""
    x = torch.randn(m, k, generator=gen) * torch.logspace(-4, 4, m).reshape(-1, 1)
    edits = [
        lambda r: r.zero_(),
        lambda r: r.copy_(torch.tensor([127.0, 0.5, 1.5, -2.5, 126.5, -0.5])[torch.arange(k) % 6]),
        lambda r: r.mul_(1e-41),
        lambda r: r.div_(r.abs().max()).mul_(3e38),
        lambda r: r.fill_(-0.0),
        lambda r: r.__setitem__(k // 2, 1e4),
    ]
    for i, edit in enumerate(edits[: m - 1]):
        edit(x[i + 1])
    return x


def old_rows(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ops.reference.quantize_rows as written before the primitive."""
    amax = x.abs().amax(dim=1) if x.shape[1] > 0 else torch.zeros(x.shape[0], dtype=torch.float32)
    scale = torch.where(amax == 0, torch.ones_like(amax), torch.clamp(amax / qmax, min=2.0**-126))
    return torch.clamp(torch.round(x / scale.reshape(-1, 1)), -qmax, qmax).to(torch.int8), scale


def same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    pairs = zip(a, b, strict=True)
    return all(u.dtype == v.dtype and u.shape == v.shape and torch.equal(u, v) for u, v in pairs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [8, 7, 4, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_rows_exact(gen, backend, bits, shape):
    x = edge_matrix(gen, *shape)
    qmax = 2 ** (bits - 1) - 1
    want = quantize_symmetric(x, qmax, dim=1)
    assert same(ops.quantize_rows(x, bits, backend=backend), want)
    assert same(old_rows(x, qmax), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_quantize_rows_non_finite_exact(backend, bad):
    x = torch.ones(3, 9)
    x[1, 4] = bad
    with pytest.raises(ValueError, match="non-finite"):
        ops.quantize_rows(x, 8, backend=backend)
    with pytest.raises(ValueError, match="NaN"):
        quantize_symmetric(x, 127, dim=1)


def test_empty_rows_exact():
    for shape in [(0, 4), (3, 0)]:
        x = torch.zeros(shape)
        assert same(ops.quantize_rows(x, 8, backend="reference"), quantize_symmetric(x, 127, dim=1))
        assert same(old_rows(x, 127), quantize_symmetric(x, 127, dim=1))


@pytest.mark.parametrize("bits", [8, 7, 4, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_generic_quantize_exact(gen, bits, shape):
    """quantize(x, intN-narrow, 'row' / 'tensor') is the same quantizer for float32 input."""
    x = edge_matrix(gen, *shape)
    fmt = int_format(bits, narrow=True)
    codes, scale = quantize_symmetric(x, fmt.qmax, dim=1)
    q = quantize(x, fmt, "row")
    assert torch.equal(q.codes, codes) and torch.equal(q.scale[:, 0], scale)
    codes, scale = quantize_symmetric(x, fmt.qmax)
    q = quantize(x, fmt, "tensor")
    assert torch.equal(q.codes, codes) and torch.equal(q.scale, scale)


@pytest.mark.parametrize("scale_of", [1.0, 1e-30, 1e-43, 0.0, 1e30])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_int4_naive_exact(gen, scale_of, n):
    """int4-naive's per-tensor INT4 (no float32-normal floor: a subnormal absmax keeps a subnormal scale)."""
    t = torch.randn(n, generator=gen) * scale_of
    t[0] = 3.5 * float(t.abs().max()) / 7  # a tie after scaling
    codes, scale = _per_tensor_int4(t)
    want = quantize_symmetric(t, INT4_SYMMETRIC.hi, floor=None)
    assert same((codes, scale), want)
    amax = t.abs().max()
    old = torch.where(amax > 0, amax / 7, torch.ones_like(amax))
    assert torch.equal(scale, old) and torch.equal(codes, torch.round(t / old).clamp_(-7, 7).to(torch.int8))


@pytest.mark.skipif(bool(_kernels.native_reason()), reason=f"native: {_kernels.native_reason()}")
@pytest.mark.parametrize("n", [0, 1, 7, 8, 33, 4099, 100_003])
def test_training_absmax_kernel_exact(gen, n):
    g = torch.randn(n, generator=gen) * 1e-3
    if n > 3:
        g[n // 3] = -7.25
        g[-1] = -0.0
    assert _kernels.absmax(g) == float(absmax(g))


@pytest.mark.parametrize("qmax", [127, 63, 7, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_integer_weight_codes_exact(gen, qmax, shape):
    """Integer conversion: float64 per-row scales floored at 1e-12; an all-zero row keeps 1e-12."""
    w = edge_matrix(gen, *shape).double()
    codes, scale = _weight_codes(w, qmax)
    assert same((codes, scale), quantize_symmetric(w, qmax, dim=1, floor=1e-12, zero_scale=None))
    old = (w.abs().amax(1) / qmax).clamp_min(1e-12)
    assert torch.equal(scale, old)
    assert torch.equal(codes, torch.round(w / old[:, None]).clamp(-qmax, qmax).to(torch.int8))


def test_integer_act_scale_exact(gen):
    """Calibrated activation ranges: absmax floored at 1e-8 *before* the division (floats and tensors)."""
    edges = torch.tensor([0.0, 1e-9, 1e-8], dtype=torch.float64)
    amax = torch.cat([torch.rand(50, generator=gen, dtype=torch.float64) * 10, edges])
    for qmax in (127, 63):
        assert torch.equal(_act_scale(amax, qmax), amax.clamp_min(1e-8) / qmax)
        for a in amax.tolist():
            assert _act_scale(a, qmax) == max(a, 1e-8) / qmax


@pytest.mark.parametrize("bits", [8, 7, 4])
def test_static_codes_exact(gen, bits):
    """A fixed scale (PTQ's calibrated activations): saturation at the full range, ties to even."""
    fmt = IntFormat(bits)
    x = torch.randn(9, 40, generator=gen) * 50
    x[0, :6] = torch.tensor([0.5, 1.5, -2.5, 1e9, -1e9, -0.0])
    s = torch.tensor(0.5 if bits > 4 else 4.0)
    codes = symmetric_codes(x, s, fmt.code_range)
    assert torch.equal(quantize_static(x, fmt, s), codes)
    assert torch.equal(quantize(x, fmt, scale=s).codes, codes)
    assert torch.equal(ops_quantize_static(x, bits, s), codes)  # ops.linear's static reference
    old = torch.clamp(torch.round(x / s), fmt.qmin, fmt.qmax).to(torch.int8)
    assert torch.equal(old, codes)
    assert int(codes.min()) == fmt.qmin and int(codes.max()) == fmt.qmax


def test_symmetric_scale_policy_exact():
    """The documented defaults and each named variant on the edge values."""
    a = torch.tensor([0.0, -0.0, 1e-45, 1e-40, 1.0, 127.0, 3e38])
    tiny = torch.finfo(torch.float32).tiny
    want = torch.where(a == 0, torch.ones_like(a), torch.clamp(a / 127, min=tiny))
    assert torch.equal(symmetric_scale(a, 127), want)
    assert torch.equal(symmetric_scale(a, 127, floor=None), torch.where(a == 0, torch.ones_like(a), a / 127))
    assert torch.equal(symmetric_scale(a.double(), 127.0, dtype=torch.float32), (a.double() / 127).float()
                       .clamp(min=tiny).where(a != 0, torch.ones_like(a)))  # fmt: skip
    assert symmetric_scale(0.0, 7) == 1.0 and symmetric_scale(0.0, 7, zero_scale=None, floor=None) == 0.0
    assert torch.isnan(symmetric_scale(torch.tensor(float("nan")), 7))  # callers raise before
