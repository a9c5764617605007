"""Bit splitting: codes in INT4, reconstruction error bound, unbiasedness of the stochastic low half."""

from __future__ import annotations

import pytest
import torch

from lowbit.training import bit_merge, bit_split
from lowbit.training.bit_split import bit_split_merged


def _grad(gen: torch.Generator) -> torch.Tensor:
    g = torch.randn(64, 48, generator=gen)
    g[3, 5] = 40.0  # planted outlier: sets the scale, most entries use few codes
    g[7] = 1e-6  # a row of tiny values
    return g


@pytest.mark.parametrize(
    "rounding, bound", [("nearest", 0.5), ("stochastic", 1.0)], ids=["nearest", "stochastic"]
)
def test_reconstruction_error_bound(gen: torch.Generator, rounding: str, bound: float) -> None:
    g = _grad(gen)
    hi, lo, unit = bit_split(g, rounding=rounding, generator=gen)
    assert hi.dtype == lo.dtype == torch.int8
    assert int(hi.abs().max()) <= 7 and int(lo.abs().max()) <= 7
    assert unit == pytest.approx(40.0 / 98.0)
    err = (bit_merge(hi, lo, unit).double() - g.double()).abs().max()
    assert err <= bound * unit * (1 + 1e-5)  # one (or half a) low-half step


def test_stochastic_split_unbiased() -> None:
    g = _grad(torch.Generator().manual_seed(0))
    n_seeds = 400
    samples = torch.stack(
        [
            bit_merge(*bit_split(g, generator=torch.Generator().manual_seed(s))).double()
            for s in range(n_seeds)
        ]
    )
    # exact per-entry std of stochastic rounding: unit·sqrt(f(1−f)), f the fractional part of the residual
    # (the sample std is 0 for entries whose rare round-up never happened in n_seeds draws)
    unit = 40.0 / 98.0
    t = g.double() / unit
    resid = t - 14 * torch.round(t / 14)
    frac = resid - torch.floor(resid)
    se = unit * (frac * (1 - frac)).sqrt() / n_seeds**0.5
    mean = samples.mean(0)
    assert ((mean - g.double()).abs() <= 5 * se + 1e-6 * g.double().abs()).all()
    assert (samples.std(0) > 0).float().mean() > 0.5  # the test is not vacuous: most entries do vary


def test_spec_clamp_six_clips_the_top() -> None:
    g = torch.tensor([[1.0, -1.0, 0.5]])
    hi, lo, unit = bit_split(g, clamp=6, rounding="nearest")
    assert float(bit_merge(hi, lo, unit)[0, 0]) == pytest.approx(90 / 98)  # the paper's ±6: max gives 90/98
    hi, lo, unit = bit_split(g, clamp=7, rounding="nearest")
    assert float(bit_merge(hi, lo, unit)[0, 0]) == pytest.approx(1.0)


def test_zero_and_nonfinite() -> None:
    hi, lo, unit = bit_split(torch.zeros(3, 4))
    assert unit == 1.0 and not hi.any() and not lo.any()
    with pytest.raises(ValueError, match="non-finite"):
        bit_split(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="rounding"):
        bit_split(torch.ones(2, 2), rounding="down")


@pytest.mark.parametrize("clamp", [7, 6], ids=["clamp7-single-rounding", "clamp6-via-split"])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_merged_code_is_identical(gen: torch.Generator, rounding: str, clamp: int) -> None:
    g = _grad(gen) * 1.37  # scale not a power of two: residuals are not exact binary fractions
    hi, lo, unit = bit_split(g, clamp=clamp, rounding=rounding, generator=torch.Generator().manual_seed(5))
    merged, unit2 = bit_split_merged(
        g, clamp=clamp, rounding=rounding, generator=torch.Generator().manual_seed(5)
    )
    assert unit2 == unit and merged.dtype == torch.int8
    assert torch.equal(merged.short(), 14 * hi.short() + lo.short())
