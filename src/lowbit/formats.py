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
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch

FLOAT_SPECIALS = ("ieee", "fn", "finite")
# E8M0 shared-scale exponent range of the OCP MX spec (code 255 is NaN).
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127


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


Format = IntFormat | FloatFormat | MXFormat


def int_format(bits: int, signed: bool = True, narrow: bool = False) -> IntFormat:
    """Any integer format, e.g. ``int_format(3)``, ``int_format(8, narrow=True)``."""
    return IntFormat(bits, signed, narrow)


def float_format(
    exp_bits: int, man_bits: int, bias: int | None = None, special: str | None = None
) -> FloatFormat:
    """Any ExMy minifloat, e.g. ``float_format(3, 4)``; see :class:`FloatFormat` for the defaults."""
    return FloatFormat(exp_bits, man_bits, bias, special)


INT2, INT3, INT4, INT5, INT6, INT7, INT8 = (IntFormat(b) for b in range(2, 9))
UINT4 = IntFormat(4, signed=False)
UINT8 = IntFormat(8, signed=False)
INT4_NARROW = IntFormat(4, narrow=True)  # [-7, 7]: symmetric absmax INT4 (absmax / 7, no -8)
INT7_NARROW = IntFormat(7, narrow=True)  # [-63, 63]: symmetric 7-bit codes in int8 storage
INT8_NARROW = IntFormat(8, narrow=True)  # [-127, 127]: symmetric absmax INT8 (absmax / 127, no -128)
UINT7 = IntFormat(7, signed=False)  # [0, 127]: non-negative int8 codes (attention probabilities)
FP8_E4M3 = FloatFormat(4, 3)  # bias 7, no Inf, max 448, NaN = S.1111.111
FP8_E5M2 = FloatFormat(5, 2)  # bias 15, IEEE-like Inf/NaN, max 57344
FP6_E3M2 = FloatFormat(3, 2)  # bias 3, all finite, max 28
FP6_E2M3 = FloatFormat(2, 3)  # bias 1, all finite, max 7.5
FP4_E2M1 = FloatFormat(2, 1)  # bias 1, all finite, max 6
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

ALL_FORMATS: tuple[Format, ...] = (
    INT2, INT3, INT4, INT5, INT6, INT7, INT8, UINT4, UINT8,
    FP8_E4M3, FP8_E5M2, FP6_E3M2, FP6_E2M3, FP4_E2M1,
    MXFP8_E4M3, MXFP8_E5M2, MXFP6_E3M2, MXFP6_E2M3, MXFP4, MXINT8,
)  # fmt: skip

# Code ranges: lowbit.formats is their only owner, every other module imports them (DESIGN.md "formats.py").
INT8_RANGE = INT8.code_range  # [-128, 127]: the int8 codes the GEMM kernels take
INT4_RANGE = INT4.code_range  # [-8, 7]: the int4 codes the GEMM kernels take; LSQ's INT4 (as released)
INT8_SYMMETRIC = INT8_NARROW.code_range  # [-127, 127]: absmax INT8 (absmax / 127) and int8 saturation
INT4_SYMMETRIC = INT4_NARROW.code_range  # [-7, 7]: absmax INT4 (absmax / 7, int4-naive)
U8S8_WEIGHT_RANGE = CodeRange(-64, 64)  # AVX2 u8 x s8 weights: pair sums 2 * 255 * 64 < 2^15 fit int16
U8S8_ACT_RANGE = INT7.code_range  # [-64, 63]: u8 x s8 7-bit activations, a + 64 in [0, 127] is a u8 operand
W7_WEIGHT_RANGE = INT7_NARROW.code_range  # [-63, 63]: PTQ "w7" weights (absmax / 63), in U8S8_WEIGHT_RANGE
PROB_RANGE = UINT7.code_range  # [0, 127]: integer attention probabilities (a row / its max), not a saturation

_INT_RE = re.compile(r"(u?)int(\d+)(-narrow)?")
_FLOAT_RE = re.compile(r"(?:fp(\d+)-)?e(\d+)m(\d+)(?:-b(-?\d+))?(?:-(ieee|fn|finite))?")
_BLOCK_RE = re.compile(r"(.*)-block(\d+)")


def get_format(name: str | Format) -> Format:
    """Look a format up by name: ``"int4"``, ``"int8-narrow"``, ``"fp8-e4m3"``, ``"e3m4"``, ``"mxfp4"``.

    Every format's ``.name`` parses back to it (``"fp8-e4m3-b8-ieee"``, ``"mxint4-block16"``). Names are
    case-insensitive and ``_`` may stand for ``-``; a format object is returned unchanged.
    """
    if isinstance(name, IntFormat | FloatFormat | MXFormat):
        return name
    if not isinstance(name, str):
        raise TypeError(f"name must be a format name (str), got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    for fmt in ALL_FORMATS:
        if fmt.name == key:
            return fmt
    if key in _MX_ALIASES:
        return _MX_ALIASES[key]
    mx = key.startswith("mx")
    body, block = key[2:] if mx else key, 32
    if mx and (m := _BLOCK_RE.fullmatch(body)):
        body, block = m[1], int(m[2])
    fmt: IntFormat | FloatFormat | None = None
    if m := _INT_RE.fullmatch(body):
        fmt = IntFormat(int(m[2]), signed=not m[1], narrow=bool(m[3]))
    elif m := _FLOAT_RE.fullmatch(body):
        bias = None if m[4] is None else int(m[4])
        fmt = FloatFormat(int(m[2]), int(m[3]), bias, m[5])
        if m[1] is not None and int(m[1]) != fmt.bits:
            raise ValueError(f"format {name!r}: fp{m[1]} does not match e{m[2]}m{m[3]} ({fmt.bits} bits)")
    if fmt is None:
        known = ", ".join(f.name for f in ALL_FORMATS)
        raise ValueError(
            f"unknown format name {name!r}; known: {known}, "
            "or intN / uintN / intN-narrow / fpN-eXmY[-bB][-ieee|-fn|-finite] / eXmY / mx<element>[-blockK]"
        )
    return MXFormat(fmt, block) if mx else fmt
