"""Fuzz the integer-only graph's scaled integers (issue 14): ``Dyadic`` and ``ScaledInt`` (construction and
every op) — a documented result or a ValueError/TypeError naming the problem, never another exception."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import documented_errors, fuzz_settings, tensors

from lowbit.integer import Dyadic, ScaledInt, add, rescale

positive = st.floats(1e-12, 1e6)
finite_or_not = st.one_of(positive, positive, st.floats(allow_nan=True, allow_infinity=True))


@fuzz_settings(150)
@given(ratio=st.one_of(finite_or_not, st.lists(finite_or_not, min_size=0, max_size=5)))
def test_fuzz_dyadic(ratio) -> None:
    r = torch.tensor(ratio, dtype=torch.float64)
    with documented_errors():
        d = Dyadic.from_ratio(r)
        v = d.value()
        assert bool(torch.isfinite(v).all()) and torch.allclose(v, r, rtol=2**-20, atol=2**-40)


@fuzz_settings(150)
@given(
    x=tensors(max_dims=2, max_side=6, dtypes=(torch.float32, torch.float64)),
    s1=finite_or_not,
    s2=finite_or_not,
    dtype=st.sampled_from([torch.int8, torch.int32, torch.int16, torch.float32]),
)
def test_fuzz_scaled_int(x, s1, s2, dtype) -> None:
    with documented_errors():
        a = ScaledInt.quantize(x, s1, dtype)
        assert a.values.shape == x.shape and a.values.dtype == dtype
        assert bool(torch.isfinite(a.dequantize()).all()), "silently non-finite dequantization"
        b = rescale(a, s2)
        c = add(a, b)
        assert c.values.shape == x.shape and math.isfinite(c.scale)
        assert bool(torch.isfinite(c.dequantize()).all())


@st.composite
def scaled_ints(draw: st.DrawFn) -> object:
    """A ScaledInt-ish operand: int8/int32/int64/float values of a random 0-3-D shape, a per-tensor float
    or per-channel scale (sometimes of the wrong length, non-positive or non-finite)."""
    nd = draw(st.sampled_from([2, 2, 1, 0, 3]))
    shape = [draw(st.integers(0, 5)) for _ in range(nd)]
    dtype = draw(st.sampled_from([torch.int8, torch.int8, torch.int32, torch.int64, torch.float32]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 1000)))
    values = torch.randint(-127, 128, shape, generator=g).to(dtype)
    kind = draw(st.sampled_from(["float", "float", "channel", "bad"]))
    if kind == "float":
        scale = draw(positive)
    elif kind == "channel" and nd:
        scale = torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.01
    else:
        scale = draw(st.sampled_from([0.0, -1.0, float("nan"), 1, torch.ones(7), "s", None]))
    return values, scale


OPS = ["matmul_nt", "matmul_nn", "mul", "add", "concat0", "concat-1", "split", "requant", "T"]


@fuzz_settings(150)
@given(
    a=scaled_ints(),
    b=scaled_ints(),
    op=st.sampled_from(OPS),
)
def test_fuzz_scaled_int_ops(a, b, op) -> None:
    from lowbit.integer import concat, matmul, mul, requantize

    with documented_errors():
        x, y = ScaledInt(*a), ScaledInt(*b)
        if op.startswith("matmul"):
            out = matmul(x, y, layout=op[-2:])
        elif op == "mul":
            out = mul(x, y)
        elif op == "add":
            out = add(x, y)
        elif op.startswith("concat"):
            out = concat([x, y], int(op[6:]))
        elif op == "split":
            out = x.split(2)[0]
        elif op == "T":
            out = x.transpose(0, -1)
        else:
            out = requantize(x, float(y.scale) if isinstance(y.scale, float) else 1.0)
        assert bool(torch.isfinite(out.dequantize()).all())
