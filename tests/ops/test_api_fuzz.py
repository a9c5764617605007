"""Fuzz the public integer-engine entries (issue 14): random operands, dtypes, strides, values, scales and
arguments on every backend this machine runs. Each call returns its documented result — checked exactly
against int64 / the reference — or raises a ValueError / TypeError naming the problem. The draws are mostly
valid (so results get checked) with a share of broken arguments (so refusals get checked); run with
``--hypothesis-show-statistics`` to see the mix."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import SPECIALS, documented_errors, fuzz_settings

import lowbit.ops as ops
from lowbit.ops import backends, reference

USABLE = [name for name in backends.CONCRETE if backends.available(name)]
ODD_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.float32)


def _codes(draw: st.DrawFn, rows: int, k: int, bits: int) -> torch.Tensor:
    """int8 codes (rows, K) of the bits' range; now and then out of range, another dtype, or transposed."""
    lo, hi = (-8, 7) if bits == 4 else (-128, 127)
    if bits == 4 and draw(st.integers(0, 7)) == 0:
        lo, hi = -128, 127  # out of range for 4-bit: refused
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    t = torch.randint(lo, hi + 1, (rows, k), generator=g, dtype=torch.int8)
    if draw(st.integers(0, 7)) == 0:
        t = t.to(draw(st.sampled_from(ODD_DTYPES)))  # refused, except uint8 nibbles for bits=4
    if draw(st.integers(0, 9)) == 0:
        t = t.reshape(-1)  # 1-D: refused
    return t


@st.composite
def matmul_case(draw: st.DrawFn):
    m, n, k = (draw(st.integers(0, 40)) for _ in range(3))
    bits = draw(st.sampled_from([8, 8, 4, 4, 4, 3, 8.0]))
    b_bits = bits if bits in (4, 8) else 8
    a = _codes(draw, m, k, b_bits)
    b = _codes(draw, n, k if draw(st.integers(0, 9)) else k + 1, b_bits)  # K mismatch now and then
    layout = draw(st.sampled_from(["nt", "nt", "nn", "tn", "xx"]))
    if layout == "nn" and b.dim() == 2:
        b = b.t()  # (K, N), a transposed view: any strides are documented to work
    if layout == "tn" and a.dim() == 2 and b.dim() == 2:
        a, b = a.t(), b.t()
    return a, b, bits, layout


def _exact(a: torch.Tensor, b: torch.Tensor, layout: str, bits: int) -> torch.Tensor:
    if bits == 4:  # uint8 operands of a 4-bit product are packed nibbles along their last dim
        a, b = (reference.unpack_int4(t) if t.dtype == torch.uint8 else t for t in (a, b))
    a2 = {"nt": a, "nn": a, "tn": a.t()}[layout].long()
    b2 = {"nt": b.t(), "nn": b, "tn": b}[layout].long()
    return a2 @ b2


@given(case=matmul_case(), backend=st.sampled_from(USABLE + ["gpu"]))
@fuzz_settings(150)
def test_int_matmul_documented_result_or_named_error(case, backend):
    a, b, bits, layout = case
    with documented_errors():
        got = ops.int_matmul(a, b, bits=bits, layout=layout, backend=backend)
        assert got.dtype == torch.int32 and torch.equal(got.long(), _exact(a, b, layout, bits))


SCALES = st.one_of(
    st.floats(2**-10, 100.0, width=32),
    st.floats(2**-10, 100.0, width=32),
    st.sampled_from(SPECIALS),
    st.integers(1, 5).map(lambda n: torch.rand(n) + 0.1),  # a wrong length unless it happens to match
)


@given(m=st.integers(0, 9), n=st.integers(0, 9), k=st.integers(0, 40), sa=SCALES, sb=SCALES,
       backend=st.sampled_from(USABLE))  # fmt: skip
@fuzz_settings(150)
def test_int_matmul_scaled_documented_result_or_named_error(m, n, k, sa, sb, backend):
    g = torch.Generator().manual_seed(m * 1000 + n * 50 + k)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    with documented_errors():
        got = ops.int_matmul_scaled(a, b, sa, sb, bits=8, backend=backend)
        want = ops.int_matmul_scaled(a, b, sa, sb, bits=8, backend="reference")
        assert torch.equal(got, want)
        if abs(float(torch.as_tensor(sa).max())) < 1e30 and abs(float(torch.as_tensor(sb).max())) < 1e30:
            assert bool(torch.isfinite(got).all())


@st.composite
def float_rows(draw: st.DrawFn, k: int | None = None) -> torch.Tensor:
    m = draw(st.integers(0, 30))
    k = draw(st.integers(0, 40)) if k is None else k
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(m, k, generator=g) * 10.0 ** draw(st.integers(-30, 30))
    if x.numel() and draw(st.integers(0, 5)) == 0:
        special = float(torch.tensor(draw(st.sampled_from(SPECIALS)), dtype=torch.float64).float())
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = special  # beyond float32 range: its Inf
    if draw(st.integers(0, 7)) == 0:
        x = x.double()  # refused
    if x.dim() == 2 and x.shape[0] > 1 and draw(st.booleans()):
        x = x[::2]  # strided rows
    return x


@given(x=float_rows(), bits=st.sampled_from([2, 4, 7, 8, 8, 9, 1]), backend=st.sampled_from(USABLE))
@fuzz_settings(150)
def test_quantize_rows_documented_result_or_named_error(x, bits, backend):
    with documented_errors():
        codes, scale = ops.quantize_rows(x, bits, backend=backend)
        ref_codes, ref_scale = ops.quantize_rows(x, bits, backend="reference")
        assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)
        assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())


@st.composite
def linear_case(draw: st.DrawFn):
    n, k = draw(st.integers(0, 40)), draw(st.integers(1, 40))
    bits = draw(st.sampled_from([8, 4]))
    w = _codes(draw, n, k, bits)
    w_scale = draw(st.one_of(st.floats(2**-10, 10.0, width=32), st.floats(2**-10, 10.0, width=32),
                             st.sampled_from(SPECIALS)))  # fmt: skip
    x = draw(float_rows(k if draw(st.integers(0, 9)) else k + 1))
    act_scale = draw(
        st.one_of(st.none(), st.none(), st.floats(2**-10, 10.0, width=32), st.sampled_from(SPECIALS))
    )
    act_bits = draw(st.sampled_from([None, None, 4, 7, 8]))
    return w, w_scale, bits, x, act_scale, act_bits


@given(case=linear_case(), backend=st.sampled_from(USABLE))
@fuzz_settings(150)
def test_pack_weight_and_linear_documented_result_or_named_error(case, backend):
    w, w_scale, bits, x, act_scale, act_bits = case
    with documented_errors():
        packed = ops.pack_weight(w, w_scale, bits=bits, backend=backend)
        got = ops.linear(x, packed, act_bits=act_bits, act_scale=act_scale, backend=backend)
        ref_packed = ops.pack_weight(w, w_scale, bits=bits, backend="reference")
        ref = ops.linear(x, ref_packed, act_bits=act_bits, act_scale=act_scale, backend="reference")
        assert torch.equal(got, ref)
        assert bool(torch.isfinite(got).all())
