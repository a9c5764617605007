"""Minifloat formats: :class:`FloatFormat` (sign + ExMy, three conventions for the special codes) and the
named ones (FP8 E4M3/E5M2, FP6 E3M2/E2M3, FP4 E2M1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ints import _check_int

FLOAT_SPECIALS = ("ieee", "fn", "finite")


def _default_special(exp_bits: int, man_bits: int) -> str:
    """OCP conventions: E4M3 is "fn", sub-8-bit formats (and E1My) are all finite, others IEEE-like."""
    if (exp_bits, man_bits) == (4, 3):
        return "fn"
    return "finite" if 1 + exp_bits + man_bits < 8 or exp_bits < 2 else "ieee"


@dataclass(frozen=True)
class FloatFormat:
    """A sign + ExMy minifloat; ``bias`` defaults to ``2^(E-1)-1``, ``special`` to the OCP convention.

    The default ``special`` is ``"fn"`` for E4M3, ``"finite"`` for formats narrower than 8 bits (OCP MX FP6
    and FP4) or with one exponent bit, and ``"ieee"`` otherwise.
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    special: str | None = None

    def __post_init__(self) -> None:
        _check_int("exp_bits", self.exp_bits, 1, 8, "use 1 to 8 exponent bits (FP8 E4M3 has exp_bits=4)")
        _check_int("man_bits", self.man_bits, 0, 10, "use 0 to 10 mantissa bits (FP8 E4M3 has man_bits=3)")
        if 1 + self.exp_bits + self.man_bits > 16:
            raise ValueError(
                f"1 + exp_bits + man_bits = {1 + self.exp_bits + self.man_bits} > 16; lowbit's minifloats "
                "have at most 16 bits"
            )
        # Resolve the defaults once at construction (the fields are then never changed).
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        if self.special is None:
            object.__setattr__(self, "special", _default_special(self.exp_bits, self.man_bits))
        _check_int("bias", self.bias, -128, 255, "pass bias=None for the standard 2^(E-1)-1")
        if self.special not in FLOAT_SPECIALS:
            raise ValueError(f"special must be one of {FLOAT_SPECIALS}, got {self.special!r}")
        if self.special == "ieee" and self.exp_bits < 2:
            raise ValueError("special='ieee' needs exp_bits >= 2 (one exponent is reserved for Inf/NaN)")
        if self.emin - self.man_bits < -126 or self.emax > 127:
            raise ValueError(
                f"bias={self.bias} puts e{self.exp_bits}m{self.man_bits}'s range outside float32's normal "
                "numbers (2^-126 .. 2^127), where lowbit computes; use a bias closer to 2^(E-1)-1"
            )
        if self.special == "fn" and self.man_bits < 1:
            raise ValueError("special='fn' needs man_bits >= 1 (the top all-ones code is NaN)")

    @property
    def kind(self) -> str:
        return "float"

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def name(self) -> str:
        name = f"fp{self.bits}-e{self.exp_bits}m{self.man_bits}"
        if self.bias != 2 ** (self.exp_bits - 1) - 1:
            name += f"-b{self.bias}"
        if self.special != _default_special(self.exp_bits, self.man_bits):
            name += f"-{self.special}"
        return name

    @property
    def has_inf(self) -> bool:
        return self.special == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.special != "finite"

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite binade."""
        top_field = 2**self.exp_bits - 1 - (1 if self.special == "ieee" else 0)
        return top_field - self.bias

    @property
    def max(self) -> float:
        # "fn" loses the all-ones mantissa of the top binade to NaN; the others keep the whole binade.
        top_mantissa = 2**self.man_bits - (2 if self.special == "fn" else 1)
        return math.ldexp(1.0 + top_mantissa / 2**self.man_bits, self.emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.emin - self.man_bits)

    @property
    def num_codes(self) -> int:
        """How many bit patterns encode a finite number (both zeros counted)."""
        specials = {"ieee": 2 * 2**self.man_bits, "fn": 2, "finite": 0}[self.special]
        return 2**self.bits - specials

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype holding this format bit for bit, if torch has one (FP8 E4M3 / E5M2)."""
        if self == FP8_E4M3:
            return torch.float8_e4m3fn
        if self == FP8_E5M2:
            return torch.float8_e5m2
        return None

    def codes(self) -> torch.Tensor:
        """Every finite value (one zero), float64, sorted ascending."""
        return _float_codes(self)

    def __str__(self) -> str:
        return self.name


def _float_codes(fmt: FloatFormat) -> torch.Tensor:
    mantissas = torch.arange(2**fmt.man_bits, dtype=torch.float64) / 2**fmt.man_bits
    values = [torch.ldexp(mantissas, torch.tensor(fmt.emin, dtype=torch.float64))]  # zero and subnormals
    for exp in range(fmt.emin, fmt.emax + 1):
        values.append(torch.ldexp(1.0 + mantissas, torch.tensor(exp, dtype=torch.float64)))
    positive = torch.cat(values)
    positive = positive[positive <= fmt.max]
    return torch.cat([-positive.flip(0)[:-1], positive])


def float_format(
    exp_bits: int, man_bits: int, bias: int | None = None, special: str | None = None
) -> FloatFormat:
    """Any ExMy minifloat, e.g. ``float_format(3, 4)``; see :class:`FloatFormat` for the defaults."""
    return FloatFormat(exp_bits, man_bits, bias, special)


FP8_E4M3 = FloatFormat(4, 3)  # bias 7, no Inf, max 448, NaN = S.1111.111
FP8_E5M2 = FloatFormat(5, 2)  # bias 15, IEEE-like Inf/NaN, max 57344
FP6_E3M2 = FloatFormat(3, 2)  # bias 3, all finite, max 28
FP6_E2M3 = FloatFormat(2, 3)  # bias 1, all finite, max 7.5
FP4_E2M1 = FloatFormat(2, 1)  # bias 1, all finite, max 6
