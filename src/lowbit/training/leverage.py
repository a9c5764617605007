"""Leverage score sampling (Xi et al. §4.3): which rows of a stacked gradient enter a backward product.

Rows ``i`` of the 2N-row stack ``[hi; lo]`` have scores ``c_i`` (``‖∇Y↕_i‖·‖X↕_i‖`` for the weight gradient,
``‖∇Y↕_i‖`` for the activation gradient). "sample": ``p_i ∝ c_i`` with ``Σp = budget`` (N), values above 1
clamped and the others rescaled until the sum is the budget again; row i kept with probability ``p_i`` and
weighted ``1/p_i`` — unbiased. "nonzero": every row with ``c_i > 0`` kept with weight 1 (released code).
"""

from __future__ import annotations

import torch

_MAX_CLAMP_ROUNDS = 64


def leverage_probabilities(scores: torch.Tensor, budget: float) -> torch.Tensor:
    """Keep probabilities ``p`` (float64): ``p ∝ scores``, ``p <= 1``, ``Σp = min(budget, nnz)``."""
    c = scores.detach().double()
    if (c < 0).any() or not torch.isfinite(c).all():
        raise ValueError("leverage scores must be finite and >= 0")
    nnz = int((c > 0).sum())
    if nnz <= budget:
        return (c > 0).double()
    p = torch.zeros_like(c)
    capped = torch.zeros_like(c, dtype=torch.bool)
    for _ in range(_MAX_CLAMP_ROUNDS):
        free = ~capped
        room = budget - float(capped.sum())
        p[free] = c[free] * (room / float(c[free].sum()))
        over = free & (p > 1.0)
        if not over.any():
            break
        capped |= over
        p[capped] = 1.0
    else:  # pragma: no cover - each round caps at least one more row, so 2N rounds always suffice
        raise RuntimeError("leverage probability clamping did not converge")
    return p


def select_rows(
    scores: torch.Tensor, mode: str, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, weight)``: kept row indices (int64) and their float32 weights (1/p when sampling, else 1)."""
    if mode == "nonzero":
        idx = torch.nonzero(scores > 0).flatten()
        return idx, torch.ones(idx.numel(), dtype=torch.float32)
    if mode == "sample":
        p = leverage_probabilities(scores, scores.numel() / 2)
        u = torch.rand(p.shape, generator=generator, dtype=torch.float64)
        idx = torch.nonzero(u < p).flatten()
        return idx, (1.0 / p[idx]).float()
    if mode == "none":
        idx = torch.arange(scores.numel())
        return idx, torch.ones(idx.numel(), dtype=torch.float32)
    raise ValueError(f"mode must be 'nonzero', 'sample' or 'none', got {mode!r}")
