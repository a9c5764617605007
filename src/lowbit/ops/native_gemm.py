"""Tensor-level wrappers of the native kernels: range checks, path planning, packing, GEMM calls.

Callers (``lowbit.ops.api``, ``lowbit.ops.linear``) validate arguments first; these functions assume int8
code matrices on the CPU and only check what the kernels need (code ranges, which decide the path).

Path planning (which kernel kind for which code ranges) lives in :mod:`lowbit.ops.gemm_plan`; kind 5's bf16
operands (FP8 layers) in :mod:`lowbit.ops.native_bf16`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from lowbit.formats import INT8_RANGE
from lowbit.ops import native
from lowbit.ops.gemm_plan import (  # noqa: F401 (re-exported: callers name them native_gemm.*)
    ISAS,
    KIND_BF16,
    KIND_INT4,
    KIND_S8U4,
    KIND_S16,
    KIND_U8S8,
    KIND_VNNI,
    MR,
    NR,
    packed_nbytes,
    plan,
)


def threads() -> int:
    """Threads for one kernel call: torch's intra-op setting, read per call (no global of our own)."""
    return max(1, torch.get_num_threads())


_SCRATCH = threading.local()  # per-thread panel buffers of one-off products (see scratch)


def scratch(slot: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A reusable per-thread buffer for an operand that lives for one call (packed GEMM panels, FP8 layers'
    float32 operands): valid until the same thread asks for ``slot`` again.

    Allocating such operands fresh each call maps new pages, and faulting in ~12 MB of panels costs ~1.5 ms
    per call (measured in the INT4 training backward). Each thread keeps its largest buffer per slot (about
    2 x 13 MB for the 4096 x 3072 training shapes), like a BLAS workspace.
    """
    pool = getattr(_SCRATCH, "pool", None)
    if pool is None:
        pool = _SCRATCH.pool = {}
    buf = pool.get(slot)
    if buf is None or buf.dtype != dtype or buf.numel() < numel:
        buf = pool[slot] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def _empty(slot: str | None, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(numel)``, or the thread's scratch buffer ``slot`` when one is named."""
    return torch.empty(numel, dtype=dtype) if slot is None else scratch(slot, numel, dtype)


def _view_rk(t: torch.Tensor, transposed: bool) -> tuple[int, int, int, int]:
    """(rows, K, row stride, k stride) of ``t`` read as rows x K (``transposed``: t is K x rows)."""
    if transposed:
        return t.shape[1], t.shape[0], t.stride(1), t.stride(0)
    return t.shape[0], t.shape[1], t.stride(0), t.stride(1)


def minmax(t: torch.Tensor, transposed: bool = False) -> tuple[int, int]:
    """(min, max) of an int8 matrix (any strides), computed natively."""
    rows, k, s_r, s_k = _view_rk(t, transposed)
    out = torch.empty(2, dtype=torch.int32)
    native.lib().lowbit_minmax_i8(t.data_ptr(), s_r, s_k, rows, k, out.data_ptr(), threads())
    return int(out[0]), int(out[1])


def pack_a(
    kind: int, off: int, t: torch.Tensor, transposed: bool = False, scratch: str | None = None
) -> torch.Tensor:
    """Pack the A operand (rows = M) into the kind's panel layout; ``scratch``: see :func:`pack_b`."""
    rows, k, s_r, s_k = _view_rk(t, transposed)
    lib = native.lib()
    if kind == KIND_S16:
        dst = _empty(scratch, -(-rows // MR) * MR * (-(-k // 2) * 2), torch.int16)
        lib.lowbit_pack_s16(t.data_ptr(), s_r, s_k, rows, k, MR, dst.data_ptr(), None, threads())
        return dst
    dst = _empty(scratch, -(-rows // MR) * MR * (-(-k // 4) * 4), torch.uint8)
    lib.lowbit_pack_u8(t.data_ptr(), s_r, s_k, rows, k, off, dst.data_ptr(), threads())
    return dst


def pack_b(
    kind: int, t: torch.Tensor, transposed: bool = False, scratch: str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pack the B operand (rows = N) into the kind's panel layout; returns (packed, column sums or None).
    ``scratch``: pack into that per-thread scratch buffer (one-off products) instead of a new tensor."""
    rows, k, s_r, s_k = _view_rk(t, transposed)
    lib = native.lib()
    if kind == KIND_S16:
        dst = _empty(scratch, -(-rows // NR) * NR * (-(-k // 2) * 2), torch.int16)
        lib.lowbit_pack_s16(t.data_ptr(), s_r, s_k, rows, k, NR, dst.data_ptr(), None, threads())
        return dst, None
    dst = _empty(scratch, -(-rows // NR) * NR * (-(-k // 4) * 4), torch.int8)
    colsum = torch.empty(rows, dtype=torch.int32)
    lib.lowbit_pack_s8(t.data_ptr(), s_r, s_k, rows, k, dst.data_ptr(), colsum.data_ptr(), threads())
    return dst, colsum


def pack_a_s8(
    t: torch.Tensor, transposed: bool = False, scratch: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kind 3's A operand: unshifted s8 panels (the u8 layout) and the row sums (M,) that undo B's shift."""
    rows, k, s_r, s_k = _view_rk(t, transposed)
    dst = _empty(scratch, -(-rows // MR) * MR * (-(-k // 4) * 4), torch.int8)
    rowsum = torch.empty(rows, dtype=torch.int32)
    lib = native.lib()
    lib.lowbit_pack_s8_rows(t.data_ptr(), s_r, s_k, rows, k, dst.data_ptr(), rowsum.data_ptr(), threads())
    return dst, rowsum


def pack_b_u8(
    off: int, t: torch.Tensor, transposed: bool = False, scratch: str | None = None
) -> torch.Tensor:
    """Kind 3's B operand: 4-bit codes shifted by ``off`` (8) into u8 panels (the s8 layout)."""
    rows, k, s_r, s_k = _view_rk(t, transposed)
    dst = _empty(scratch, -(-rows // NR) * NR * (-(-k // 4) * 4), torch.uint8)
    native.lib().lowbit_pack_u8_cols(t.data_ptr(), s_r, s_k, rows, k, off, dst.data_ptr(), threads())
    return dst


@dataclass(frozen=True)
class Epilogue:
    """Where the GEMM writes: int32 ``out_i32``, or float32 ``out_f32`` with scales (M,), (N,) and bias."""

    out_i32: torch.Tensor | None = None
    out_f32: torch.Tensor | None = None
    a_scale: torch.Tensor | None = None
    b_scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def gemm(
    kind: int,
    off: int,
    a_packed: torch.Tensor,
    b_packed: torch.Tensor,
    colsum: torch.Tensor | None,
    m: int,
    n: int,
    k: int,
    epi: Epilogue,
) -> None:
    """Run the blocked native GEMM on packed operands, writing through the fused epilogue."""
    out = epi.out_i32 if epi.out_i32 is not None else epi.out_f32
    if m == 0 or n == 0:
        return
    if k == 0:  # no products: acc = 0
        if epi.out_i32 is not None:
            epi.out_i32.zero_()
        else:
            epi.out_f32.copy_(torch.zeros(m, n) * epi.a_scale.reshape(-1, 1) * epi.b_scale.reshape(1, -1))
            if epi.bias is not None:
                epi.out_f32.add_(epi.bias.reshape(1, -1))
        return
    _check_packed(kind, a_packed, b_packed, colsum, m, n, k, off, out)
    if epi.out_f32 is not None:
        for name, t, length in (
            ("a_scale", epi.a_scale, m),
            ("b_scale", epi.b_scale, n),
            ("bias", epi.bias, n),
        ):
            ok = t is not None and t.dtype == torch.float32 and t.is_contiguous() and t.numel() == length
            if not ok and not (name == "bias" and t is None):
                raise ValueError(f"{name} must be a contiguous float32 vector of {length} entries")
    rc = native.lib().lowbit_gemm(
        kind,
        a_packed.data_ptr(),
        b_packed.data_ptr(),
        m,
        n,
        k,
        off,
        _ptr(colsum if off else None),
        _ptr(epi.out_i32),
        _ptr(epi.out_f32),
        out.stride(0),
        _ptr(epi.a_scale),
        _ptr(epi.b_scale),
        _ptr(epi.bias),
        threads(),
    )
    if rc != 0:
        raise MemoryError("lowbit_gemm could not allocate its per-thread tile buffers")


def _check_packed(kind, a_packed, b_packed, colsum, m, n, k, off, out) -> None:
    """Guard the native call against mismatched buffers (a wrong size would read out of bounds)."""
    if kind not in (KIND_U8S8, KIND_INT4, KIND_S16, KIND_S8U4, KIND_VNNI, KIND_BF16):
        raise ValueError(f"unknown kernel kind {kind}")
    for name, t, rows, panel in (("A", a_packed, m, MR), ("B", b_packed, n, NR)):
        want = packed_nbytes(kind, rows, k, panel)
        if not t.is_contiguous() or t.numel() * t.element_size() != want:
            raise ValueError(
                f"packed {name} has {t.numel() * t.element_size()} bytes, kind {kind} needs {want}"
            )
    sums = m if kind == KIND_S8U4 else n  # kind 3 undoes B's shift with A's row sums
    if off and (colsum is None or colsum.numel() != sums or colsum.dtype != torch.int32):
        raise ValueError(f"offset {off} needs int32 sums of the unshifted operand with {sums} entries")
    if out.shape != (m, n) or not out.is_contiguous():
        raise ValueError(f"output must be contiguous ({m}, {n}), got {tuple(out.shape)}")


def _prepare(a8: torch.Tensor, b8: torch.Tensor, bits: int, layout: str, isa: str):
    """Plan and pack both operands of a one-off product; returns (kind, off, Ap, Bp, colsum, m, n, k)."""
    a_t = layout == "tn"  # a stored K x M
    b_t = layout in ("nn", "tn")  # b stored K x N
    m, k = (a8.shape[1], a8.shape[0]) if a_t else (a8.shape[0], a8.shape[1])
    n = b8.shape[1] if b_t else b8.shape[0]
    if m == 0 or n == 0 or k == 0:
        if bits == 4:  # still reject out-of-range 4-bit codes
            plan(bits, minmax(a8, a_t), minmax(b8, b_t), isa)
        return None, 0, None, None, None, m, n, k
    if isa == "avx512-vnni" and bits == 8:  # one kernel for every int8 code: no range scan needed
        kind, off = plan(bits, INT8_RANGE, INT8_RANGE, isa)
    else:
        kind, off = plan(bits, minmax(a8, a_t), minmax(b8, b_t), isa)
    if kind == KIND_S8U4:
        a_packed, rowsum = pack_a_s8(a8, a_t, scratch="a")
        return kind, off, a_packed, pack_b_u8(off, b8, b_t, scratch="b"), rowsum, m, n, k
    a_packed = pack_a(kind, off, a8, a_t, scratch="a")
    b_packed, colsum = pack_b(kind, b8, b_t, scratch="b")
    return kind, off, a_packed, b_packed, colsum, m, n, k


def int_matmul(
    a8: torch.Tensor, b8: torch.Tensor, bits: int, layout: str, out: torch.Tensor, isa: str = "avx2"
) -> None:
    """Exact int32 product (layout as in ``lowbit.ops.int_matmul``) into ``out`` (int32 (M, N))."""
    kind, off, ap, bp, colsum, m, n, k = _prepare(a8, b8, bits, layout, isa)
    gemm(kind, off, ap, bp, colsum, m, n, k, Epilogue(out_i32=out))


def int_matmul_scaled(
    a8: torch.Tensor,
    b8: torch.Tensor,
    sa: torch.Tensor,
    sb: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    layout: str,
    out: torch.Tensor,
    isa: str = "avx2",
) -> None:
    """Fused GEMM + dequantization epilogue into ``out`` (float32 (M, N), contiguous)."""
    kind, off, ap, bp, colsum, m, n, k = _prepare(a8, b8, bits, layout, isa)
    gemm(kind, off, ap, bp, colsum, m, n, k, Epilogue(out_f32=out, a_scale=sa, b_scale=sb, bias=bias))


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Native twin of ``reference.unpack_int4`` (uint8 nibbles along the last dim -> int8 codes)."""
    src = packed.contiguous()
    out = torch.empty(*src.shape[:-1], src.shape[-1] * 2, dtype=torch.int8)
    native.lib().lowbit_unpack_int4(src.data_ptr(), src.numel(), out.data_ptr(), threads())
    return out


def quantize_rows(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused native per-row quantizer of a contiguous float32 (M, K) matrix."""
    m, k = x.shape
    codes = torch.empty((m, k), dtype=torch.int8)
    scale = torch.empty(m, dtype=torch.float32)
    bad = native.lib().lowbit_quantize_rows(
        x.data_ptr(), max(k, 1), m, k, qmax, codes.data_ptr(), scale.data_ptr(), threads()
    )
    if bad:
        raise ValueError(f"x holds {bad} non-finite values; clean them first (torch.nan_to_num or clamp)")
    return codes, scale


@dataclass(frozen=True)
class ActQuant:
    """How activation rows are quantized: per-row absmax into [-qmax, qmax] (``static_scale`` 0), or one
    static scale for every row with codes ``clamp(round_half_even(x / static_scale), qlo, qmax)``."""

    qmax: int
    qlo: int = 0
    static_scale: float = 0.0

    def args(self) -> tuple[int, int, float]:
        return self.qmax, self.qlo, self.static_scale


def _act_quant(q: int | ActQuant) -> ActQuant:
    return q if isinstance(q, ActQuant) else ActQuant(int(q))


def quant_pack_a(
    x: torch.Tensor, qmax: int | ActQuant, off: int, kind: int = KIND_U8S8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize float32 rows (contiguous (M, K)) straight into A panels of ``kind`` (u8 with offset ``off``,
    or int16 for ``KIND_S16``); ``qmax``: an int (per-row scales) or an :class:`ActQuant`. Returns (packed,
    scale (M,))."""
    m, k = x.shape
    q = _act_quant(qmax)
    scale = torch.empty(m, dtype=torch.float32)
    if kind == KIND_S16:
        dst = torch.empty(-(-m // MR) * MR * (-(-k // 2) * 2), dtype=torch.int16)
        bad = native.lib().lowbit_quant_pack_s16(
            x.data_ptr(), max(k, 1), m, k, *q.args(), dst.data_ptr(), scale.data_ptr(), threads()
        )
    else:
        dst = torch.empty(-(-m // MR) * MR * (-(-k // 4) * 4), dtype=torch.uint8)
        bad = native.lib().lowbit_quant_pack_u8(
            x.data_ptr(), max(k, 1), m, k, *q.args(), off, dst.data_ptr(), scale.data_ptr(), threads()
        )
    if bad < 0:
        raise MemoryError("lowbit_quant_pack_u8 could not allocate its row buffers")
    if bad:
        raise ValueError(f"x holds {bad} non-finite values; clean them first (torch.nan_to_num or clamp)")
    return dst, scale


# The fused quantize + GEMM parallelises over bands of MR * LB_MCP = 48 rows (csrc/gemm_kernels.c); it is used
# when there are at least 4 bands per thread, so that the dynamic schedule stays balanced.
FUSED_ROWS_PER_THREAD = 4 * 48


def fuses(m: int) -> bool:
    """Whether :func:`gemm_quant` (rather than :func:`quant_pack_a` + :func:`gemm`) suits M rows."""
    return m >= FUSED_ROWS_PER_THREAD * threads()


def gemm_quant(
    kind: int,
    off: int,
    qmax: int | ActQuant,
    x: torch.Tensor,
    b_packed: torch.Tensor,
    colsum: torch.Tensor | None,
    epi: Epilogue,
) -> torch.Tensor:
    """Fused ``quant_pack_a`` + ``gemm``: float32 rows x (contiguous (M, K)) quantized as ``qmax`` says (an
    int: per-row scales into [-qmax, qmax]; or an :class:`ActQuant`) inside the GEMM's parallel region,
    multiplied by packed B into ``epi.out_f32``; returns the row scales (M,). Bit-identical to the two-step
    form (both use the same per-panel quantizer)."""
    m, k = x.shape
    q = _act_quant(qmax)
    n = epi.out_f32.shape[1]
    scale = torch.empty(m, dtype=torch.float32)
    if kind == KIND_S8U4:
        raise ValueError("gemm_quant does not take kind 3 (its A row sums come from packing); use gemm")
    if not (x.dtype == torch.float32 and x.is_contiguous()) or m == 0 or n == 0 or k == 0:
        raise ValueError("gemm_quant needs a non-empty contiguous float32 x; use quant_pack_a + gemm")
    want = packed_nbytes(kind, n, k, NR)
    if not b_packed.is_contiguous() or b_packed.numel() * b_packed.element_size() != want:
        have = b_packed.numel() * b_packed.element_size()
        raise ValueError(f"packed B has {have} bytes, kind {kind} needs {want}")
    if off and (colsum is None or colsum.numel() != n or colsum.dtype != torch.int32):
        raise ValueError(f"offset {off} needs int32 column sums of B with {n} entries")
    out = epi.out_f32
    if out.shape != (m, n) or not out.is_contiguous() or out.dtype != torch.float32:
        raise ValueError(f"output must be contiguous float32 ({m}, {n}), got {tuple(out.shape)}")
    for name, t in (("b_scale", epi.b_scale), ("bias", epi.bias)):
        ok = t is not None and t.dtype == torch.float32 and t.is_contiguous() and t.numel() == n
        if not ok and not (name == "bias" and t is None):
            raise ValueError(f"{name} must be a contiguous float32 vector of {n} entries")
    bad = native.lib().lowbit_gemm_quant(
        kind,
        x.data_ptr(),
        k,
        *q.args(),
        b_packed.data_ptr(),
        m,
        n,
        k,
        off,
        _ptr(colsum if off else None),
        out.data_ptr(),
        out.stride(0),
        scale.data_ptr(),
        epi.b_scale.data_ptr(),
        _ptr(epi.bias),
        threads(),
    )
    if bad < 0:
        raise MemoryError("lowbit_gemm_quant could not allocate its per-thread buffers")
    if bad:
        raise ValueError(f"x holds {bad} non-finite values; clean them first (torch.nan_to_num or clamp)")
    return scale
