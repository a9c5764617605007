"""Leverage score sampling: Σp = N, p <= 1, proportionality, the clamping loop, unbiased 1/p weights."""

from __future__ import annotations

import pytest
import torch

from lowbit.training import leverage_probabilities, select_rows


def test_probabilities_sum_and_bound(gen: torch.Generator) -> None:
    scores = torch.rand(200, generator=gen) ** 4
    scores[:5] = 1e3  # dominant rows: forces several clamping rounds
    p = leverage_probabilities(scores, 100)
    assert float(p.sum()) == pytest.approx(100.0, rel=1e-12)
    assert float(p.max()) <= 1.0 and (p[:5] == 1.0).all()
    free = p < 1
    ratio = p[free] / scores[free].double()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-10)  # uncapped rows stay ∝ score


def test_fewer_nonzero_rows_than_budget() -> None:
    scores = torch.tensor([0.0, 2.0, 0.0, 1.0])
    assert leverage_probabilities(scores, 2).tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        leverage_probabilities(torch.tensor([1.0, -1.0]), 1)


def test_nonzero_mode_keeps_every_nonzero_row() -> None:
    idx, w = select_rows(torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0]), "nonzero")
    assert idx.tolist() == [1, 3, 4] and w.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="mode"):
        select_rows(torch.ones(3), "all")


def test_sampling_is_unbiased() -> None:
    scores = torch.rand(40, generator=torch.Generator().manual_seed(1)) + 0.01
    n_seeds = 2000
    total = torch.zeros(n_seeds, 40, dtype=torch.float64)
    for s in range(n_seeds):
        idx, w = select_rows(scores, "sample", torch.Generator().manual_seed(s))
        total[s, idx] = w.double()
    mean, se = total.mean(0), total.std(0) / n_seeds**0.5
    assert ((mean - 1.0).abs() <= 5 * se + 1e-9).all()  # E[keep/p] = 1 for every row
    assert abs(float((total > 0).sum(1).double().mean()) - 20.0) < 1.0  # about N of the 2N rows kept
