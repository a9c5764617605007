"""OCP Microscaling block formats: :class:`MXFormat` (``block`` elements sharing one E8M0 power-of-two scale)
and the named ones (MXFP8 E4M3/E5M2, MXFP6 E3M2/E2M3, MXFP4, MXINT8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .floats import FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, FloatFormat
from .ints import INT8, IntFormat, _check_int

# E8M0 shared-scale exponent range of the OCP MX spec (code 255 is NaN).
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127


@dataclass(frozen=True)
class MXFormat:
    """OCP MX block format: ``block`` elements of ``element`` share a power-of-two E8M0 scale.

    An integer element is always the symmetric (narrow) range, as the OCP MX v1.0 INT8 element (±127/64):
    ``MXFormat(INT8).element == IntFormat(8, narrow=True)``, so the code -128 (-2.0 × 2^X) is never produced
    and saturation is symmetric (a block near -3.4e38 stays finite).

    The shared scale: ``2^(floor(log2(amax)) - element emax)``, from 2^-126 (lowbit's floor: the scale stays
    a float32 normal; E8M0 itself reaches 2^-127) to 2^127. Below the floor the elements lose precision:
    a block whose amax is under ``2^-126 · 2^emax`` uses fewer than the element's bits — for MXINT8 (emax 6)
    up to 7 bits on blocks below ~7.5e-37 (``2^-120``), everything on blocks below ~5.9e-39
    (``2^-127``, half the smallest element step), which quantize to zero.
    """

    element: IntFormat | FloatFormat
    block: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.element, IntFormat | FloatFormat):
            raise TypeError(f"element must be an IntFormat or FloatFormat, got {type(self.element).__name__}")
        if isinstance(self.element, IntFormat) and not self.element.signed:
            raise ValueError("MX integer elements are signed; use IntFormat(bits) as element")
        if isinstance(self.element, IntFormat) and not self.element.narrow:  # OCP MX: symmetric elements
            object.__setattr__(self, "element", IntFormat(self.element.bits, narrow=True))
        _check_int("block", self.block, 1, 1 << 16, "the OCP MX block size is 32")

    @property
    def kind(self) -> str:
        return "mx"

    @property
    def name(self) -> str:
        for alias, fmt in _MX_ALIASES.items():
            if fmt == self:
                return alias
        elem = self.element.name.removesuffix("-narrow")  # integer elements are always narrow
        return f"mx{elem}" + ("" if self.block == 32 else f"-block{self.block}")

    @property
    def bits(self) -> int:
        """Bits per element (the shared 8-bit scale adds ``8 / block`` more)."""
        return self.element.bits

    @property
    def scale_bits(self) -> int:
        return 8

    @property
    def element_emax(self) -> int:
        """The element's largest power-of-two exponent: shared exponent = floor(log2(amax)) - element_emax."""
        return self.element.emax

    @property
    def max(self) -> float:
        return self.element.max

    @property
    def min_normal(self) -> float:
        return self.element.min_normal

    @property
    def min_subnormal(self) -> float:
        return self.element.min_subnormal

    @property
    def num_codes(self) -> int:
        return self.element.num_codes

    def codes(self) -> torch.Tensor:
        """The element's values (in units of the shared scale), float64, sorted ascending."""
        return self.element.codes()

    def __str__(self) -> str:
        return self.name


MXFP8_E4M3 = MXFormat(FP8_E4M3)
MXFP8_E5M2 = MXFormat(FP8_E5M2)
MXFP6_E3M2 = MXFormat(FP6_E3M2)
MXFP6_E2M3 = MXFormat(FP6_E2M3)
MXFP4 = MXFormat(FP4_E2M1)
MXINT8 = MXFormat(INT8)

_MX_ALIASES = {
    "mxfp8-e4m3": MXFP8_E4M3,
    "mxfp8-e5m2": MXFP8_E5M2,
    "mxfp6-e3m2": MXFP6_E3M2,
    "mxfp6-e2m3": MXFP6_E2M3,
    "mxfp4": MXFP4,
    "mxint8": MXINT8,
}
