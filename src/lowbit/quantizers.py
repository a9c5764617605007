"""Quantizers: ``quantize()`` -> :class:`QTensor`, the one symmetric quantizer, scale rules, INT4 packing.

Convention everywhere in lowbit: **x ≈ codes × scale**, ``scale`` being the step size (a float32 tensor that
broadcasts against the codes once they are viewed in groups, see :meth:`Granularity.group_view`).

Documented rules (DESIGN.md "Decisions"):

* NaN input raises ``ValueError``; ±Inf raises when a scale rule must look at it, and saturates when the
  scale is given explicitly.
* An all-zero tensor/row/group gets scale 1 (codes all zero); a scale is never zero, subnormal or Inf.
  Empty tensors give empty codes with scale 1.
* Saturation: values beyond the format's finite range clamp to ±max (ints to [qmin, qmax]) before rounding;
  nothing ever becomes Inf/NaN or wraps. Unsigned formats are for non-negative data: negatives clamp to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.formats import CodeRange, FloatFormat, Format, IntFormat, MXFormat, get_format
from lowbit.granularity import DEFAULT_BLOCK, GRANULARITY_KINDS, Granularity  # noqa: F401 (re-exported)
from lowbit.rounding import ROUNDINGS, check_float, check_rounding, round_checked, round_to_format
from lowbit.scales import (
    FLOAT32_MAX,
    FLOAT32_MIN_NORMAL,
    MSE_RATIOS,
    SCALE_RULES,
    compute_scale,
    mx_scale,
    symmetric_scale,
)

__all__ = [
    "GRANULARITY_KINDS",
    "MSE_RATIOS",
    "ROUNDINGS",
    "SCALE_RULES",
    "Granularity",
    "QTensor",
    "absmax",
    "pack_int4",
    "quantize",
    "quantize_symmetric",
    "round_to_format",
    "symmetric_codes",
    "symmetric_scale",
    "unpack_int4",
]


@dataclass(frozen=True, eq=False)  # tensors have no single truth value: compare fields explicitly
class QTensor:
    """A quantized tensor: ``codes`` (original shape), ``scale`` (grouped shape), ``fmt``, ``granularity``.

    ``codes`` dtypes: int8 for signed ints, uint8 for unsigned, ``torch.float8_e4m3fn``/``float8_e5m2`` for
    FP8 (also as MX elements), float32 on-grid values for other minifloats.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    fmt: Format
    granularity: Granularity

    def __post_init__(self) -> None:
        if not isinstance(self.codes, torch.Tensor) or not isinstance(self.scale, torch.Tensor):
            raise TypeError("codes and scale must be torch tensors")
        if self.scale.dtype != torch.float32:
            raise TypeError(f"scale must be float32, got {self.scale.dtype}; pass scale.float()")
        if not isinstance(self.fmt, IntFormat | FloatFormat | MXFormat):
            raise TypeError(f"fmt must be a lowbit format, got {type(self.fmt).__name__}; see lowbit.formats")
        if not isinstance(self.granularity, Granularity):
            raise TypeError(
                f"granularity must be a Granularity, got {self.granularity!r}; use Granularity.parse"
            )
        grouped, _ = self.granularity.group_view(self.codes.shape)
        try:
            torch.broadcast_shapes(grouped, self.scale.shape)
        except RuntimeError as err:
            raise ValueError(
                f"scale of shape {tuple(self.scale.shape)} does not broadcast against the codes grouped as "
                f"{grouped} for granularity {self.granularity}"
            ) from err

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """codes × scale in ``dtype`` (the scale broadcast over each group)."""
        grouped, _ = self.granularity.group_view(self.codes.shape)
        values = self.codes.to(dtype).reshape(grouped) * self.scale.to(dtype)
        return values.reshape(self.codes.shape)


def _codes_dtype(fmt: Format) -> torch.dtype:
    elem = fmt.element if isinstance(fmt, MXFormat) else fmt
    if isinstance(elem, IntFormat):
        return torch.int8 if elem.signed else torch.uint8
    return elem.torch_dtype or torch.float32




def _check_float32_range(x: torch.Tensor) -> None:
    """Scales and dequantized values are float32: a finite float64 value beyond its range is an error (it
    would give an Inf scale or dequantize to Inf), for MX formats too (no silent clamp of the E8M0 scale)."""
    if x.dtype == torch.float64 and x.numel():
        big = torch.isfinite(x) & (x.abs() > FLOAT32_MAX)
        if bool(big.any()):
            peak = float(x.abs()[big].max())
            raise ValueError(
                f"x holds {int(big.sum())} finite values beyond the float32 range (max |x| = {peak:.3g} > "
                f"{FLOAT32_MAX:.3g}); lowbit's scales and dequantized values are float32: rescale the input"
            )


def quantize(
    x: torch.Tensor,
    fmt: Format | str,
    granularity: object = None,
    scale: object = "absmax",
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> QTensor:
    """Quantize ``x`` to ``fmt``: pick a scale per group, round ``x / scale`` to the format, saturating.

    granularity: ``"tensor"`` (default; ``"block"`` for MX formats), ``"row"``, ``"column"``, ``"block"``,
    ``("group", G)`` or ``("group", G, dim)``.
    scale: ``"absmax"``, ``("percentile", p)``, ``"mse"``, ``"pow2"`` or an explicit positive number/tensor
    (``scale=1.0`` means no scaling). MX formats always use the OCP shared power-of-two scale.
    rounding: ``"nearest"`` (ties-to-even), ``"nearest-away"`` or ``"stochastic"`` (draws from ``generator``).

    ``ValueError`` for NaN (and, without an explicit scale, Inf) input, finite float64 values beyond the
    float32 range, a meta tensor, or an explicit scale so large that ``scale · fmt.max`` overflows float32.
    MX formats: see :class:`~lowbit.formats.MXFormat` for the shared scale's range (2^-126 … 2^127).
    """
    x = check_float("x", x)
    fmt = get_format(fmt)
    check_rounding(rounding, generator)
    if x.is_meta:
        raise ValueError(
            "x is on the meta device (shapes only, no values), so it has no scale to compute; quantize a "
            "materialized tensor (e.g. after model.to_empty(device='cpu') and loading the weights)"
        )
    _check_float32_range(x)
    if granularity is None:
        granularity = "block" if isinstance(fmt, MXFormat) else "tensor"
    gran = Granularity.parse(granularity, fmt)
    if isinstance(fmt, MXFormat) and gran != Granularity("block", fmt.block):
        raise ValueError(
            f"{fmt.name} shares one scale per block of {fmt.block} along the last dim; "
            f"use granularity='block' (got {granularity!r})"
        )
    grouped, reduce_dims = gran.group_view(x.shape)
    x_g = x.detach()  # quantization is not differentiable: codes and scales carry no gradient
    x_g = x_g.float() if x.dtype in (torch.float16, torch.bfloat16) else x_g
    x_g = x_g.reshape(grouped)
    if isinstance(fmt, MXFormat):
        if scale != "absmax":
            raise ValueError(f"{fmt.name} uses the OCP shared power-of-two scale; leave scale='absmax'")
        scale_t = mx_scale(x_g, reduce_dims, fmt)
    else:
        scale_t = compute_scale(x_g, reduce_dims, fmt, scale)
    if gran.kind == "tensor":
        scale_t = scale_t.reshape(())
    elem = fmt.element if isinstance(fmt, MXFormat) else fmt
    codes = round_checked(x_g / scale_t, elem, rounding, generator)
    codes = codes.reshape(x.shape).to(_codes_dtype(fmt))
    return QTensor(codes, scale_t, fmt, gran)


def absmax(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """``max |x|`` over ``dim`` (every element when None), in ``x``'s dtype; 0 where the reduction is empty.
    NaN/Inf propagate into the result (the one place a symmetric quantizer looks for them)."""
    if dim is None:
        return x.abs().max() if x.numel() else torch.zeros((), dtype=x.dtype)
    if x.shape[dim] == 0:
        shape = list(x.shape)
        shape[dim] = 1
        zeros = torch.zeros(shape, dtype=x.dtype)
        return zeros if keepdim else zeros.squeeze(dim)
    return x.abs().amax(dim=dim, keepdim=keepdim)


def symmetric_codes(x: torch.Tensor, scale: torch.Tensor | float, code_range: CodeRange) -> torch.Tensor:
    """int8 ``clamp(round_half_even(x / scale), lo, hi)``, in ``x``'s dtype: every absmax and static-scale
    integer quantizer's rounding (``x / scale``, a true division; then the saturation to ``code_range``)."""
    return torch.round(x / scale).clamp_(code_range.lo, code_range.hi).to(torch.int8)


def quantize_symmetric(
    x: torch.Tensor,
    qmax: int,
    dim: int | None = None,
    *,
    floor: float | None = FLOAT32_MIN_NORMAL,
    zero_scale: float | None = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization: int8 codes in ``[-qmax, qmax]`` and the scale, ``x ≈ codes · scale``.

    One scale per index of the dims other than ``dim`` (``dim=None``: one for the tensor), shaped as the
    absmax with ``dim`` removed; computed by :func:`symmetric_scale` in ``x``'s dtype (``floor`` and
    ``zero_scale`` as there), codes by :func:`symmetric_codes`. NaN/Inf in ``x`` raise ``ValueError``.
    The fused ``lowbit.ops.quantize_rows(x, bits)`` is this function's fast path for float32 (M, K) and
    ``dim=1`` (bit-identical; tests/test_symmetric_exact.py).
    """
    amax = absmax(x, dim, keepdim=True)
    if not bool(torch.isfinite(amax).all()):
        raise ValueError(
            f"x holds {int(torch.isnan(x).sum())} NaN and {int(torch.isinf(x).sum())} infinite values; "
            "a symmetric scale needs finite values (torch.nan_to_num or clamp them first)"
        )
    scale = symmetric_scale(amax, qmax, floor=floor, zero_scale=zero_scale)
    codes = symmetric_codes(x, scale, CodeRange(-qmax, qmax))
    return codes, (scale.reshape(()) if dim is None else scale.squeeze(dim))


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack int8 codes in [-8, 7] two per byte (2j low nibble, 2j+1 high nibble) -> uint8, last dim halved."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int8:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"codes must be an int8 tensor of INT4 codes, got {got}; quantize(x, INT4).codes")
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError(
            f"codes' last dim must be even to pack two per byte, got shape {tuple(codes.shape)}; "
            "pad the last dim with a zero column"
        )
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ValueError(
            f"codes must lie in [-8, 7] for INT4, got [{int(codes.min())}, {int(codes.max())}]; "
            "quantize with lowbit.formats.INT4"
        )
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2).to(torch.int16)
    packed = (pairs[..., 0] & 0xF) | ((pairs[..., 1] & 0xF) << 4)
    return packed.to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 bytes -> int8 codes in [-8, 7], last dim doubled."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"packed must be a uint8 tensor from pack_int4, got {got}")
    if packed.dim() == 0:
        raise ValueError("packed must have at least 1 dimension (the packed last dim)")
    p = packed.to(torch.int16)
    nibbles = torch.stack([p & 0xF, p >> 4], dim=-1)
    signed = (nibbles ^ 8) - 8  # two's complement nibble -> [-8, 7]
    return signed.reshape(*packed.shape[:-1], packed.shape[-1] * 2).to(torch.int8)
