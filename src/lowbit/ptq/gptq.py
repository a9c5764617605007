"""Error-compensating weight rounding (GPTQ, Frantar et al. 2022) onto any lowbit grid, e.g. FP8 E4M3.

Plain PTQ rounds every weight to its nearest grid value independently. GPTQ rounds the columns of W (N, K)
one at a time, left to right, and spreads each column's rounding error over the columns not yet rounded so
that the layer output on the calibration inputs, ``X Ŵᵀ``, stays close to ``X Wᵀ``: it minimises
``||X (W - Ŵ)ᵀ||²`` greedily using the inverse of the input Gram matrix ``H = XᵀX`` (dampened by 1 % of its
mean diagonal). Scales are fixed beforehand (absmax, per tensor or per output channel), so the result is
stored exactly like nearest rounding: the same codes dtype, the same scales, the same bytes.

This file implements the algorithm from the paper's description (lazy block updates of 128 columns, upper
Cholesky factor of H⁻¹); it is used by :func:`lowbit.ptq.quantize` when ``PTQConfig(weight_rounding="gptq")``.
"""

from __future__ import annotations

import torch

from lowbit.formats import FloatFormat, IntFormat
from lowbit.rounding import round_checked

BLOCK = 128
DAMP = 0.01


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """``XᵀX`` (float64) of the rows of ``x`` (..., K): what :func:`gptq_round` needs, summed over batches."""
    x2 = x.detach().reshape(-1, x.shape[-1]).double()
    return x2.t() @ x2


def damped(gram: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """``gram`` (float64) with unseen inputs' diagonal set to 1 and ``damp`` × its mean diagonal added: the
    regularised H that :func:`gptq_round` factorises (and :func:`asymmetric_target` solves with)."""
    h = gram.detach().double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0  # no error feedback through unseen inputs
    h += damp * float(torch.diagonal(h).mean()) * torch.eye(h.shape[0], dtype=torch.float64)
    return h


def asymmetric_target(
    w: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, damp: float = DAMP
) -> torch.Tensor:
    """The weight ``W*`` (N, K) whose output on the quantized model's inputs ``X̂`` best matches the FP32
    layer's output on the FP32 model's inputs ``X``: ``W* = argmin ||X Wᵀ − X̂ W*ᵀ||² = W Cᵀ H⁻¹`` with
    ``H = X̂ᵀX̂`` (``gram``, damped as in GPTQ) and ``C = X̂ᵀX`` (``cross``, K×K).

    For every V, ``||X Wᵀ − X̂ Vᵀ||² = ||X̂ (W* − V)ᵀ||² + const``, so GPTQ rounding of ``W*`` under ``H`` is
    GPTQ on the asymmetric objective (upstream error absorbed where the inputs allow it). The damping
    regularises the *correction*: ``W*ᵀ = Wᵀ + H⁻¹ X̂ᵀ(X − X̂) Wᵀ`` with H damped, so weakly excited input
    directions keep W (damping ``W*`` itself would shrink W toward 0 there).
    """
    k = w.shape[1]
    if gram.shape != (k, k) or cross.shape != (k, k):
        raise ValueError(
            f"need gram and cross of shape ({k}, {k}) for w {tuple(w.shape)}, "
            f"got {tuple(gram.shape)} and {tuple(cross.shape)}"
        )
    w64 = w.detach().double()
    rhs = (cross.double() - gram.double()) @ w64.t()  # X̂ᵀ (X − X̂) Wᵀ (K, N)
    delta = torch.cholesky_solve(rhs, torch.linalg.cholesky(damped(gram, damp)))
    return (w64 + delta.t()).float()


def gptq_round(
    w_units: torch.Tensor,
    gram: torch.Tensor,
    fmt: IntFormat | FloatFormat,
    damp: float = DAMP,
    act_order: bool = False,
) -> torch.Tensor:
    """Round ``w_units`` (N, K; the weight divided by its scales, i.e. in grid units) onto ``fmt``'s grid
    with GPTQ error feedback under the input Gram matrix ``gram`` (K, K). Returns on-grid values (float32,
    saturated at the format's range) — what nearest rounding would return, with different choices.

    Input channels never seen (zero diagonal) are rounded plainly. ``damp``: fraction of the mean diagonal
    added to H (numerical safety; the paper's default 0.01). ``act_order``: round the columns in order of
    decreasing ``H[i, i]`` (the inputs with the most energy first, GPTQ's "act-order" heuristic) instead of
    left to right; the result is returned in the original column order.
    """
    if w_units.dim() != 2 or gram.shape != (w_units.shape[1], w_units.shape[1]):
        raise ValueError(f"need w (N, K) and gram (K, K), got {tuple(w_units.shape)} and {tuple(gram.shape)}")
    if act_order:
        perm = torch.argsort(torch.diagonal(gram).double(), descending=True, stable=True)
        q_perm = gptq_round(w_units[:, perm], gram[perm][:, perm], fmt, damp)
        return q_perm[:, torch.argsort(perm)]
    w = w_units.detach().float().clone()
    k = w.shape[1]
    h = damped(gram, damp)
    chol = torch.linalg.cholesky(h)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True).float()  # U with H⁻¹ = UᵀU
    q = torch.empty_like(w)
    for i1 in range(0, k, BLOCK):
        i2 = min(i1 + BLOCK, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.empty_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = w1[:, j]
            qc = round_checked(col, fmt, "nearest", None)
            q[:, i1 + j] = qc
            e = (col - qc) / h1[j, j]
            w1[:, j + 1 :] -= e.unsqueeze(1) * h1[j, j + 1 :].unsqueeze(0)
            err1[:, j] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q
