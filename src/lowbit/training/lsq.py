"""LSQ (learned step size) per-tensor INT4 quantizer: initialisation, codes, and the step-size gradient.

``x̂ = s · clamp(round(x / s), -8, 7)`` (the released code's full INT4 range). Straight-through estimator with
the clip mask: ``∂x̂/∂x = 1`` inside the range, 0 outside; ``∂x̂/∂s = round(v) − v`` inside and the clamp bound
(−8 or 7) outside, ``v = x/s``; the step gradient is scaled by ``1/√(numel · 7)`` (Esser et al.).
"""

from __future__ import annotations

import math

import torch

QMIN, QMAX = -8, 7
LSQ_QPOS = 7  # the positive level count in the init and gradient-scale formulas


def lsq_init(x: torch.Tensor) -> torch.Tensor:
    """The paper's step-size initialisation ``2·mean|x| / √7`` (float32 scalar; 1 for an all-zero tensor)."""
    s = 2.0 * x.detach().abs().mean().float() / math.sqrt(LSQ_QPOS)
    return torch.where(s > 0, s, torch.ones_like(s))


def lsq_grad_scale(numel: int) -> float:
    """The step-size gradient scale ``1 / √(numel · 7)``."""
    return 1.0 / math.sqrt(numel * LSQ_QPOS)


def lsq_quantize(x: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 codes (int8 in [-8, 7]) of ``x`` with step ``step`` and ``dq_ds = ∂x̂/∂s`` (float32, x's shape).

    ``dq_ds`` also encodes the clip mask: ``|dq_ds| <= 0.5`` exactly where ``x`` is inside the range.
    """
    v = x.detach().float() / step.detach().float()
    r = torch.round(v)
    codes = r.clamp(QMIN, QMAX)
    dq_ds = torch.where(r == codes, r - v, codes)
    return codes.to(torch.int8), dq_ds


def clip_mask(dq_ds: torch.Tensor) -> torch.Tensor:
    """The STE pass mask (True inside the quantizer range) recovered from ``dq_ds``."""
    return dq_ds.abs() <= 0.5


def lsq_step_grad(grad_q: torch.Tensor, dq_ds: torch.Tensor) -> torch.Tensor:
    """∂L/∂s from ∂L/∂x̂ (``grad_q``) and ``dq_ds``, with the LSQ gradient scale (float32 scalar)."""
    return (grad_q.float() * dq_ds).sum() * lsq_grad_scale(dq_ds.numel())
