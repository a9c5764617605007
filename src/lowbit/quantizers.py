"""Quantizers: ``quantize()`` -> :class:`QTensor`, ``round_to_format()``, scale rules, rounding, INT4 packing.

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

import math
from dataclasses import dataclass

import torch

from lowbit.formats import E8M0_MAX_EXP, FloatFormat, Format, IntFormat, MXFormat, get_format

ROUNDINGS = ("nearest", "nearest-away", "stochastic")
GRANULARITY_KINDS = ("tensor", "row", "column", "group", "block")
DEFAULT_BLOCK = 32  # "block" granularity for non-MX formats: the OCP MX block size


@dataclass(frozen=True)
class Granularity:
    """Which elements share a scale: ``tensor``, ``row`` (last dim), ``column``, ``group`` of G along ``dim``.

    ``block`` is a group of the MX format's block size (32 for non-MX formats) along the last dim.
    """

    kind: str
    group_size: int | None = None
    dim: int = -1

    def __post_init__(self) -> None:
        if self.kind not in GRANULARITY_KINDS:
            raise ValueError(f"granularity kind must be one of {GRANULARITY_KINDS}, got {self.kind!r}")
        if self.kind in ("group", "block"):
            g = self.group_size
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ValueError(f"group size must be a positive int, got {g!r}; e.g. ('group', 128)")
        elif self.group_size is not None:
            raise ValueError(f"granularity {self.kind!r} takes no group size, got {self.group_size!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise TypeError(f"granularity dim must be an int, got {self.dim!r}")

    @classmethod
    def parse(cls, spec: object, fmt: Format | None = None) -> Granularity:
        """Accept a Granularity, "tensor", "row", "column", "block", ("group", G) or ("group", G, dim)."""
        if isinstance(spec, Granularity):
            return spec
        if spec == "block":
            return cls("block", fmt.block if isinstance(fmt, MXFormat) else DEFAULT_BLOCK)
        if isinstance(spec, str) and spec in ("tensor", "row", "column"):
            return cls(spec)
        if isinstance(spec, tuple) and len(spec) in (2, 3) and spec[0] == "group":
            return cls("group", spec[1], spec[2] if len(spec) == 3 else -1)
        raise ValueError(
            f"granularity must be 'tensor', 'row', 'column', 'block', ('group', G) or ('group', G, dim); "
            f"got {spec!r}"
        )

    def __str__(self) -> str:
        if self.kind == "group":
            return f"group{self.group_size}" + ("" if self.dim == -1 else f"@dim{self.dim}")
        return self.kind

    def group_view(self, shape: torch.Size) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(grouped shape, reduced dims) for data of ``shape``; the scale: grouped shape, 1s there."""
        nd = len(shape)
        if self.kind == "tensor":
            return tuple(shape), tuple(range(nd))
        if self.kind == "row":
            if nd < 1:
                raise ValueError("granularity='row' needs at least 1 dimension; use 'tensor' for scalars")
            return tuple(shape), (nd - 1,)
        if self.kind == "column":
            if nd < 2:
                raise ValueError(
                    f"granularity='column' needs at least 2 dimensions, got shape {tuple(shape)}; "
                    "use 'tensor' or reshape to (rows, columns)"
                )
            return tuple(shape), tuple(range(nd - 1))
        if not -nd <= self.dim < nd:
            raise ValueError(f"group dim {self.dim} is out of range for shape {tuple(shape)}")
        d = self.dim % nd
        g = self.group_size
        if shape[d] % g:
            raise ValueError(
                f"group size {g} does not divide dim {d} of size {shape[d]} (shape {tuple(shape)}); "
                f"pick a group size that divides {shape[d]} or pad the tensor"
            )
        grouped = (*shape[:d], shape[d] // g, g, *shape[d + 1 :])
        return grouped, (d + 1,)


@dataclass(frozen=True)
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
            raise TypeError(f"scale must be float32, got {self.scale.dtype}")
        grouped, _ = self.granularity.group_view(self.codes.shape)
        torch.broadcast_shapes(grouped, self.scale.shape)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """codes × scale in ``dtype`` (the scale broadcast over each group)."""
        grouped, _ = self.granularity.group_view(self.codes.shape)
        values = self.codes.to(dtype).reshape(grouped) * self.scale.to(dtype)
        return values.reshape(self.codes.shape)


def _check_float(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise TypeError(
            f"{name} must be a float32/float64/bfloat16/float16 tensor, got {x.dtype}; "
            f"convert with {name}.float()"
        )
    return x


def _check_rounding(rounding: str, generator: torch.Generator | None) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _round_units(t: torch.Tensor, rounding: str, generator: torch.Generator | None) -> torch.Tensor:
    """Round real numbers to integers: ties-to-even, ties-away-from-zero, or stochastically (unbiased)."""
    if rounding == "nearest":
        return torch.round(t)
    if rounding == "nearest-away":
        whole = torch.trunc(t)
        frac = t - whole  # exact
        return whole + torch.where(frac.abs() >= 0.5, torch.sign(t), torch.zeros_like(t))
    low = torch.floor(t)
    frac = t - low  # exact, in [0, 1)
    u = torch.rand(t.shape, generator=generator, dtype=torch.float32, device=t.device)
    return low + (u < frac).to(t.dtype)  # P(round up) = frac: E[result] = t


def round_to_format(
    x: torch.Tensor,
    fmt: Format | str,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round ``x`` (already in the format's units) to the nearest grid values, saturating at ±max.

    Returns the on-grid values in ``x``'s dtype (float32 for half types). For MX formats this rounds to the
    element grid. ±Inf saturates; NaN raises ``ValueError``.
    """
    _check_float("x", x)
    _check_rounding(rounding, generator)
    fmt = get_format(fmt)
    elem = fmt.element if isinstance(fmt, MXFormat) else fmt
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError(
            f"x contains {int(torch.isnan(x).sum())} NaN values; replace them first (torch.nan_to_num)"
        )
    if isinstance(elem, IntFormat):
        return _round_units(x.clamp(elem.qmin, elem.qmax), rounding, generator)
    return _round_float(x, elem, rounding, generator)


def _round_float(
    x: torch.Tensor, fmt: FloatFormat, rounding: str, generator: torch.Generator | None
) -> torch.Tensor:
    """Minifloat rounding: find each value's binade, round on that binade's step, keep the sign."""
    mag = x.abs().clamp(max=fmt.max)
    _, exp = torch.frexp(mag)  # mag = f * 2**exp, f in [0.5, 1): floor(log2(mag)) = exp - 1
    binade = (exp - 1).clamp(min=fmt.emin)  # subnormals share the step of the lowest normal binade
    step = torch.ldexp(torch.ones_like(mag), binade - fmt.man_bits)
    # mag / step and the product below are exact (powers of two); max is on the grid so no result exceeds it.
    rounded = _round_units(mag / step, rounding, generator) * step
    return torch.copysign(rounded, x)


def _codes_dtype(fmt: Format) -> torch.dtype:
    elem = fmt.element if isinstance(fmt, MXFormat) else fmt
    if isinstance(elem, IntFormat):
        return torch.int8 if elem.signed else torch.uint8
    return elem.torch_dtype or torch.float32


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
    """
    x = _check_float("x", x)
    fmt = get_format(fmt)
    _check_rounding(rounding, generator)
    if granularity is None:
        granularity = "block" if isinstance(fmt, MXFormat) else "tensor"
    gran = Granularity.parse(granularity, fmt)
    if isinstance(fmt, MXFormat) and gran != Granularity("block", fmt.block):
        raise ValueError(
            f"{fmt.name} shares one scale per block of {fmt.block} along the last dim; "
            f"use granularity='block' (got {granularity!r})"
        )
    grouped, reduce_dims = gran.group_view(x.shape)
    x_g = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    x_g = x_g.reshape(grouped)
    if x.numel() and bool(torch.isnan(x_g).any()):
        raise ValueError(
            f"x contains {int(torch.isnan(x_g).sum())} NaN values; replace them first (torch.nan_to_num)"
        )
    if isinstance(fmt, MXFormat):
        if scale != "absmax":
            raise ValueError(f"{fmt.name} uses the OCP shared power-of-two scale; leave scale='absmax'")
        scale_t = mx_scale(x_g, reduce_dims, fmt)
    else:
        scale_t = compute_scale(x_g, reduce_dims, fmt, scale)
    if gran.kind == "tensor":
        scale_t = scale_t.reshape(())
    codes = round_to_format(x_g / scale_t, fmt, rounding, generator)
    codes = codes.reshape(x.shape).to(_codes_dtype(fmt))
    return QTensor(codes, scale_t, fmt, gran)


def _quant_dequant(x_g: torch.Tensor, scale: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Round-to-nearest fake quantization (used by the MSE scale search)."""
    return round_to_format(x_g / scale, fmt) * scale


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


# ---------------------------------------------------------------------------------------------------------
# Scale rules. Each maps grouped data to a float32 scale with 1s on the reduced dims.
# ---------------------------------------------------------------------------------------------------------
SCALE_RULES = ("absmax", "percentile", "mse", "pow2")
# Clipping ratios tried by the "mse" rule: 1.00, 0.99, ..., 0.20 of the group's absmax (ties: largest ratio).
MSE_RATIOS = tuple(1 - i / 100 for i in range(81))
_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def _amax(x_g: torch.Tensor, reduce_dims: tuple[int, ...]) -> torch.Tensor:
    mag = x_g.abs()
    return mag.amax(dim=reduce_dims, keepdim=True) if reduce_dims else mag


def _check_finite_for_rule(x_g: torch.Tensor, rule: object) -> None:
    bad = int((~torch.isfinite(x_g)).sum())
    if bad:
        raise ValueError(
            f"x contains {bad} infinite values, so scale rule {rule!r} cannot see its range; "
            "clamp or torch.nan_to_num the input first, or pass an explicit scale"
        )


def _finish_scale(clip: torch.Tensor, fmt: IntFormat | FloatFormat) -> torch.Tensor:
    """Clip value (per group) -> float32 step size; zero clip -> 1, never subnormal, Inf raises."""
    scale = (clip.double() / fmt.max).float()
    scale = torch.where(clip == 0, torch.ones_like(scale), scale.clamp(min=_FLOAT32_TINY))
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
        return _explicit_scale(rule, shape)
    if isinstance(rule, str) and rule not in SCALE_RULES or rule == "percentile":
        raise ValueError(
            f"scale rule must be one of {SCALE_RULES} (percentile as ('percentile', p)), got {rule!r}"
        )
    if x_g.numel() == 0:
        return torch.ones(shape, dtype=torch.float32)
    _check_finite_for_rule(x_g, rule)
    amax = _amax(x_g, reduce_dims)
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
    _check_finite_for_rule(x_g, "mx shared scale")
    amax = _amax(x_g, reduce_dims).float()
    _, exp = torch.frexp(amax)  # floor(log2(amax)) = exp - 1 for amax > 0
    # E8M0 reaches 2**-127; lowbit stops at 2**-126 so that scales stay float32 normals (Decisions).
    shared = (exp - 1 - fmt.element_emax).clamp(-126, E8M0_MAX_EXP)
    scale = torch.ldexp(torch.ones_like(amax), shared)
    return torch.where(amax == 0, torch.ones_like(scale), scale)
