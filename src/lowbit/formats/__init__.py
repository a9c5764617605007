"""Number formats lowbit can name: integers, ExMy minifloats, OCP MX block formats; ranges and code sets.

A format is a frozen value that carries its own constants. Three kinds:

* :class:`IntFormat` — ``bits``-bit integers; signed full range ``[-2^(b-1), 2^(b-1)-1]``, signed narrow
  (symmetric) range ``[-(2^(b-1)-1), 2^(b-1)-1]``, or unsigned ``[0, 2^b-1]``.
* :class:`FloatFormat` — a minifloat with ``exp_bits`` exponent and ``man_bits`` mantissa bits and one of
  three conventions for the special codes:

  - ``"ieee"``: the top exponent is reserved for Inf/NaN (FP8 E5M2);
  - ``"fn"``: no infinities, only the all-ones code ``S.1…1.1…1`` is NaN (FP8 E4M3, max 448);
  - ``"finite"``: every code is a finite number (OCP MX FP6 E3M2/E2M3 and FP4 E2M1).

* :class:`MXFormat` — OCP Microscaling: blocks of ``block`` (32) elements of an element format sharing one
  power-of-two E8M0 scale. Its ``max``/``min_normal``/``codes()`` are the element's, i.e. in units of the
  shared scale. Integer elements are symmetric (narrow): MXINT8's codes are ±127 (±127/64 in the OCP MX
  v1.0 convention of an implicit 2^-6), never -128, so saturation is symmetric.

Everything here is pure Python; the quantizers that use these values live in :mod:`lowbit.quantizers`.

Modules (import every name from ``lowbit.formats``; the package imports nothing else of lowbit, it is the
bottom layer): ``ints`` (:class:`IntFormat`, :class:`CodeRange`), ``floats`` (:class:`FloatFormat`), ``mx``
(:class:`MXFormat`), ``ranges`` (every integer code range lowbit uses, with its reason), ``names``
(:data:`ALL_FORMATS`, :func:`get_format`).
"""

from .floats import (
    FLOAT_SPECIALS,
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    FloatFormat,
    float_format,
)
from .ints import (
    INT2,
    INT3,
    INT4,
    INT4_NARROW,
    INT5,
    INT6,
    INT7,
    INT7_NARROW,
    INT8,
    INT8_NARROW,
    UINT4,
    UINT7,
    UINT8,
    CodeRange,
    IntFormat,
    int_format,
)
from .mx import (
    E8M0_MAX_EXP,
    E8M0_MIN_EXP,
    MXFP4,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    MXFormat,
)
from .names import ALL_FORMATS, Format, get_format
from .ranges import (
    INT4_RANGE,
    INT4_SYMMETRIC,
    INT8_RANGE,
    INT8_SYMMETRIC,
    PROB_RANGE,
    U8S8_ACT_RANGE,
    U8S8_WEIGHT_RANGE,
    W7_WEIGHT_RANGE,
)

__all__ = [
    "ALL_FORMATS", "E8M0_MAX_EXP", "E8M0_MIN_EXP", "FLOAT_SPECIALS", "Format", "CodeRange",
    "IntFormat", "FloatFormat", "MXFormat", "int_format", "float_format", "get_format",
    "INT2", "INT3", "INT4", "INT5", "INT6", "INT7", "INT8", "UINT4", "UINT7", "UINT8",
    "INT4_NARROW", "INT7_NARROW", "INT8_NARROW",
    "FP8_E4M3", "FP8_E5M2", "FP6_E3M2", "FP6_E2M3", "FP4_E2M1",
    "MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2", "MXFP6_E2M3", "MXFP4", "MXINT8",
    "INT8_RANGE", "INT4_RANGE", "INT8_SYMMETRIC", "INT4_SYMMETRIC",
    "U8S8_WEIGHT_RANGE", "U8S8_ACT_RANGE", "W7_WEIGHT_RANGE", "PROB_RANGE",
]  # fmt: skip
