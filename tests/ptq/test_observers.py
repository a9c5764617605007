"""Observers against exact float64 statistics of the observed data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers import ref_round

import lowbit.formats as F
from lowbit.ptq.observers import HistogramObserver, ObserverSpec


def _data(gen: torch.Generator) -> list[torch.Tensor]:
    # Batches of growing range (forces several range doublings) with planted outliers.
    out = []
    for i, mag in enumerate((0.3, 1.0, 5.0, 40.0)):
        x = torch.randn(50, 64, generator=gen) * mag
        x[i, 3] = 9.0 * mag  # outlier
        out.append(x)
    return out


def test_max_observer_is_exact_amax(gen: torch.Generator) -> None:
    obs = HistogramObserver(ObserverSpec("max"))
    data = _data(gen)
    for x in data:
        obs.update(x)
    amax = float(torch.cat([x.flatten() for x in data]).abs().max())
    assert obs.amax == amax
    assert obs.scale(F.FP8_E4M3) == pytest.approx(amax / 448, rel=1e-7)
    assert obs.scale(F.INT8) == pytest.approx(amax / 127, rel=1e-7)


def test_range_doubling_merges_bins_exactly(gen: torch.Generator) -> None:
    """The histogram after growing batches equals one histogram of all data over the final range."""
    spec = ObserverSpec("max", bins=256)
    obs = HistogramObserver(spec)
    data = _data(gen)
    for x in data:
        obs.update(x)
    mag = torch.cat([x.flatten() for x in data]).abs().double().numpy()
    ref, _ = np.histogram(mag, bins=spec.bins, range=(0.0, obs.range))
    assert obs.range == 2.0 ** np.ceil(np.log2(mag.max()))
    # values exactly on bin edges may fall either side in histc vs numpy; allow none here (random data)
    np.testing.assert_array_equal(obs.hist.numpy(), ref)


@pytest.mark.parametrize("p", [50.0, 99.0, 99.9], ids=["p50", "p99", "p99.9"])
def test_percentile_within_one_bin(gen: torch.Generator, p: float) -> None:
    obs = HistogramObserver(ObserverSpec("percentile", percentile=p, bins=4096))
    data = _data(gen)
    for x in data:
        obs.update(x)
    mag = np.sort(torch.cat([x.flatten() for x in data]).abs().double().numpy())
    # The estimate sits in the bin of the order statistic at rank p% of N: between the order statistics
    # neighbouring numpy's interpolation position, give or take one bin.
    pos = p / 100 * (mag.size - 1)
    lo = mag[max(int(np.floor(pos)) - 1, 0)]
    hi = mag[min(int(np.ceil(pos)) + 1, mag.size - 1)]
    width = obs.range / 4096
    assert lo - width <= obs.clip_value(F.INT8) <= hi + width


@pytest.mark.parametrize("fmt", [F.INT8, F.FP8_E4M3], ids=["int8", "fp8-e4m3"])
def test_mse_observer_matches_exact_search(gen: torch.Generator, fmt) -> None:
    """The histogram MSE clip has (nearly) the same float64 error as the exact best clip ratio."""
    x = torch.randn(20000, generator=gen, dtype=torch.float64)
    x[:5] = torch.tensor([9.0, -8.0, 7.5, 10.0, -9.5])  # outliers
    obs = HistogramObserver(ObserverSpec("mse", bins=8192))
    obs.update(x.float())
    xs = x.float().double().numpy()

    def err(clip: float) -> float:
        step = clip / fmt.max
        return float(((ref_round(xs / step, fmt) * step - xs) ** 2).sum())

    amax = float(np.abs(xs).max())
    best = min(err(amax * (1 - i / 100)) for i in range(81))
    got = err(obs.clip_value(fmt))
    assert got <= best * 1.05
    assert got <= err(amax)


def test_all_zero_input_gives_scale_one() -> None:
    obs = HistogramObserver(ObserverSpec("percentile"))
    obs.update(torch.zeros(10, 4))
    assert obs.scale(F.FP8_E4M3) == 1.0
    obs.update(torch.full((2, 2), 3.0))
    assert obs.amax == 3.0 and obs.hist.sum() == 44


def test_errors() -> None:
    obs = HistogramObserver(ObserverSpec())
    with pytest.raises(ValueError, match="no data"):
        obs.scale(F.INT8)
    with pytest.raises(ValueError, match="NaN"):
        obs.update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="observer rule"):
        ObserverSpec("minmax")
    with pytest.raises(ValueError, match="percentile"):
        ObserverSpec("percentile", percentile=0)
    with pytest.raises(ValueError, match="dynamic"):
        obs.update(torch.ones(3))
        obs.scale(F.MXFP8_E4M3)
    assert ObserverSpec.parse(("percentile", 99.5)) == ObserverSpec("percentile", 99.5)
