"""Shared test helpers: seeded generators and the one SQNR definition."""

from __future__ import annotations

import pytest
import torch


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB of ``approx`` against ``ref`` (computed in float64)."""
    ref64, approx64 = ref.double(), approx.double()
    noise = (ref64 - approx64).pow(2).sum()
    signal = ref64.pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator per test."""
    return torch.Generator().manual_seed(1234)
