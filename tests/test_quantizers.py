"""quantize() vs float64 references: MX formats, granularities and their scales, QTensor, INT4 packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import ref_mx, ref_round

import lowbit.formats as F
from lowbit.quantizers import Granularity, QTensor, pack_int4, quantize, unpack_int4


# ------------------------------------------------------------------------------------------- MX formats
@pytest.mark.parametrize("fmt", [f for f in F.ALL_FORMATS if isinstance(f, F.MXFormat)], ids=lambda f: f.name)
def test_mx_matches_reference(fmt, gen) -> None:
    # 6 rows x 4 blocks, a different magnitude per block (many scales), planted outliers, a zero block
    x = torch.randn(6, 128, generator=gen, dtype=torch.float64)
    x *= (
        torch.exp2(torch.randint(-20, 20, (6, 4, 1), generator=gen))
        .repeat_interleave(32, -1)
        .reshape(6, 4 * 32)
    )
    x[0, 5] = 300.0
    x[1, 32:64] = 0.0
    x[2, 64] = -(2.0**10)  # exactly a power of two: floor(log2) is exact there
    q = quantize(x, fmt)
    ref_x, ref_scale = ref_mx(x.numpy(), fmt)
    assert q.granularity.kind == "block" and q.scale.shape == (6, 4, 1)
    assert torch.equal(q.scale.double().squeeze(-1), torch.from_numpy(ref_scale))
    assert torch.equal(q.dequantize(torch.float64), torch.from_numpy(ref_x))
    expected = {F.MXFP8_E4M3: torch.float8_e4m3fn, F.MXFP8_E5M2: torch.float8_e5m2, F.MXINT8: torch.int8}
    assert q.codes.dtype == expected.get(fmt, torch.float32)


def test_mx_rejects_other_granularity_and_rules(gen) -> None:
    x = torch.randn(2, 64, generator=gen)
    with pytest.raises(ValueError, match="granularity='block'"):
        quantize(x, F.MXFP4, "row")
    with pytest.raises(ValueError, match="scale"):
        quantize(x, F.MXFP4, scale="mse")
    with pytest.raises(ValueError, match="group size 32 does not divide"):
        quantize(torch.randn(2, 48), "mxfp4")


# ------------------------------------------------------------------------ granularities vs float64 scales
def ref_absmax_scale(x: np.ndarray, axis, qmax: float) -> np.ndarray:
    amax = np.abs(x).max(axis=axis, keepdims=True)
    return np.where(amax == 0, 1.0, (amax / qmax).astype(np.float32))


@pytest.mark.parametrize(
    ("gran", "view", "axis"),
    [
        ("tensor", (5, 96), None),
        ("row", (5, 96), 1),
        ("column", (5, 96), 0),
        (("group", 32), (5, 3, 32), 2),
        (("group", 8, 0), (5, 96), None),  # groups along dim 0 of a (40, 96) tensor, checked below
    ],
    ids=["tensor", "row", "column", "group32", "group8-dim0"],
)
@pytest.mark.parametrize("fmt", [F.INT4, F.INT8, F.FP8_E4M3, F.FP4_E2M1], ids=lambda f: f.name)
def test_scales_and_codes_match_reference(gran, view, axis, fmt, gen) -> None:
    shape = (40, 96) if gran == ("group", 8, 0) else (5, 96)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * torch.rand(shape[0], 1, generator=gen) * 10
    x[1] = 0.0  # an all-zero row -> scale 1 there
    q = quantize(x, fmt, gran)
    xv = x.numpy().reshape(5, 8, 96) if gran == ("group", 8, 0) else x.numpy().reshape(view)
    ref_scale = ref_absmax_scale(xv, 1 if gran == ("group", 8, 0) else axis, fmt.max)
    assert torch.equal(q.scale.double(), torch.from_numpy(np.asarray(ref_scale)).reshape(q.scale.shape))
    ref_deq = ref_round(xv / ref_scale, fmt) * ref_scale
    assert torch.equal(q.dequantize(torch.float64), torch.from_numpy(ref_deq.reshape(shape)))
    assert q.shape == x.shape and isinstance(q, QTensor)


def test_group_along_a_middle_dim_of_a_3d_tensor(gen) -> None:
    x = torch.randn(2, 12, 5, generator=gen, dtype=torch.float64)
    q = quantize(x, F.INT8, ("group", 4, 1))
    assert q.scale.shape == (2, 3, 1, 5)
    xv = x.numpy().reshape(2, 3, 4, 5)
    amax = np.abs(xv).max(axis=2, keepdims=True)
    ref_scale = (amax / 127).astype(np.float32)
    assert torch.equal(q.scale.double(), torch.from_numpy(ref_scale.astype(np.float64)))
    ref = ref_round(xv / ref_scale, F.INT8) * ref_scale
    assert torch.equal(q.dequantize(torch.float64), torch.from_numpy(ref.reshape(2, 12, 5)))


@pytest.mark.parametrize(
    ("fmt", "dtype", "lo", "hi"),
    [
        (F.INT4, torch.int8, -8, 7),
        (F.int_format(4, narrow=True), torch.int8, -7, 7),
        (F.UINT8, torch.uint8, 0, 255),
        (F.UINT4, torch.uint8, 0, 15),
    ],
    ids=["int4", "int4-narrow", "uint8", "uint4"],
)
def test_integer_code_dtypes_and_ranges(fmt, dtype, lo, hi, gen) -> None:
    x = torch.randn(8, 64, generator=gen) * 4
    q = quantize(x, fmt, "row", scale=0.01)  # explicit small step: many values saturate
    assert q.codes.dtype == dtype
    assert int(q.codes.min()) == lo and int(q.codes.max()) == hi
    if not fmt.signed:  # absmax on non-negative data uses the full unsigned range
        r = quantize(x.abs(), fmt, "row")
        assert int(r.codes.max()) == hi and r.scale.shape == (8, 1)


def test_half_precision_input_and_qtensor_fields(gen) -> None:
    x = torch.randn(4, 64, generator=gen).to(torch.bfloat16)
    q = quantize(x, "int8", "row")
    ref = quantize(x.float(), "int8", "row")
    assert torch.equal(q.codes, ref.codes) and torch.equal(q.scale, ref.scale)
    assert q.fmt == F.INT8 and str(q.granularity) == "row" and q.shape == x.shape
    assert q.dequantize().dtype == torch.float32 and q.dequantize(torch.float64).dtype == torch.float64
    with pytest.raises(AttributeError):
        q.codes = q.codes  # type: ignore[misc]


# ----------------------------------------------------------------------------------------- INT4 packing
def test_pack_int4_every_pair_round_trips_and_layout() -> None:
    lo, hi = torch.meshgrid(torch.arange(-8, 8), torch.arange(-8, 8), indexing="ij")
    codes = torch.stack([lo.flatten(), hi.flatten()], dim=-1).to(torch.int8)  # (256, 2): every pair
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (256, 1)
    # element 2j in the low nibble, 2j+1 in the high nibble, two's complement nibbles
    expected = [(a % 16) | ((b % 16) << 4) for a, b in codes.tolist()]
    assert packed[:, 0].tolist() == expected
    assert torch.equal(unpack_int4(packed), codes)
    assert len(set(expected)) == 256  # a bijection on bytes


def test_pack_int4_shapes(gen) -> None:
    codes = torch.randint(-8, 8, (3, 5, 6), generator=gen, dtype=torch.int8)
    assert pack_int4(codes).shape == (3, 5, 3) and torch.equal(unpack_int4(pack_int4(codes)), codes)
    assert pack_int4(torch.zeros(0, 4, dtype=torch.int8)).shape == (0, 2)
    q = quantize(torch.randn(4, 32, generator=gen), F.INT4, "row")
    assert torch.equal(unpack_int4(pack_int4(q.codes)), q.codes)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: pack_int4(torch.zeros(2, 3, dtype=torch.int8)), ValueError, "even"),
        (lambda: pack_int4(torch.full((2, 2), 8, dtype=torch.int8)), ValueError, r"\[-8, 7\]"),
        (lambda: pack_int4(torch.zeros(2, 2)), TypeError, "int8"),
        (lambda: unpack_int4(torch.zeros(2, 2, dtype=torch.int8)), TypeError, "uint8"),
        (lambda: quantize(torch.ones(4, 6), F.INT4, ("group", 4)), ValueError, "does not divide"),
        (lambda: quantize(torch.ones(4, 6), F.INT4, ("group", 0)), ValueError, "positive"),
        (lambda: quantize(torch.ones(4, 6), F.INT4, ("group", 2, 5)), ValueError, "out of range"),
        (lambda: quantize(torch.ones(4, 6), F.INT4, "channel"), ValueError, "granularity must be"),
        (lambda: quantize(torch.ones(6), F.INT4, "column"), ValueError, "at least 2 dimensions"),
        (lambda: quantize(torch.ones(4, dtype=torch.int32), F.INT4), TypeError, r"x\.float\(\)"),
        (lambda: quantize(torch.ones(4).to(torch.float8_e4m3fn), F.INT4), TypeError, "float32"),
        (lambda: quantize([1.0, 2.0], F.INT4), TypeError, "torch.Tensor"),
        (lambda: quantize(torch.ones(4), "int9"), ValueError, "bits"),
        (lambda: quantize(torch.ones(4), 4), TypeError, "format name"),
        (lambda: quantize(torch.ones(4), F.INT4, rounding="floor"), ValueError, "rounding"),
    ],
    ids=["pack-odd", "pack-range", "pack-dtype", "unpack-dtype", "group-divide", "group-0", "group-dim",
         "gran-name", "column-1d", "int-input", "fp8-input", "list-input", "bits9", "fmt-type", "rounding"],
)  # fmt: skip
def test_bad_arguments(call, exc, words) -> None:
    with pytest.raises(exc, match=words):
        call()


# ---------------------------------------------------------------------------------- property tests
@settings(max_examples=60, deadline=None, derandomize=True)  # seeded: the same cases in CI
@given(
    fmt=st.sampled_from([F.INT2, F.INT4, F.INT8, F.FP8_E4M3, F.FP8_E5M2, F.FP6_E3M2, F.FP4_E2M1]),
    gran=st.sampled_from(["tensor", "row", "column", ("group", 4)]),
    rows=st.integers(1, 5),
    groups=st.integers(1, 4),
    log_mag=st.floats(-20, 20),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_nearest_error_is_at_most_half_a_step(fmt, gran, rows, groups, log_mag, seed) -> None:
    x = torch.randn(rows, 4 * groups, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x *= 2.0**log_mag
    q = quantize(x, fmt, gran)
    deq = q.dequantize(torch.float64)
    grid = fmt.codes()
    # x / scale lies inside the format's range under absmax (up to the float32 rounding of the scale), so the
    # error is at most half the local gap
    grouped, _ = q.granularity.group_view(x.shape)
    units = (x.reshape(grouped) / q.scale.double()).reshape(x.shape)
    assert bool((units.abs() <= fmt.max * (1 + 2**-23)).all())
    idx = torch.searchsorted(grid, units.clamp(grid[0], grid[-1]).contiguous()).clamp(1, len(grid) - 1)
    half_gap = (grid[idx] - grid[idx - 1]) / 2
    err_units = ((deq - x).reshape(grouped) / q.scale.double()).reshape(x.shape)
    assert bool((err_units.abs() <= half_gap * (1 + 1e-9)).all())
    # re-quantizing the dequantized values with the same scales is exact (idempotent)
    again = quantize(deq, fmt, q.granularity, scale=q.scale)
    assert torch.equal(again.dequantize(torch.float64), deq)


def test_qtensor_validates_its_fields() -> None:
    codes, scale = torch.zeros(2, 8, dtype=torch.int8), torch.ones(2, 1)
    row = Granularity("row")
    assert QTensor(codes, scale, F.INT8, row).dequantize().shape == (2, 8)
    with pytest.raises(ValueError, match="does not broadcast"):
        QTensor(codes, torch.ones(3, 1), F.INT8, row)
    with pytest.raises(TypeError, match="float32"):
        QTensor(codes, scale.double(), F.INT8, row)
    with pytest.raises(TypeError, match="lowbit format"):
        QTensor(codes, scale, "int8", row)
    with pytest.raises(TypeError, match="Granularity"):
        QTensor(codes, scale, F.INT8, "row")
    assert Granularity.parse(["group", 4, 0]) == Granularity("group", 4, 0)
    assert str(Granularity.parse(("group", 4, 0))) == "group4@dim0"


def test_mx_shared_exponent_just_below_a_power_of_two() -> None:
    # amax = 1 - 2^-40 (float64): floor(log2(amax)) = -1, so MXFP4's scale is 2^(-1 - 2); rounding amax to
    # float32 first would give 1.0 and the wrong exponent 2^-2
    x = torch.zeros(1, 32, dtype=torch.float64)
    x[0, 0] = 1 - 2.0**-40
    q = quantize(x, F.MXFP4)
    assert q.scale.item() == 2.0**-3
    # x / scale = 8 - 2^-37 is beyond E2M1's max 6: the OCP rule saturates it to 6 * 2^-3
    assert q.dequantize(torch.float64)[0, 0].item() == 0.75


@pytest.mark.parametrize("scale", ["absmax", "mse", ("percentile", 99.0), "pow2"], ids=str)
def test_quantize_carries_no_gradient(scale, gen) -> None:
    x = torch.randn(4, 32, generator=gen, requires_grad=True)
    q = quantize(x * 2, F.INT4, "row", scale=scale)
    assert not q.codes.requires_grad and not q.scale.requires_grad and not q.dequantize().requires_grad


def test_mxint8_saturates_symmetrically_and_never_to_inf() -> None:
    """Issue 14 #12: 1.999 -> 1.984375 but -1.999 -> -2.0 (code -128), and a block whose amax is near
    -3.4e38 dequantized to -Inf."""
    x = torch.zeros(4, 32)
    x[0, 0], x[1, 0] = 1.999, -1.999
    x[2, 0], x[2, 1:] = -3.4e38, 1.0
    x[3, 0], x[3, 1:] = 3.4e38, -1.0
    q = quantize(x, F.MXINT8)
    assert int(q.codes.min()) >= -127
    d = q.dequantize()
    assert float(d[0, 0]) == 1.984375 and float(d[1, 0]) == -1.984375
    assert bool(torch.isfinite(d).all()) and float(d[2, 0]) == -float(d[3, 0])


@pytest.mark.parametrize("fmt", [F.MXINT8, F.MXFP8_E4M3, F.MXFP4, F.INT8, F.FP8_E4M3])
@pytest.mark.parametrize("big", [1e39, -1e300])
def test_float64_beyond_float32_raises(fmt, big: float) -> None:
    """Issue 14 #12: float64 input beyond float32 range clamped the MX scale to 2^127 silently (dequantizing
    to Inf); non-MX raised only when the scale itself overflowed (1e39 with INT8 dequantized to Inf)."""
    x = torch.zeros(2, 32, dtype=torch.float64)
    x[1, 3] = big
    with pytest.raises(ValueError, match="beyond the float32 range"):
        quantize(x, fmt)


def test_explicit_scale_that_overflows_on_dequantization_raises() -> None:
    with pytest.raises(ValueError, match="overflows float32"):
        quantize(torch.ones(4), F.INT8, scale=1e37)
    assert bool(torch.isfinite(quantize(torch.ones(4), F.INT8, scale=2e36).dequantize()).all())


def test_meta_tensor_raises_naming_the_fix() -> None:
    """Issue 14 #14: quantize on a meta tensor failed inside .item()."""
    with pytest.raises(ValueError, match="meta device.*materialized"):
        quantize(torch.empty(4, 32, device="meta"), F.INT8)
    with pytest.raises(ValueError, match="meta device"):
        quantize(torch.empty(4, 32, device="meta"), F.MXFP4)
