"""Formats by name: :data:`ALL_FORMATS` and :func:`get_format`, whose grammar parses back every format's
``.name``.
"""

from __future__ import annotations

import re

from .floats import FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, FloatFormat
from .ints import INT2, INT3, INT4, INT5, INT6, INT7, INT8, UINT4, UINT8, IntFormat
from .mx import _MX_ALIASES, MXFP4, MXFP6_E2M3, MXFP6_E3M2, MXFP8_E4M3, MXFP8_E5M2, MXINT8, MXFormat

Format = IntFormat | FloatFormat | MXFormat


ALL_FORMATS: tuple[Format, ...] = (
    INT2, INT3, INT4, INT5, INT6, INT7, INT8, UINT4, UINT8,
    FP8_E4M3, FP8_E5M2, FP6_E3M2, FP6_E2M3, FP4_E2M1,
    MXFP8_E4M3, MXFP8_E5M2, MXFP6_E3M2, MXFP6_E2M3, MXFP4, MXINT8,
)  # fmt: skip

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
