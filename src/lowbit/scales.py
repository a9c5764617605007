"""Scale rules: the step size per group for ``quantize()`` — absmax, percentile, MSE search, power of two, MX.

Every rule maps the grouped data ``x_g`` and the dims reduced within a group to a float32 step size with
1s on those dims. Shared rules (DESIGN.md "Decisions"): non-finite data raises ``ValueError`` naming the
count; a group whose clipping value is zero gets scale 1; a scale is never subnormal (clamped to the
smallest float32 normal) and never Inf.
"""

from __future__ import annotations

import math

import torch

from lowbit.formats import E8M0_MAX_EXP, FloatFormat, IntFormat, MXFormat
from lowbit.rounding import round_checked

SCALE_RULES = ("absmax", "percentile", "mse", "pow2")
# Clipping ratios tried by the "mse" rule: 1.00, 0.99, ..., 0.20 of the group's absmax (ties: largest ratio).
MSE_RATIOS = tuple(1 - i / 100 for i in range(81))
#: The smallest float32 normal (2^-126): no lowbit scale goes below it (the floor of symmetric_scale).
FLOAT32_MIN_NORMAL = torch.finfo(torch.float32).tiny
#: The largest finite float32: scales and dequantized values must stay below it.
FLOAT32_MAX = torch.finfo(torch.float32).max


def _amax(x_g: torch.Tensor, reduce_dims: tuple[int, ...], rule: object) -> torch.Tensor:
    """max |x| per group; NaN/Inf anywhere (they propagate into the max) raise ValueError with the counts."""
    mag = x_g.abs()
    amax = mag.amax(dim=reduce_dims, keepdim=True) if reduce_dims else mag
    if not bool(torch.isfinite(amax).all()):
        raise ValueError(
            f"x contains {int(torch.isnan(x_g).sum())} NaN and {int(torch.isinf(x_g).sum())} infinite "
            f"values, so scale rule {rule!r} cannot see its range; clamp or torch.nan_to_num the input "
            "first (or, for Inf only, pass an explicit scale: Inf then saturates)"
        )
    return amax


def symmetric_scale(
    absmax: torch.Tensor | float,
    qmax: float,
    *,
    floor: float | None = FLOAT32_MIN_NORMAL,
    zero_scale: float | None = 1.0,
    min_absmax: float | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor | float:
    """The symmetric (absmax) step size ``absmax / qmax`` per group: lowbit's one scale formula.

    The defaults are the documented policy (DESIGN.md "Decisions"): never below the smallest float32 normal,
    an all-zero group gets scale 1. Callers whose arithmetic differs name the difference (bit-identical
    results, not a silent change), applied in this order:

    * ``min_absmax``: ``absmax`` is first raised to at least this (integer conversion's activation ranges);
    * the division runs in ``absmax``'s dtype (pass ``absmax.double()`` for float64), then the quotient is
      cast to ``dtype`` (None: kept);
    * ``floor``: the scale is raised to at least this (None: no floor, a scale may be subnormal);
    * ``zero_scale``: the scale of a group whose ``absmax`` is 0 (None: the floor's value).

    NaN/Inf in ``absmax`` propagate: callers raise before (the non-finite policy). A Python float
    ``absmax`` gives a Python float.
    """
    if not isinstance(absmax, torch.Tensor):
        scale = (absmax if min_absmax is None else max(absmax, min_absmax)) / qmax
        scale = scale if floor is None else max(scale, floor)
        return zero_scale if zero_scale is not None and absmax == 0 else scale
    scale = (absmax if min_absmax is None else absmax.clamp_min(min_absmax)) / qmax
    scale = scale if dtype is None else scale.to(dtype)
    scale = scale if floor is None else scale.clamp(min=floor)
    if zero_scale is not None:
        scale = torch.where(absmax == 0, torch.full_like(scale, zero_scale), scale)
    return scale


def _finish_scale(clip: torch.Tensor, fmt: IntFormat | FloatFormat) -> torch.Tensor:
    """Clip value (per group) -> float32 step size; zero clip -> 1, never subnormal, Inf raises."""
    scale = symmetric_scale(clip.double(), fmt.max, dtype=torch.float32)
    if scale.numel() and not bool(torch.isfinite(scale).all()):
        raise ValueError(f"a scale overflows float32 (clip / {fmt.max}); rescale the input")
    return scale


def _percentile(x_g: torch.Tensor, reduce_dims: tuple[int, ...], p: float) -> torch.Tensor:
    """p-th percentile of |x| over the reduced dims (linear interpolation, as numpy's default)."""
    keep = [d for d in range(x_g.dim()) if d not in reduce_dims]
    mag = x_g.abs().permute(*keep, *reduce_dims)
    flat = mag.reshape(*mag.shape[: len(keep)], -1).double()
    srt = flat.sort(dim=-1).values
    pos = p / 100 * (srt.shape[-1] - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    value = srt[..., lo] + (srt[..., hi] - srt[..., lo]) * (pos - lo)
    shape = [1 if d in reduce_dims else x_g.shape[d] for d in range(x_g.dim())]
    return value.reshape(shape).to(x_g.dtype)


def _explicit_scale(scale: object, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(scale, bool) or not isinstance(scale, int | float | torch.Tensor):
        raise TypeError(
            f"scale must be a rule name {SCALE_RULES}, ('percentile', p), or a positive number/tensor; "
            f"got {scale!r}"
        )
    scale_t = torch.as_tensor(scale, dtype=torch.float32)
    if scale_t.numel() and not bool(((scale_t > 0) & torch.isfinite(scale_t)).all()):
        raise ValueError(
            "an explicit scale must be positive and finite everywhere; scale=1.0 means no scaling"
        )
    try:
        return scale_t.broadcast_to(shape).clone()
    except RuntimeError as err:
        raise ValueError(
            f"explicit scale of shape {tuple(scale_t.shape)} does not fit the granularity's scale shape "
            f"{shape}; pass one value per group (or a single number)"
        ) from err


def compute_scale(
    x_g: torch.Tensor, reduce_dims: tuple[int, ...], fmt: IntFormat | FloatFormat, rule: object
) -> torch.Tensor:
    """The float32 step size per group of ``x_g`` under ``rule`` (see :func:`quantize`)."""
    shape = tuple(1 if d in reduce_dims else n for d, n in enumerate(x_g.shape))
    if not (isinstance(rule, str) or (isinstance(rule, tuple) and rule and rule[0] == "percentile")):
        if x_g.numel() and bool(torch.isnan(x_g).any()):
            raise ValueError(
                f"x contains {int(torch.isnan(x_g).sum())} NaN values; replace them first (torch.nan_to_num)"
            )
        scale = _explicit_scale(rule, shape)
        if scale.numel() and float(scale.max()) * fmt.max > FLOAT32_MAX:
            raise ValueError(
                f"explicit scale {float(scale.max()):.3g} times {fmt.name}'s largest code {fmt.max:g} "
                f"overflows float32 (dequantized values: Inf); use at most {FLOAT32_MAX / fmt.max:.3g}"
            )
        return scale
    if isinstance(rule, str) and rule not in SCALE_RULES or rule == "percentile":
        raise ValueError(
            f"scale rule must be one of {SCALE_RULES} (percentile as ('percentile', p)), got {rule!r}"
        )
    if x_g.numel() == 0:
        return torch.ones(shape, dtype=torch.float32)
    amax = _amax(x_g, reduce_dims, rule)
    if isinstance(rule, tuple):
        if len(rule) != 2 or isinstance(rule[1], bool) or not isinstance(rule[1], int | float):
            raise ValueError(f"percentile scale is ('percentile', p) with 0 < p <= 100, got {rule!r}")
        p = float(rule[1])
        if not 0 < p <= 100:
            raise ValueError(f"percentile p must be in (0, 100], got {p}; e.g. ('percentile', 99.9)")
        clip = _percentile(x_g, reduce_dims, p)
        clip = torch.where(clip == 0, amax, clip)  # a group mostly of zeros keeps its non-zero values
        return _finish_scale(clip, fmt)
    if rule == "absmax":
        return _finish_scale(amax, fmt)
    if rule == "pow2":  # absmax step rounded up to a power of two: 2**ceil(log2(step))
        step = _finish_scale(amax, fmt)
        frac, exp = torch.frexp(step)  # step = frac * 2**exp, frac in [0.5, 1)
        return torch.ldexp(torch.ones_like(step), torch.where(frac == 0.5, exp - 1, exp))
    # "mse": try clipping at each ratio of absmax, keep the per-group ratio with the least squared error.
    best_scale = _finish_scale(amax, fmt)
    best_err = (_quant_dequant(x_g, best_scale, fmt) - x_g).double().pow(2).sum(dim=reduce_dims, keepdim=True)
    for ratio in MSE_RATIOS[1:]:
        cand = _finish_scale(amax * ratio, fmt)
        err = (_quant_dequant(x_g, cand, fmt) - x_g).double().pow(2).sum(dim=reduce_dims, keepdim=True)
        better = err < best_err
        best_scale = torch.where(better, cand, best_scale)
        best_err = torch.where(better, err, best_err)
    return best_scale


def mx_scale(x_g: torch.Tensor, reduce_dims: tuple[int, ...], fmt: MXFormat) -> torch.Tensor:
    """OCP MX shared scale per block: 2^(floor(log2(amax)) - element emax), E8M0 range; zero block -> 1."""
    shape = tuple(1 if d in reduce_dims else n for d, n in enumerate(x_g.shape))
    if x_g.numel() == 0:
        return torch.ones(shape, dtype=torch.float32)
    amax = _amax(x_g, reduce_dims, f"{fmt.name} shared scale")  # in x's dtype: float32 could round it up
    _, exp = torch.frexp(amax)  # floor(log2(amax)) = exp - 1 for amax > 0
    # E8M0 reaches 2**-127; lowbit stops at 2**-126 so that scales stay float32 normals (Decisions).
    shared = (exp - 1 - fmt.element_emax).clamp(-126, E8M0_MAX_EXP)
    scale = torch.ldexp(torch.ones(shared.shape, dtype=torch.float32), shared)  # powers of two: exact
    return torch.where(amax == 0, torch.ones_like(scale), scale)


def _quant_dequant(x_g: torch.Tensor, scale: torch.Tensor, fmt: IntFormat | FloatFormat) -> torch.Tensor:
    """Round-to-nearest fake quantization (used by the MSE scale search)."""
    return round_checked(x_g / scale, fmt, "nearest", None) * scale
