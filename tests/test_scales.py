"""Scale rules (absmax, percentile, MSE search, pow2, explicit) vs float64 references; edge-case rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.helpers import ref_round

import lowbit.formats as F
from lowbit.quantizers import MSE_RATIOS, quantize

FORMATS = [F.INT4, F.INT8, F.FP8_E4M3, F.FP4_E2M1]


def rows_with_outliers(gen: torch.Generator, rows: int = 6, cols: int = 64) -> torch.Tensor:
    """Rows of different magnitudes, each with one planted outlier (where clipping pays off)."""
    x = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * torch.logspace(-3, 3, rows).unsqueeze(1)
    x[torch.arange(rows), torch.randint(0, cols, (rows,), generator=gen)] *= 12
    return x


@pytest.mark.parametrize("p", [50.0, 90, 99.9, 100])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_percentile_scale_matches_numpy(p, fmt, gen) -> None:
    x = rows_with_outliers(gen)
    q = quantize(x, fmt, "row", scale=("percentile", p))
    clip = np.percentile(np.abs(x.numpy()), p, axis=1, keepdims=True)  # numpy's linear interpolation
    ref_scale = (clip / fmt.max).astype(np.float32)
    np.testing.assert_allclose(q.scale.numpy(), ref_scale, rtol=2e-7, atol=0)
    if p == 100:
        assert torch.equal(q.scale, quantize(x, fmt, "row").scale)  # the 100th percentile is the absmax


def test_percentile_of_a_mostly_zero_group_falls_back_to_absmax() -> None:
    x = torch.zeros(2, 100, dtype=torch.float64)
    x[0, 3] = 5.0  # the 50th percentile of row 0 is 0, its absmax is 5
    q = quantize(x, F.INT8, "row", scale=("percentile", 50))
    assert q.scale[:, 0].tolist() == [np.float32(5 / 127), 1.0]
    assert q.dequantize(torch.float64)[0, 3].item() == pytest.approx(5.0, rel=1e-6)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_mse_scale_is_the_best_ratio_by_brute_force(fmt, gen) -> None:
    x = rows_with_outliers(gen)
    q = quantize(x, fmt, "row", scale="mse")
    xn = x.numpy()
    amax = np.abs(xn).max(axis=1, keepdims=True)
    errs = []
    for ratio in MSE_RATIOS:
        s = (amax * ratio / fmt.max).astype(np.float32).astype(np.float64)
        errs.append(((ref_round(xn / s, fmt) * s - xn) ** 2).sum(axis=1))
    errs = np.stack(errs, axis=1)  # (rows, ratios)
    best = errs.argmin(axis=1)  # first minimum = largest ratio among ties
    ref_scale = (amax[:, 0] * np.asarray(MSE_RATIOS)[best] / fmt.max).astype(np.float32)
    assert torch.equal(q.scale[:, 0], torch.from_numpy(ref_scale))
    # the search never does worse than absmax; at 4 bits the planted outliers make it clip somewhere
    absmax_err = ((quantize(x, fmt, "row").dequantize(torch.float64) - x) ** 2).sum(1)
    mse_err = ((q.dequantize(torch.float64) - x) ** 2).sum(1)
    assert bool((mse_err <= absmax_err).all())
    assert fmt.bits > 4 or bool((q.scale < quantize(x, fmt, "row").scale).any())


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_pow2_scale_is_absmax_rounded_up_to_a_power_of_two(fmt, gen) -> None:
    x = rows_with_outliers(gen)
    x[0] = torch.linspace(-1, 1, 64, dtype=torch.float64) * fmt.max * 2**-3  # absmax step exactly 2**-3
    q = quantize(x, fmt, "row", scale="pow2")
    absmax = quantize(x, fmt, "row").scale
    for s, a in zip(q.scale[:, 0].tolist(), absmax[:, 0].tolist(), strict=True):
        assert s == 2.0 ** math.ceil(math.log2(a))
    assert q.scale[0, 0].item() == 2**-3


def test_explicit_scales(gen) -> None:
    x = torch.randn(4, 32, generator=gen, dtype=torch.float64) * 5
    q = quantize(x, F.INT8, scale=1.0)  # no scaling: plain rounding to the integer grid
    assert torch.equal(q.dequantize(torch.float64), torch.from_numpy(ref_round(x.numpy(), F.INT8)))
    per_row = torch.tensor([[0.5], [1.0], [2.0], [0.25]])
    q = quantize(x, F.INT4, "row", scale=per_row)
    ref = ref_round(x.numpy() / per_row.double().numpy(), F.INT4) * per_row.double().numpy()
    assert torch.equal(q.dequantize(torch.float64), torch.from_numpy(ref))
    assert torch.equal(quantize(x, F.INT4, "row", scale=0.5).scale, torch.full((4, 1), 0.5))


def test_all_zero_empty_tiny_and_saturation() -> None:
    zeros = quantize(torch.zeros(3, 8), F.INT8, "row")
    assert torch.equal(zeros.scale, torch.ones(3, 1)) and not zeros.codes.any()
    empty = quantize(torch.zeros(0, 8), F.FP8_E4M3, "row")
    assert empty.codes.shape == (0, 8) and empty.scale.shape == (0, 1)
    assert quantize(torch.zeros(4, 0), F.INT4).scale.item() == 1.0
    tiny = quantize(torch.full((4,), 1e-42), F.INT8)  # absmax / 127 would be a float32 subnormal
    assert tiny.scale.item() == torch.finfo(torch.float32).tiny
    sat = quantize(torch.tensor([1e30, -1e30, 1.0]), F.FP8_E4M3, scale=1.0)
    assert sat.codes.float().tolist() == [448.0, -448.0, 1.0]  # saturates, never Inf/NaN
    inf = quantize(torch.tensor([float("inf"), -float("inf"), 2.0]), F.INT4, scale=1.0)
    assert inf.codes.tolist() == [7, -8, 2]  # explicit scale: Inf saturates


@pytest.mark.parametrize(
    ("x", "kwargs", "exc", "words"),
    [
        (torch.tensor([1.0, float("nan")]), {}, ValueError, "1 NaN"),
        (torch.tensor([1.0, float("nan")]), {"scale": 1.0}, ValueError, "NaN"),
        (torch.tensor([1.0, float("inf")]), {"scale": "mse"}, ValueError, "1 infinite"),
        (torch.full((32,), float("inf")), {"fmt": F.MXFP4, "granularity": None}, ValueError, "infinite"),
        (torch.ones(4), {"scale": "max"}, ValueError, "scale rule must be one of"),
        (torch.ones(4), {"scale": "percentile"}, ValueError, r"\('percentile', p\)"),
        (torch.ones(4), {"scale": ("percentile", 0)}, ValueError, "percentile p"),
        (torch.ones(4), {"scale": ("percentile", 101)}, ValueError, "percentile p"),
        (torch.ones(4), {"scale": 0.0}, ValueError, "positive"),
        (torch.ones(4), {"scale": -1.0}, ValueError, "positive"),
        (torch.ones(4), {"scale": [1.0]}, TypeError, "scale must be"),
        (torch.ones(2, 4), {"granularity": "row", "scale": torch.ones(3, 1)}, ValueError, "per group"),
        (torch.full((2,), 3e38), {"fmt": F.float_format(2, 1, 5)}, ValueError, "overflows"),
    ],
    ids=["nan-rule", "nan-explicit", "inf-mse", "inf-mx", "rule-name", "percentile-bare", "p0", "p101",
         "scale0", "scale-neg", "scale-list", "scale-shape", "scale-overflow"],
)  # fmt: skip
def test_bad_input_and_arguments(x, kwargs, exc, words) -> None:
    args = {"fmt": F.INT4, "granularity": "tensor"} | kwargs
    with pytest.raises(exc, match=words):
        quantize(x, **args)
