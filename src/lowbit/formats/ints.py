"""Integer formats: :class:`IntFormat` (signed, signed narrow, unsigned; 2 to 8 bits), its :class:`CodeRange`,
and the named integer formats (``INT2`` .. ``INT8``, ``UINT4``, ``UINT8``, the narrow ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class CodeRange(NamedTuple):
    """An inclusive integer code range ``[lo, hi]``; unpacks as ``lo, hi = r``."""

    lo: int
    hi: int

    def contains(self, lo: int, hi: int) -> bool:
        """True when every code of ``[lo, hi]`` lies in this range."""
        return self.lo <= lo and hi <= self.hi

    @property
    def magnitude(self) -> int:
        """The largest ``|code|``: ``max(-lo, hi)``."""
        return max(-self.lo, self.hi)


def _check_int(name: str, value: object, lo: int, hi: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}; {fix}")


@dataclass(frozen=True)
class IntFormat:
    """An integer format: ``bits`` (2–8), ``signed``, ``narrow`` (symmetric signed range, no ``-2^(b-1)``)."""

    bits: int
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        _check_int("bits", self.bits, 2, 8, "lowbit's integer formats have 2 to 8 bits (INT2..INT8, UINT8)")
        if not isinstance(self.signed, bool) or not isinstance(self.narrow, bool):
            raise TypeError(f"signed and narrow must be bools, got {self.signed!r}, {self.narrow!r}")
        if self.narrow and not self.signed:
            raise ValueError("narrow=True only applies to signed formats; use signed=True or narrow=False")

    @property
    def kind(self) -> str:
        return "int"

    @property
    def name(self) -> str:
        base = f"{'int' if self.signed else 'uint'}{self.bits}"
        return f"{base}-narrow" if self.narrow else base

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def code_range(self) -> CodeRange:
        """``CodeRange(qmin, qmax)``."""
        return CodeRange(self.qmin, self.qmax)

    @property
    def max(self) -> float:
        return float(self.qmax)

    @property
    def min_normal(self) -> float:
        return 1.0

    @property
    def min_subnormal(self) -> float:
        return 1.0

    @property
    def emax(self) -> int:
        """floor(log2(qmax)): the largest power of two on the grid (the MX element ``emax``)."""
        return self.qmax.bit_length() - 1

    @property
    def num_codes(self) -> int:
        """How many bit patterns encode a number."""
        return self.qmax - self.qmin + 1

    def codes(self) -> torch.Tensor:
        """Every representable value, float64, sorted ascending."""
        return torch.arange(self.qmin, self.qmax + 1, dtype=torch.float64)

    def __str__(self) -> str:
        return self.name


def int_format(bits: int, signed: bool = True, narrow: bool = False) -> IntFormat:
    """Any integer format, e.g. ``int_format(3)``, ``int_format(8, narrow=True)``."""
    return IntFormat(bits, signed, narrow)


INT2, INT3, INT4, INT5, INT6, INT7, INT8 = (IntFormat(b) for b in range(2, 9))
UINT4 = IntFormat(4, signed=False)
UINT8 = IntFormat(8, signed=False)
INT4_NARROW = IntFormat(4, narrow=True)  # [-7, 7]: symmetric absmax INT4 (absmax / 7, no -8)
INT7_NARROW = IntFormat(7, narrow=True)  # [-63, 63]: symmetric 7-bit codes in int8 storage
INT8_NARROW = IntFormat(8, narrow=True)  # [-127, 127]: symmetric absmax INT8 (absmax / 127, no -128)
UINT7 = IntFormat(7, signed=False)  # [0, 127]: non-negative int8 codes (attention probabilities)
