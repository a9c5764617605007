"""Quantizers against float64 references written here: FP8 vs torch casts, minifloats, MX, ints, scales."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lowbit.formats as F
from lowbit.quantizers import QTensor, quantize, round_to_format

FP8 = [(F.FP8_E4M3, torch.float8_e4m3fn), (F.FP8_E5M2, torch.float8_e5m2)]
MINIFLOATS = [F.FP8_E4M3, F.FP8_E5M2, F.FP6_E3M2, F.FP6_E2M3, F.FP4_E2M1, F.float_format(3, 4)]


# ------------------------------------------------------------------------------------------------ references
def ref_round(x: np.ndarray, fmt, mode: str = "nearest") -> np.ndarray:
    """Float64 reference: saturate, then the nearest of fmt.codes() (ties to even code / away from 0)."""
    if isinstance(fmt, F.IntFormat):
        t = np.clip(x, fmt.qmin, fmt.qmax)
        return np.round(t) if mode == "nearest" else np.sign(t) * np.floor(np.abs(t) + 0.5)
    grid = fmt.codes().numpy()
    pos = grid[grid >= 0]  # 0, min_subnormal, ..., max: index parity = mantissa parity of the bit pattern
    mag = np.minimum(np.abs(x), fmt.max)
    hi = np.clip(np.searchsorted(pos, mag, side="left"), 0, len(pos) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = mag - pos[lo], pos[hi] - mag
    tie_pick = hi if mode == "nearest-away" else np.where(hi % 2 == 0, hi, lo)
    idx = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, tie_pick))
    return np.copysign(pos[idx], x)


def boundary_values(fmt, gen: torch.Generator) -> torch.Tensor:
    """Every code, every midpoint between neighbours (ties), points just off them, beyond max, and random."""
    grid = fmt.codes()
    mids = (grid[1:] + grid[:-1]) / 2
    near = torch.cat([mids * (1 + 1e-9), mids * (1 - 1e-9)])
    beyond = torch.tensor([fmt.max * 1.01, fmt.max * 7, -fmt.max * 3, 0.0, -0.0], dtype=torch.float64)
    rand = torch.randn(2000, generator=gen, dtype=torch.float64) * fmt.max / 3
    return torch.cat([grid, mids, near, beyond, rand])


# ----------------------------------------------------------------------------------- FP8 vs torch's casts
def all_bf16_in_range(fmt) -> torch.Tensor:
    """Every bf16 bit pattern as float32, kept when finite and |x| <= fmt.max."""
    x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    return x[torch.isfinite(x) & (x.abs() <= fmt.max)]


@pytest.mark.parametrize(("fmt", "dtype"), FP8, ids=["e4m3", "e5m2"])
def test_fp8_rne_equals_torch_cast_on_every_bf16(fmt, dtype) -> None:
    x = all_bf16_in_range(fmt)
    assert x.numel() > 30000
    ours = round_to_format(x, fmt).to(dtype).view(torch.uint8)
    assert torch.equal(ours, x.to(dtype).view(torch.uint8))
    codes = quantize(x, fmt, scale=1.0).codes  # the quantizer path with no scaling
    assert codes.dtype == dtype and torch.equal(codes.view(torch.uint8), x.to(dtype).view(torch.uint8))


@pytest.mark.parametrize(("fmt", "dtype"), FP8, ids=["e4m3", "e5m2"])
def test_fp8_rne_equals_torch_cast_on_random_float32(fmt, dtype, gen) -> None:
    # log-uniform magnitudes over the whole range incl. subnormals and underflow, random signs
    log2 = torch.empty(200_000).uniform_(math.log2(fmt.min_subnormal) - 3, math.log2(fmt.max), generator=gen)
    sign = torch.randint(0, 2, log2.shape, generator=gen) * 2 - 1
    x = (torch.exp2(log2) * sign).clamp(-fmt.max, fmt.max)
    ours = round_to_format(x, fmt).to(dtype).view(torch.uint8)
    assert torch.equal(ours, x.to(dtype).view(torch.uint8))


# ------------------------------------------------------------------------------ minifloat and int rounding
@pytest.mark.parametrize("mode", ["nearest", "nearest-away"])
@pytest.mark.parametrize("fmt", MINIFLOATS + [F.INT4, F.INT8, F.UINT4, F.int_format(3, narrow=True)],
                         ids=lambda f: f.name)  # fmt: skip
def test_round_to_format_matches_reference(fmt, mode, gen) -> None:
    x = boundary_values(fmt, gen)
    ours = round_to_format(x, fmt, rounding=mode)
    assert torch.equal(ours, torch.from_numpy(ref_round(x.numpy(), fmt, mode)))
    assert fmt.codes().min() <= ours.min() and ours.max() <= fmt.codes().max()


def test_ties_and_saturation_examples() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -2.5, 3.5, 1000.0, -1000.0, float("inf"), float("-inf")])
    assert round_to_format(x, F.INT4).tolist() == [0, 2, 2, -2, 4, 7, -8, 7, -8]
    assert round_to_format(x, F.INT4, "nearest-away").tolist() == [1, 2, 3, -3, 4, 7, -8, 7, -8]
    # FP4 E2M1 grid 0, .5, 1, 1.5, 2, 3, 4, 6: 2.5 ties to 2 (even mantissa), 5 ties to 4, +-1000 saturate
    e2m1 = torch.tensor([2.5, 5.0, 0.25, 0.75, 1000.0, -1000.0])
    assert round_to_format(e2m1, F.FP4_E2M1).tolist() == [2.0, 4.0, 0.0, 1.0, 6.0, -6.0]
    assert round_to_format(torch.tensor([1e6, -float("inf")]), F.FP8_E4M3).tolist() == [448.0, -448.0]


def test_half_inputs_and_nan() -> None:
    x = torch.tensor([0.3, 1.7, -2.2], dtype=torch.bfloat16)
    out = round_to_format(x, F.INT4)
    assert out.dtype == torch.float32 and out.tolist() == [0.0, 2.0, -2.0]
    with pytest.raises(ValueError, match="NaN"):
        round_to_format(torch.tensor([1.0, float("nan")]), F.FP8_E4M3)


# ------------------------------------------------------------------------------------------- MX formats
def ref_mx(x: np.ndarray, fmt: F.MXFormat) -> tuple[np.ndarray, np.ndarray]:
    """OCP MX reference, float64: per 32-block X = 2^(floor(log2 amax) - emax_elem), elements saturated."""
    blocks = x.reshape(*x.shape[:-1], -1, fmt.block)
    out, scales = np.empty_like(blocks), np.empty(blocks.shape[:-1])
    for idx in np.ndindex(*blocks.shape[:-1]):
        amax = np.abs(blocks[idx]).max()
        scale = 1.0 if amax == 0 else 2.0 ** (math.frexp(amax)[1] - 1 - fmt.element_emax)
        scales[idx] = scale
        out[idx] = ref_round(blocks[idx] / scale, fmt.element) * scale
    return out.reshape(x.shape), scales


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
