"""Kernel planning of the native integer GEMM: which kernel kind (and A offset) the code ranges allow.

Path planning for ``bits=8`` (see ``csrc/gemm.h``): ``b`` in [-64, 64] -> kind 0 with ``a`` shifted by 128;
else ``a`` in [-64, 63] -> kind 0 with ``a`` shifted by 64; else kind 2 (int16 operands, exact for every int8
code, slower) — except that ``b`` in [-8, 7] (an 8-bit x 4-bit product, e.g. the INT4 training backward's
merged bit-split gradient codes x INT4 codes) takes kind 3 (any int8 ``a`` x ``b`` shifted by 8, int16
accumulation widened every 32 k, the shift undone with ``a``'s row sums), and both in [-8, 7] take kind 1.
``bits=4`` -> kind 1 (``a`` shifted by 8, int16 accumulation widened every 512 k). All of that is
the ``avx2`` ISA; on ``avx512-vnni`` every product is kind 4 (kind 0 layouts, ``vpdpbusd``, ``a`` + 128).
"""

from __future__ import annotations

from lowbit.formats import INT4_RANGE, U8S8_ACT_RANGE, U8S8_WEIGHT_RANGE

MR, NR = 6, 16  # micro-tile rows (A panel) and columns (B panel); must match csrc/gemm.h
KIND_U8S8, KIND_INT4, KIND_S16, KIND_S8U4, KIND_VNNI, KIND_BF16 = 0, 1, 2, 3, 4, 5
ISAS = ("avx512-vnni", "avx2")  # the native backends this module serves (lowbit.ops.backends)


def plan(bits: int, a_range: tuple[int, int], b_range: tuple[int, int], isa: str = "avx2") -> tuple[int, int]:
    """(kernel kind, A offset) for the code ranges on ``isa``; ValueError for 4-bit codes out of [-8, 7].

    On ``"avx512-vnni"`` every product is kind 4 (``vpdpbusd``, exact for any int8 codes with A shifted by
    128), so 4-bit and 8-bit codes, and every mix of them, share one kernel."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {isa!r}")
    if bits == 4:
        for name, r in (("a", a_range), ("b", b_range)):
            if not INT4_RANGE.contains(*r):
                raise ValueError(f"{name} holds codes in [{r[0]}, {r[1]}], outside [-8, 7] for bits=4")
    if isa == "avx512-vnni":
        return KIND_VNNI, 128
    if bits == 4:
        return KIND_INT4, 8
    if INT4_RANGE.contains(*b_range):
        return (KIND_INT4, 8) if INT4_RANGE.contains(*a_range) else (KIND_S8U4, 8)
    if U8S8_WEIGHT_RANGE.contains(*b_range):
        return KIND_U8S8, 128
    if U8S8_ACT_RANGE.contains(*a_range):
        return KIND_U8S8, 64
    return KIND_S16, 0


def packed_nbytes(kind: int, rows: int, k: int, panel: int) -> int:
    """Bytes of one operand packed for ``kind`` with ``panel`` rows per panel (MR for A, NR for B)."""
    group, size = (2, 2) if kind in (KIND_S16, KIND_BF16) else (4, 1)
    return -(-rows // panel) * panel * (-(-k // group) * group) * size
