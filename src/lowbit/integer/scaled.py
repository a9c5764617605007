"""Scaled-integer tensors and Scale Propagation: integer values, a compile-time scale, their operations.

A :class:`ScaledInt` is ``real ≈ values * scale`` with ``values`` an integer tensor (int8 between operations,
int32 for accumulations) and ``scale`` a float64 Python constant (per tensor) or a float64 vector along the
last dimension (per channel). Scales never enter the arithmetic on values: every operation computes its
result values with integer arithmetic only and *propagates* the scale symbolically (docs/SPEC.md §2):

* matmul / linear: INT32 accumulation on :mod:`lowbit.ops`, scale ``s1 · s2``;
* element-wise product: values multiply, scale ``s1 · s2``;
* addition: both operands are re-scaled to a common scale by dyadic multipliers, then added;
* reshape / transpose / concat / split: applied to values, scales follow (or must agree);
* :func:`requantize`: INT32 → INT8 by a fixed-point multiplier ``m · 2^-k`` (:class:`Dyadic`).

The float arithmetic that *chooses* multipliers (``Dyadic.from_ratio``) happens at conversion time, when
scales are constants; at run time only integers flow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.formats import INT8_SYMMETRIC
from lowbit.ops import int_matmul

#: Multipliers are normalised into [2^(MULT_BITS-1), 2^MULT_BITS) so products with int32 fit in int64.
MULT_BITS = 24
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass(frozen=True)
class Dyadic:
    """A fixed-point multiplier ``mult · 2^-shift`` (integers, scalar or per channel) for a real ratio.

    ``apply(x)`` computes ``round_half_up(x · mult / 2^shift)`` exactly in int64 — integer-only.
    """

    mult: torch.Tensor  # int64, () or (N,)
    shift: torch.Tensor  # int64, () or (N,)

    @classmethod
    def from_ratio(cls, ratio: float | torch.Tensor) -> Dyadic:
        """The nearest dyadic with a MULT_BITS-bit multiplier: |mult·2^-shift − r| ≤ 2^-(shift+1)."""
        r = torch.as_tensor(ratio, dtype=torch.float64)
        if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
            n_nan, n_inf = int(torch.isnan(r).sum()), int(torch.isinf(r).sum())
            n_neg = int((r < 0).sum())
            raise ValueError(
                f"a dyadic ratio must be finite and >= 0; {n_nan} NaN, {n_inf} infinite and {n_neg} negative "
                f"of {r.numel()} ratios (a scale of the model or its calibration is not finite)"
            )
        safe = torch.where(r > 0, r, torch.ones_like(r))
        exp = torch.floor(torch.log2(safe)).to(torch.int64)  # r in [2^e, 2^(e+1))
        shift = (MULT_BITS - 1) - exp
        mult = torch.round(torch.ldexp(safe, shift)).to(torch.int64)
        # rounding may reach 2^MULT_BITS: halve exactly (mult is even then)
        over = mult >= 2**MULT_BITS
        mult = torch.where(over, mult // 2, mult)
        shift = torch.where(over, shift - 1, shift)
        mult = torch.where(r > 0, mult, torch.zeros_like(mult))
        shift = torch.where(r > 0, shift, torch.zeros_like(shift))
        if bool((shift < 0).any()) or bool((shift > 62).any()):
            bad = r[(shift < 0) | (shift > 62)]
            raise ValueError(
                f"{bad.numel()} of {r.numel()} ratios are outside the dyadic range 2^-39 .. 2^23 (from "
                f"{float(bad.min()):.3g} to {float(bad.max()):.3g}): a scale ratio too large or too small"
            )
        return cls(mult, shift)

    def value(self) -> torch.Tensor:
        """The represented real number(s) as float64 (for tests and reports, never at run time)."""
        return torch.ldexp(self.mult.to(torch.float64), -self.shift)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``floor((x · mult + 2^(shift−1)) / 2^shift)`` in int64 (per-channel along the last dim)."""
        if x.dtype not in INTEGER_DTYPES:
            raise TypeError(f"Dyadic.apply takes an integer tensor, got {x.dtype}")
        prod = x.to(torch.int64) * self.mult
        half = torch.where(self.shift > 0, torch.ones_like(self.shift) << (self.shift - 1).clamp_min(0), 0)
        return (prod + half) >> self.shift


def saturate(x: torch.Tensor, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """Clamp an integer tensor to a symmetric ``dtype`` range (int8: [-127, 127]) and cast."""
    if dtype == torch.int8:
        return x.clamp(*INT8_SYMMETRIC).to(torch.int8)
    if dtype == torch.int32:
        return x.clamp(INT32_MIN, INT32_MAX).to(torch.int32)
    raise ValueError(f"saturate supports int8 and int32, got {dtype}")


@dataclass(frozen=True)
class ScaledInt:
    """``real ≈ values · scale``: integer ``values`` and a scale (float or float64 vector on the last dim)."""

    values: torch.Tensor
    scale: float | torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.values, torch.Tensor):
            raise TypeError(f"ScaledInt values must be an integer tensor, got {type(self.values).__name__}")
        if self.values.dtype not in INTEGER_DTYPES:
            raise TypeError(f"ScaledInt values must be an integer tensor, got {self.values.dtype}")
        if isinstance(self.scale, torch.Tensor):
            if self.values.dim() == 0:
                raise ValueError("a per-channel scale needs values with a channel (last) dimension, got 0-d")
            if self.scale.dim() != 1 or self.scale.numel() != self.values.shape[-1]:
                raise ValueError(
                    f"a per-channel scale must be 1-D of length {self.values.shape[-1]}, "
                    f"got shape {tuple(self.scale.shape)}"
                )
        elif not (isinstance(self.scale, float) and self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale must be a positive finite float, got {self.scale!r}")

    @classmethod
    def quantize(cls, x: torch.Tensor, scale: float, dtype: torch.dtype = torch.int8) -> ScaledInt:
        """The input quantization (float → integer; the graph's entry point, not part of it)."""
        return cls(saturate(torch.round(x.to(torch.float64) / scale).to(torch.int64), dtype), scale)

    def dequantize(self) -> torch.Tensor:
        """The output dequantization (integer → float32; the graph's exit point)."""
        scale = self.scale if isinstance(self.scale, float) else self.scale.to(torch.float64)
        return (self.values.to(torch.float64) * scale).to(torch.float32)

    # ---------------------------------------------------------------- shape ops: values and scales alike

    def _check_last_dim_kept(self, new_last: int) -> None:
        if isinstance(self.scale, torch.Tensor) and new_last != self.values.shape[-1]:
            raise ValueError("a per-channel ScaledInt can only be reshaped keeping its last dimension")

    def reshape(self, *shape: int) -> ScaledInt:
        """Reshape the values; a per-channel scale requires the last dimension to stay."""
        values = self.values.reshape(*shape)
        self._check_last_dim_kept(values.shape[-1])
        return ScaledInt(values, self.scale)

    def transpose(self, d0: int, d1: int) -> ScaledInt:
        """Swap two dimensions; a per-channel scale requires the last dimension not to move."""
        last = self.values.dim() - 1
        if not (-last - 1 <= d0 <= last and -last - 1 <= d1 <= last) or last < 0:
            raise ValueError(f"transpose dims ({d0}, {d1}) out of range for shape {tuple(self.values.shape)}")
        if isinstance(self.scale, torch.Tensor) and last in (d0 % (last + 1), d1 % (last + 1)):
            raise ValueError("cannot move the channel dimension of a per-channel ScaledInt")
        return ScaledInt(self.values.transpose(d0, d1), self.scale)

    def split(self, size: int, dim: int = -1) -> list[ScaledInt]:
        """Split the values; a per-channel scale is split along with the last dimension."""
        if self.values.dim() == 0 or not -self.values.dim() <= dim < self.values.dim():
            raise ValueError(f"cannot split values of shape {tuple(self.values.shape)} along dim {dim}")
        parts = self.values.split(size, dim)
        if isinstance(self.scale, torch.Tensor) and dim % self.values.dim() == self.values.dim() - 1:
            return [ScaledInt(p, s) for p, s in zip(parts, self.scale.split(size), strict=True)]
        return [ScaledInt(p, self.scale) for p in parts]


def concat(parts: list[ScaledInt], dim: int = -1) -> ScaledInt:
    """Concatenate; per-tensor scales must be equal (else requantize first), per-channel ones concatenate."""
    if not parts:
        raise ValueError("concat needs at least one ScaledInt")
    try:
        values = torch.cat([p.values for p in parts], dim)
    except (RuntimeError, IndexError) as err:
        shapes = [tuple(p.values.shape) for p in parts]
        raise ValueError(f"cannot concatenate ScaledInts of shapes {shapes} along dim {dim}: {err}") from None
    if all(isinstance(p.scale, float) for p in parts):
        scales = {p.scale for p in parts}
        if len(scales) != 1:
            raise ValueError(f"concat of per-tensor ScaledInts needs one common scale, got {sorted(scales)}")
        return ScaledInt(values, parts[0].scale)
    if dim % values.dim() != values.dim() - 1:
        raise ValueError("per-channel ScaledInts concatenate only along the channel dimension")
    return ScaledInt(
        values,
        torch.cat(
            [
                torch.as_tensor(p.scale, dtype=torch.float64).reshape(-1).expand(p.values.shape[-1])
                for p in parts
            ]
        ),
    )


def _scale_product(s1: float | torch.Tensor, s2: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(s1, float) and isinstance(s2, float):
        return s1 * s2
    return torch.as_tensor(s1, dtype=torch.float64) * torch.as_tensor(s2, dtype=torch.float64)


def matmul(a: ScaledInt, b: ScaledInt, *, layout: str = "nt") -> ScaledInt:
    """INT32 ``a @ bᵀ`` ("nt") or ``a @ b`` ("nn") of int8 2-D operands; scale ``s_a · s_b``.

    ``a`` must have a per-tensor scale (its rows are summed over); ``b`` may be per output channel
    (its rows for "nt").
    """
    if a.values.dtype != torch.int8 or b.values.dtype != torch.int8:
        raise TypeError(f"matmul takes int8 operands, got {a.values.dtype} and {b.values.dtype}")
    if not isinstance(a.scale, float):
        raise ValueError("the left matmul operand needs a per-tensor scale")
    acc = int_matmul(a.values, b.values, bits=8, layout=layout)
    return ScaledInt(acc, _scale_product(a.scale, b.scale))


def _check_broadcast(a: ScaledInt, b: ScaledInt, op: str) -> None:
    try:
        torch.broadcast_shapes(a.values.shape, b.values.shape)
    except RuntimeError:
        raise ValueError(
            f"{op} needs operands of broadcastable shapes, got {tuple(a.values.shape)} and "
            f"{tuple(b.values.shape)}"
        ) from None


def mul(a: ScaledInt, b: ScaledInt) -> ScaledInt:
    """Element-wise product: int32 values ``a·b`` (int8 × int8 cannot overflow), scale ``s_a · s_b``."""
    _check_broadcast(a, b, "mul")
    return ScaledInt(a.values.to(torch.int32) * b.values.to(torch.int32), _scale_product(a.scale, b.scale))


def rescale(x: ScaledInt, new_scale: float, dtype: torch.dtype = torch.int32) -> ScaledInt:
    """Re-express ``x`` at ``new_scale`` by the dyadic multiplier ``s_x / new_scale`` (saturating)."""
    ratio = torch.as_tensor(x.scale, dtype=torch.float64) / new_scale
    return ScaledInt(saturate(Dyadic.from_ratio(ratio).apply(x.values), dtype), new_scale)


def add(a: ScaledInt, b: ScaledInt, out_scale: float | None = None) -> ScaledInt:
    """Scale-matched addition into int32: both operands rescaled to ``out_scale`` (default: the finer)."""
    _check_broadcast(a, b, "add")
    if out_scale is None:  # the finest scale of either operand (1.0 when both have no channels)
        scales = torch.cat([torch.as_tensor(s, dtype=torch.float64).reshape(-1) for s in (a.scale, b.scale)])
        out_scale = float(scales.min()) if scales.numel() else 1.0
    av = a.values if isinstance(a.scale, float) and a.scale == out_scale else rescale(a, out_scale).values
    bv = b.values if isinstance(b.scale, float) and b.scale == out_scale else rescale(b, out_scale).values
    return ScaledInt(saturate(av.to(torch.int64) + bv.to(torch.int64), torch.int32), out_scale)


def requantize(x: ScaledInt, out_scale: float) -> ScaledInt:
    """INT32 → INT8 at ``out_scale`` by a fixed-point multiplier and shift (integer-only, saturating)."""
    return rescale(x, out_scale, torch.int8)
