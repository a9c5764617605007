"""round_to_format() and its paths against torch's FP8 casts and float64 references; stochastic rounding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from tests.helpers import boundary_values, ref_round

import lowbit.formats as F
from lowbit.quantizers import quantize
from lowbit.rounding import round_float, round_to_format

FP8 = [(F.FP8_E4M3, torch.float8_e4m3fn), (F.FP8_E5M2, torch.float8_e5m2)]
MINIFLOATS = [
    F.FP8_E4M3,
    F.FP8_E5M2,
    F.FP6_E3M2,
    F.FP6_E2M3,
    F.FP4_E2M1,
    F.float_format(3, 4),
    F.float_format(3, 0),
]
FIVE_SIGMA = 5.0  # issue 2: stochastic rounding mean error within a 5-sigma bound


# ----------------------------------------------------------------------------------- FP8 vs torch's casts
def all_bf16_in_range(fmt) -> torch.Tensor:
    """Every bf16 bit pattern as float32, kept when finite and |x| <= fmt.max."""
    x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    return x[torch.isfinite(x) & (x.abs() <= fmt.max)]


def fp8_paths(fmt, dtype):
    """Each way lowbit rounds to FP8, as a function float32 x -> FP8 bit patterns (uint8)."""
    return {
        # round_to_format's float32 path (saturate, then torch's RNE cast)
        "round_to_format": lambda x: round_to_format(x, fmt).to(dtype).view(torch.uint8),
        # the generic minifloat rounding (binade + step), in float32 and in float64
        "round_float-f32": lambda x: round_float(x, fmt, "nearest", None).to(dtype).view(torch.uint8),
        "round_float-f64": lambda x: (
            round_float(x.double(), fmt, "nearest", None).float().to(dtype).view(torch.uint8)
        ),
        # the quantizer with no scaling, which stores the codes as torch FP8
        "quantize-scale1": lambda x: quantize(x, fmt, scale=1.0).codes.view(torch.uint8),
        "quantize-scale1-f64": lambda x: quantize(x.double(), fmt, scale=1.0).codes.view(torch.uint8),
    }


PATHS = list(fp8_paths(F.FP8_E4M3, torch.float8_e4m3fn))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("fmt", "dtype"), FP8, ids=["e4m3", "e5m2"])
def test_fp8_rne_equals_torch_cast_on_every_bf16(fmt, dtype, path) -> None:
    x = all_bf16_in_range(fmt)
    assert x.numel() > 30000
    assert torch.equal(fp8_paths(fmt, dtype)[path](x), x.to(dtype).view(torch.uint8))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("fmt", "dtype"), FP8, ids=["e4m3", "e5m2"])
def test_fp8_rne_equals_torch_cast_on_random_float32(fmt, dtype, path, gen) -> None:
    # log-uniform magnitudes over the whole range incl. subnormals and underflow, random signs
    log2 = torch.empty(100_000).uniform_(math.log2(fmt.min_subnormal) - 3, math.log2(fmt.max), generator=gen)
    sign = torch.randint(0, 2, log2.shape, generator=gen) * 2 - 1
    x = (torch.exp2(log2) * sign).clamp(-fmt.max, fmt.max)
    assert torch.equal(fp8_paths(fmt, dtype)[path](x), x.to(dtype).view(torch.uint8))


# ------------------------------------------------------------------------------ minifloat and int rounding
@pytest.mark.parametrize("mode", ["nearest", "nearest-away"])
@pytest.mark.parametrize("fmt", MINIFLOATS + [F.INT4, F.INT8, F.UINT4, F.int_format(3, narrow=True)],
                         ids=lambda f: f.name)  # fmt: skip
def test_round_to_format_matches_reference(fmt, mode, gen) -> None:
    x = boundary_values(fmt, gen)
    ours = round_to_format(x, fmt, rounding=mode)
    assert torch.equal(ours, torch.from_numpy(ref_round(x.numpy(), fmt, mode)))
    assert fmt.codes().min() <= ours.min() and ours.max() <= fmt.codes().max()


def test_custom_minifloats_match_reference(gen) -> None:
    # every E1..E5 x M0..M4 format under each special-code convention, incl. M0 (log-like) grids whose
    # ties-to-even is decided by the exponent field's last bit
    checked = 0
    for exp_bits, man_bits, special in itertools.product(range(1, 6), range(0, 5), ("ieee", "fn", "finite")):
        try:
            fmt = F.float_format(exp_bits, man_bits, special=special)
        except ValueError:
            continue  # e.g. ieee with one exponent bit
        x = boundary_values(fmt, gen)[:600]
        for mode, dtype in itertools.product(("nearest", "nearest-away"), (torch.float32, torch.float64)):
            ours = round_to_format(x.to(dtype), fmt, mode).double()
            assert torch.equal(ours, torch.from_numpy(ref_round(x.to(dtype).double().numpy(), fmt, mode))), (
                fmt.name,
                mode,
                dtype,
            )
        checked += 1
    assert checked > 60


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


# ------------------------------------------------------------------------------------ stochastic rounding
STOCHASTIC_FORMATS = [F.INT4, F.INT8, F.FP8_E4M3, F.FP8_E5M2, F.FP4_E2M1, F.FP6_E2M3]


@pytest.mark.parametrize("fmt", STOCHASTIC_FORMATS, ids=lambda f: f.name)
def test_stochastic_rounding_is_unbiased(fmt, gen) -> None:
    n = 100_000
    # one value repeated n times, off-grid (between two codes, not at the midpoint) ...
    grid = fmt.codes()
    lo_code, hi_code = grid[len(grid) // 2 + 3], grid[len(grid) // 2 + 4]
    value = float(lo_code + 0.3 * (hi_code - lo_code))
    draws = round_to_format(torch.full((n,), value, dtype=torch.float64), fmt, "stochastic", gen)
    assert set(draws.unique().tolist()) == {float(lo_code), float(hi_code)}  # only the two neighbours
    p = 0.3  # P(round up)
    sigma = float(hi_code - lo_code) * math.sqrt(p * (1 - p) / n)
    assert abs(draws.mean().item() - value) < FIVE_SIGMA * sigma
    # ... and n different values spread over the whole range (mean error over all of them)
    x = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * fmt.max
    err = round_to_format(x, fmt, "stochastic", gen) - x
    assert abs(err.mean().item()) < FIVE_SIGMA * err.std().item() / math.sqrt(n)
    # every draw is one of the two grid values around x
    g = grid.numpy()
    below = torch.from_numpy(g[np.searchsorted(g, x.numpy(), side="right") - 1])
    above = torch.from_numpy(g[np.minimum(np.searchsorted(g, x.numpy(), side="left"), len(g) - 1)])
    assert bool(((err + x == below) | (err + x == above)).all())


def test_stochastic_is_reproducible_by_seed_and_varies_across_seeds() -> None:
    x = torch.randn(10_000, dtype=torch.float64) * 3
    a = round_to_format(x, F.INT4, "stochastic", torch.Generator().manual_seed(7))
    b = round_to_format(x, F.INT4, "stochastic", torch.Generator().manual_seed(7))
    c = round_to_format(x, F.INT4, "stochastic", torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    fa = quantize(x, F.FP4_E2M1, rounding="stochastic", generator=torch.Generator().manual_seed(3))
    fb = quantize(x, F.FP4_E2M1, rounding="stochastic", generator=torch.Generator().manual_seed(3))
    assert torch.equal(fa.codes, fb.codes)


def test_stochastic_on_grid_values_is_exact(gen) -> None:
    for fmt in STOCHASTIC_FORMATS:
        grid = fmt.codes()
        assert torch.equal(round_to_format(grid, fmt, "stochastic", gen), grid)


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"rounding": "up"}, ValueError, "rounding must be one of"),
        ({"rounding": "stochastic", "generator": 3}, TypeError, "generator"),
        ({"fmt": "int9"}, ValueError, "bits"),
    ],
    ids=["rounding", "generator", "fmt"],
)
def test_bad_arguments(kwargs, exc, words) -> None:
    args = {"x": torch.ones(3), "fmt": F.INT4} | kwargs
    with pytest.raises(exc, match=words):
        round_to_format(**args)
    with pytest.raises(TypeError, match=r"x\.float\(\)"):
        round_to_format(torch.ones(3, dtype=torch.int64), F.INT4)


@pytest.mark.parametrize("fmt", [F.INT4, F.FP4_E2M1, F.FP8_E4M3, F.float_format(2, 0)], ids=lambda f: f.name)
def test_result_is_detached_and_input_untouched(fmt, gen) -> None:
    x = torch.randn(16, generator=gen, requires_grad=True)
    before = x.detach().clone()
    for mode in ("nearest", "nearest-away", "stochastic"):
        y = round_to_format(x * 3, fmt, mode, gen)
        assert not y.requires_grad
    assert torch.equal(x.detach(), before)
    ste = x + (round_to_format(x, fmt) - x).detach()  # the documented straight-through pattern
    ste.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
