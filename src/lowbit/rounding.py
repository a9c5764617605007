"""Rounding to a format's grid: ``round_to_format()`` for integer and ExMy grids, three rounding modes.

The building block of every quantizer in lowbit: values already divided by their scale go in, the nearest
grid values (as floats, saturated to the format's finite range) come out.

* ``"nearest"``: round half to even (IEEE default; equals torch's FP8 casts bit for bit);
* ``"nearest-away"``: round half away from zero;
* ``"stochastic"``: round up with probability equal to the fractional distance to the lower grid value, so
  ``E[round(x)] = x`` inside the range; random numbers come from the ``generator`` passed in (``None``
  uses torch's default generator, reproducible only through ``torch.manual_seed``).
"""

from __future__ import annotations

import torch

from lowbit.formats import FloatFormat, Format, IntFormat, MXFormat, get_format

ROUNDINGS = ("nearest", "nearest-away", "stochastic")
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def check_float(name: str, x: object) -> torch.Tensor:
    """``x`` if it is a float32/float64/half tensor; TypeError naming ``name`` and the fix otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype in _FP8_DTYPES:
        raise TypeError(
            f"{name} must be a float32/float64/bfloat16/float16 tensor, got {x.dtype}; "
            f"convert with {name}.float()"
        )
    return x


def check_rounding(rounding: str, generator: torch.Generator | None) -> None:
    """ValueError/TypeError unless ``rounding`` is one of :data:`ROUNDINGS` and ``generator`` a Generator."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def round_units(t: torch.Tensor, rounding: str, generator: torch.Generator | None) -> torch.Tensor:
    """Round real numbers to integers: ties-to-even, ties-away-from-zero, or stochastically (unbiased)."""
    if rounding == "nearest":
        return torch.round(t)
    if rounding == "nearest-away":
        whole = torch.trunc(t)
        frac = t - whole  # exact
        return whole + torch.where(frac.abs() >= 0.5, torch.sign(t), torch.zeros_like(t))
    low = torch.floor(t)
    frac = t - low  # exact, in [0, 1)
    u = torch.rand(t.shape, generator=generator, dtype=t.dtype, device=t.device)
    return low + (u < frac).to(t.dtype)  # P(round up) = frac (to the dtype's resolution): E[result] = t


def round_to_format(
    x: torch.Tensor,
    fmt: Format | str,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round ``x`` (already in the format's units) to the nearest grid values, saturating at ±max.

    Returns the on-grid values in ``x``'s dtype (float32 for half types). For MX formats this rounds to the
    element grid. ±Inf saturates; NaN raises ``ValueError``. The result carries no gradient (for training,
    use a straight-through estimator such as ``x + (round_to_format(x, fmt) - x).detach()``).
    """
    check_float("x", x)
    check_rounding(rounding, generator)
    fmt = get_format(fmt)
    elem = fmt.element if isinstance(fmt, MXFormat) else fmt
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError(
            f"x contains {int(torch.isnan(x).sum())} NaN values; replace them first (torch.nan_to_num)"
        )
    return round_checked(x, elem, rounding, generator)


def round_checked(
    x: torch.Tensor, fmt: IntFormat | FloatFormat, rounding: str, generator: torch.Generator | None
) -> torch.Tensor:
    """:func:`round_to_format` for callers that validated ``x`` (float32/64, no NaN) and the arguments."""
    x = x.detach()  # rounding has no useful gradient: callers build their own straight-through estimator
    if isinstance(fmt, IntFormat):
        return round_units(x.clamp(fmt.qmin, fmt.qmax), rounding, generator)
    if rounding == "nearest" and x.dtype == torch.float32 and fmt.torch_dtype is not None:
        # torch's float32 -> FP8 cast is round-half-even too: after saturation it gives the same grid value
        # as round_float (tests/test_rounding.py checks both paths against the cast on every bf16 value).
        return x.clamp(-fmt.max, fmt.max).to(fmt.torch_dtype).float()
    return round_float(x, fmt, rounding, generator)


def round_float(
    x: torch.Tensor, fmt: FloatFormat, rounding: str, generator: torch.Generator | None
) -> torch.Tensor:
    """Minifloat rounding: find each value's binade, round on that binade's step, keep the sign."""
    mag = x.abs().clamp_(max=fmt.max)
    _, exp = torch.frexp(mag)  # mag = f * 2**exp, f in [0.5, 1): floor(log2(mag)) = exp - 1
    # step exponent of the binade; subnormals share the step of the lowest normal binade
    step_exp = exp.sub_(1 + fmt.man_bits).clamp_(min=fmt.emin - fmt.man_bits)
    # Scaling by powers of two is exact (FloatFormat keeps its range inside float32's normals); max is on the
    # grid, so no rounded value exceeds it.
    units = torch.ldexp(mag, step_exp.neg())
    rounded = round_units(units, rounding, generator)
    if fmt.man_bits == 0 and rounding == "nearest":
        # With no mantissa bits a tie 1.5 * 2^e lies between codes whose exponent fields differ in their last
        # bit; ties-to-even keeps the even bit pattern (round() picked 2 * 2^e, the even *integer*).
        odd_lower = (step_exp + fmt.bias) % 2 == 1
        rounded = torch.where((units == 1.5) & ~odd_lower, torch.ones_like(rounded), rounded)
    return torch.ldexp(rounded, step_exp).copysign_(x)
