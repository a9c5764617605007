"""Leverage score sampling (Xi et al. §4.3): which rows of a stacked gradient enter a backward product.

Rows ``i`` of the 2N-row stack ``[hi; lo]`` have scores ``c_i`` (``‖∇Y↕_i‖·‖X↕_i‖`` for the weight gradient,
``‖∇Y↕_i‖`` for the activation gradient). "sample": ``p_i ∝ c_i`` with ``Σp = budget`` (N), values above 1
clamped and the others rescaled until the sum is the budget again; row i kept with probability ``p_i`` and
weighted ``1/p_i`` — unbiased. "nonzero": every row with ``c_i > 0`` kept with weight 1 (released code).
"""

from __future__ import annotations

from typing import Any

import torch

_MAX_CLAMP_ROUNDS = 64


def leverage_probabilities(scores: torch.Tensor, budget: float, group: Any = None) -> torch.Tensor:
    """Keep probabilities ``p`` (float64): ``p ∝ scores``, ``p <= 1``, ``Σp = min(budget, nnz)``.

    ``group``: a process group whose processes each hold a shard of the scores (data parallelism); the sums
    and counts are then over all shards (``budget`` is the global one) and each process gets its rows' ``p``.
    """
    from lowbit.training.distributed import all_sum

    c = scores.detach().double()
    bad = float((c < 0).any() or not torch.isfinite(c).all())
    nnz, bad = all_sum([float((c > 0).sum()), bad], group).tolist()
    if bad:
        raise ValueError("leverage scores must be finite and >= 0")
    if nnz <= budget:
        return (c > 0).double()
    p = torch.zeros_like(c)
    capped = torch.zeros_like(c, dtype=torch.bool)
    for _ in range(_MAX_CLAMP_ROUNDS):
        free = ~capped
        n_capped, free_sum = all_sum([float(capped.sum()), float(c[free].sum())], group).tolist()
        room = budget - n_capped
        p[free] = c[free] * (room / free_sum)
        over = free & (p > 1.0)
        if not all_sum([float(over.sum())], group).item():
            break
        capped |= over
        p[capped] = 1.0
    else:  # pragma: no cover - each round caps at least one more row, so 2N rounds always suffice
        raise RuntimeError("leverage probability clamping did not converge")
    return p


def select_rows(
    scores: torch.Tensor,
    mode: str,
    generator: torch.Generator | None = None,
    *,
    group: Any = None,
    positions: torch.Tensor | None = None,
    total: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, weight)``: kept row indices (int64) and their float32 weights (1/p when sampling, else 1).

    A shard of the scores (data parallelism, "sample"): ``group`` reduces the normalisation, ``total`` is the
    global score count and ``positions`` (int64) each local score's global index; every process draws the
    ``total`` uniforms a single process draws and takes its rows' ones (same generator state everywhere).
    """
    if mode == "nonzero":
        idx = torch.nonzero(scores > 0).flatten()
        return idx, torch.ones(idx.numel(), dtype=torch.float32)
    if mode == "sample":
        n_all = scores.numel() if total is None else total
        p = leverage_probabilities(scores, n_all / 2, group)
        u = torch.rand(n_all, generator=generator, dtype=torch.float64)
        if positions is not None:
            u = u[positions]
        idx = torch.nonzero(u < p).flatten()
        return idx, (1.0 / p[idx]).float()
    if mode == "none":
        idx = torch.arange(scores.numel())
        return idx, torch.ones(idx.numel(), dtype=torch.float32)
    raise ValueError(f"mode must be 'nonzero', 'sample' or 'none', got {mode!r}")
