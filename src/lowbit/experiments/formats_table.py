"""``lowbit formats``: print every number format lowbit names with its range, code count and step sizes.

The table is computed from the formats themselves (``codes()``, ``max``, ``min_normal``, ...), so it is also
a quick look at what each format can represent. ``--json FILE`` writes the same rows with exact numbers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from lowbit.experiments.guard import UserError, check_output_file
from lowbit.files import atomic_write_text
from lowbit.formats import ALL_FORMATS, FloatFormat, Format, IntFormat, get_format, int_format

# The named constants plus the narrow (symmetric) integer variants most used in practice.
TABLE_FORMATS: tuple[Format, ...] = (*ALL_FORMATS[:7], int_format(4, narrow=True), int_format(8, narrow=True),
                                     *ALL_FORMATS[7:])  # fmt: skip
COLUMNS = ("name", "bits", "max", "min normal", "min subnormal", "values", "min step", "max step", "notes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the table as JSON to FILE")
    parser.add_argument(
        "--codes", metavar="NAME", help="instead of the table, list every value of one format (e.g. fp4-e2m1)"
    )


def _notes(fmt: Format) -> str:
    if isinstance(fmt, IntFormat):
        if not fmt.signed:
            return f"unsigned [{fmt.qmin}, {fmt.qmax}]"
        return f"signed {'narrow' if fmt.narrow else 'full'} [{fmt.qmin}, {fmt.qmax}]"
    if isinstance(fmt, FloatFormat):
        special = {"ieee": "Inf and NaN", "fn": "NaN only (no Inf)", "finite": "no Inf/NaN"}[fmt.special]
        return f"E{fmt.exp_bits}M{fmt.man_bits} bias {fmt.bias}, {special}"
    per_elem = fmt.bits + fmt.scale_bits / fmt.block
    return f"{fmt.block} x {fmt.element.name} + E8M0 scale, {per_elem:g} bits/value"


def format_row(fmt: Format) -> dict[str, object]:
    """One table row with exact numbers: steps are the smallest/largest gaps between neighbouring values."""
    codes = fmt.codes()
    gaps = torch.diff(codes)
    return {
        "name": fmt.name,
        "kind": fmt.kind,
        "bits": fmt.bits,
        "max": fmt.max,
        "min_normal": fmt.min_normal,
        "min_subnormal": fmt.min_subnormal,
        "values": int(codes.numel()),
        "min_step": float(gaps.min()),
        "max_step": float(gaps.max()),
        "notes": _notes(fmt),
    }


def _num(v: float) -> str:
    """Exact-looking numbers: small/large powers of two as 2^k, the rest with up to 6 significant digits."""
    mantissa, exp = math.frexp(v)
    if v > 0 and mantissa == 0.5 and not -4 <= exp - 1 <= 10:
        return f"2^{exp - 1}"
    return f"{v:.6g}"


def render(rows: list[dict[str, object]]) -> str:
    """An aligned plain-text table of ``rows``."""
    cells = [
        [
            str(r["name"]),
            str(r["bits"]),
            _num(r["max"]),
            _num(r["min_normal"]),
            _num(r["min_subnormal"]),
            str(r["values"]),
            _num(r["min_step"]),
            _num(r["max_step"]),
            str(r["notes"]),
        ]
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))]
    numeric = {1, 2, 3, 4, 5, 6, 7}

    def line(cols: list[str]) -> str:
        parts = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(COLUMNS)), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    if args.codes is not None:
        try:
            fmt = get_format(args.codes)
        except ValueError as err:
            raise UserError(f"--codes: {err}") from None
        values = fmt.codes().tolist()
        print(f"{fmt.name}: {len(values)} values from {_num(values[0])} to {_num(values[-1])}")
        print(" ".join(_num(v) for v in values))
        return 0
    if args.json is not None:
        check_output_file(args.json, "--json")
    rows = [format_row(f) for f in TABLE_FORMATS]
    print(render(rows))
    print(
        "\nvalues: distinct finite values (one zero); steps: gaps between neighbouring values. "
        "MX rows are per element, in units of the block's shared power-of-two scale."
    )
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
