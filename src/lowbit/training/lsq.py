"""LSQ (learned step size) per-tensor INT4 quantizer: initialisation, codes, and the step-size gradient.

``x̂ = s · clamp(round(x / s), -8, 7)`` (the released code's full INT4 range). Straight-through estimator with
the clip mask: ``∂x̂/∂x = 1`` inside the range, 0 outside; ``∂x̂/∂s = round(v) − v`` inside and the clamp bound
(−8 or 7) outside, ``v = x/s``; the step gradient is scaled by ``1/√(numel · 7)`` (Esser et al.).

Two step initialisations: the paper's ``2·mean|x|/√7`` (``lsq_init``) and the per-tensor step minimising the
quantization MSE ``Σ(x̂ − x)²`` (``lsq_init_mse``); ``init_step`` picks one by name (``LSQ_INITS``).
"""

from __future__ import annotations

import math

import torch

from lowbit.formats import INT4_RANGE

# LSQ's codes are INT4_RANGE, the full INT4 range [-8, 7]. LSQ_QPOS stays a name: not a range but the
# paper's positive level count Q_P (7) in the init and gradient-scale formulas.
LSQ_QPOS = INT4_RANGE.hi


def lsq_init(x: torch.Tensor) -> torch.Tensor:
    """The paper's step-size initialisation ``2·mean|x| / √7`` (float32 scalar; 1 for an all-zero tensor).

    The mean is summed in float64 and rounded once to float32, so it does not depend on the summation order:
    N data-parallel processes summing their shards get the same step (``lowbit.training.distributed``).
    """
    v = x.detach()
    total = float(v.abs().sum(dtype=torch.float64))
    mean = torch.tensor(total / v.numel() if v.numel() else math.nan, dtype=torch.float32)
    s = 2.0 * mean / math.sqrt(LSQ_QPOS)
    return torch.where(s > 0, s, torch.ones_like(s))


#: Step initialisations a recipe can name (``Recipe.lsq_init``).
LSQ_INITS = ("paper", "mse")
#: The MSE search: a geometric grid of this many steps from ``s_full · 2^-MSE_GRID_OCTAVES`` to ``s_full``
#: (the smallest step that clips nothing), a finer grid of ``MSE_FINE_POINTS`` between the best step's two
#: neighbours, then at most ``MSE_REFINE_ITERS`` alternating refinements.
MSE_GRID_POINTS = 128
MSE_FINE_POINTS = 64
MSE_GRID_OCTAVES = 10
MSE_REFINE_ITERS = 30


def quant_sse(x: torch.Tensor, step: float, out: torch.Tensor | None = None) -> float:
    """``Σ(s·clamp(round(x/s), −8, 7) − x)²`` summed in float64 (the error the MSE init minimises).

    ``out``: an optional float32 buffer of ``x``'s shape (saves an allocation per call in the search).
    """
    q = torch.div(x, step, out=out).round_().clamp_(*INT4_RANGE).mul_(step).sub_(x)
    return float(torch.linalg.vector_norm(q, dtype=torch.float64)) ** 2


def lsq_init_mse(x: torch.Tensor) -> torch.Tensor:
    """The per-tensor step minimising the INT4 quantization MSE of ``x`` (float32 scalar; 1 for all zeros).

    Deterministic: the best of a geometric grid below the no-clipping step and the paper's init, refined on a
    finer grid around it, then by alternating refinement (codes for the step, then the least-squares step
    ``Σxq/Σq²`` for the codes), which never increases the error; the result's MSE is never above the paper
    init's. Why: the paper's ``2·mean|x|/√7`` is 1.1-1.8x the MSE-best step on MiniLM's tensors
    (results/train/README.md).
    Non-finite inputs fall back to :func:`lsq_init`.
    """
    v = x.detach().float().reshape(-1)
    hi, lo = (float(v.max()), float(v.min())) if v.numel() else (0.0, 0.0)
    if not (math.isfinite(hi) and math.isfinite(lo)):
        return lsq_init(x)
    s_full = max(hi / INT4_RANGE.hi, -lo / -INT4_RANGE.lo)
    if s_full <= 0:  # all zeros (or empty): any step is exact; 1 like the paper init
        return torch.tensor(1.0)
    ratio = 2.0 ** (-MSE_GRID_OCTAVES / (MSE_GRID_POINTS - 1))
    candidates = [s_full * ratio**k for k in range(MSE_GRID_POINTS)] + [float(lsq_init(v))]
    buf = torch.empty_like(v)
    best_s, best_e = s_full, math.inf
    for fine in (False, True):
        if fine:  # a finer grid over the neighbourhood of the coarse grid's best step
            n = MSE_FINE_POINTS
            candidates = [best_s * ratio ** (2 * k / (n - 1) - 1) for k in range(n)]
        for s in candidates:
            s = float(torch.tensor(s, dtype=torch.float32))  # the step is stored as float32
            e = quant_sse(v, s, buf)
            if e < best_e:
                best_s, best_e = s, e
    s = best_s
    for _ in range(MSE_REFINE_ITERS):
        q = torch.round(v / s).clamp_(*INT4_RANGE).double()
        qq = float(torch.dot(q, q))
        if qq == 0:
            break
        s_new = float(torch.tensor(float(torch.dot(q, v.double())) / qq, dtype=torch.float32))
        if not s_new > 0 or s_new == s:
            break
        e = quant_sse(v, s_new, buf)
        if e >= best_e:
            break
        best_s, best_e, s = s_new, e, s_new
    return torch.tensor(best_s, dtype=torch.float32)


def init_step(x: torch.Tensor, method: str | None) -> torch.Tensor:
    """The initial LSQ step of ``x`` by ``method`` (one of ``LSQ_INITS``; None, a recipe that leaves the
    choice to the training task, means the paper's outside a task)."""
    if method is None or method == "paper":
        return lsq_init(x)
    if method == "mse":
        return lsq_init_mse(x)
    raise ValueError(f"unknown LSQ step initialisation {method!r}; choose one of {LSQ_INITS}")


def lsq_grad_scale(numel: int) -> float:
    """The step-size gradient scale ``1 / √(numel · 7)``; 0 for an empty tensor (its gradient sum is 0)."""
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    return 1.0 / math.sqrt(numel * LSQ_QPOS) if numel else 0.0


def lsq_quantize(x: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 codes (int8 in [-8, 7]) of ``x`` with step ``step`` and ``dq_ds = ∂x̂/∂s`` (float32, x's shape).

    ``dq_ds`` also encodes the clip mask: ``|dq_ds| <= 0.5`` exactly where ``x`` is inside the range.
    """
    v = x.detach().float() / step.detach().float()
    r = torch.round(v)
    codes = r.clamp(*INT4_RANGE)
    dq_ds = torch.where(r == codes, r - v, codes)
    return codes.to(torch.int8), dq_ds


def clip_mask(dq_ds: torch.Tensor) -> torch.Tensor:
    """The STE pass mask (True inside the quantizer range) recovered from ``dq_ds``."""
    return dq_ds.abs() <= 0.5


def lsq_step_grad(grad_q: torch.Tensor, dq_ds: torch.Tensor) -> torch.Tensor:
    """∂L/∂s from ∂L/∂x̂ (``grad_q``) and ``dq_ds``, with the LSQ gradient scale (float32 scalar)."""
    return (grad_q.float() * dq_ds).sum() * lsq_grad_scale(dq_ds.numel())
