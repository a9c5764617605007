"""Public integer-GEMM API: argument checks, backend choice, the CPU kernels behind the ``lowbit::`` ops.

``backend`` on every function is ``"auto"`` (what :func:`backend` reports, or the :func:`use_backend` block's
choice), ``"native"`` (the best native ISA; raises ``RuntimeError`` with the reason when none can run), or a
concrete backend of :mod:`lowbit.ops.backends` (``"avx512-vnni"``, ``"avx2"``, ``"onednn"``, ``"reference"``);
every backend returns identical integers and floats. There is no global switch.
"""

from __future__ import annotations

import torch

from lowbit.formats import INT4_RANGE, INT8_RANGE, IntFormat
from lowbit.ops import _schemas, backends, native, onednn, reference
from lowbit.ops.backends import BACKENDS, BackendReport, use_backend

__all__ = ["BACKENDS", "BackendReport", "use_backend"]
LAYOUTS = ("nt", "nn", "tn")
# A derivation of the ranges, kept as a name: the longest K whose int32 sum cannot overflow for any codes,
# K * lo^2 <= 2**31 - 1 (lo^2 = (-128)^2, (-8)^2 is the largest |a * b|).
MAX_K = {8: (2**31 - 1) // INT8_RANGE.lo**2, 4: (2**31 - 1) // INT4_RANGE.lo**2}


def backend() -> BackendReport:
    """Which backend ``backend="auto"`` runs here (``.chosen``) and why not each other one (``.reasons``)."""
    return backends.report()


def resolve_backend(name: object) -> str:
    """The concrete backend (``"avx512-vnni"``, ``"avx2"``, ``"onednn"``, ``"reference"``) for a ``backend=``
    argument; errors name the fix."""
    return backends.resolve(name)


def _check_operand(name: str, t: object, bits: int) -> torch.Tensor:
    """Validate one code operand and return it as int8 codes (unpacking uint8 int4 nibbles)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int8 codes, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is on {t.device}; lowbit's integer kernels run on the CPU: pass {name}.cpu()"
        )
    if t.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D, got shape {tuple(t.shape)}; reshape batches to (rows, features)"
        )
    if t.dtype == torch.uint8 and bits == 4:
        if native.available():  # same codes either way; the native unpack is ~50x faster
            from lowbit.ops import native_gemm

            return native_gemm.unpack_int4(t)
        return reference.unpack_int4(t)
    if t.dtype != torch.int8:
        extra = " (or uint8 packed nibbles for bits=4)" if bits == 4 else ""
        raise TypeError(f"{name} must hold int8 codes{extra}, got dtype {t.dtype}; quantize it first")
    return t


def check_matmul_args(
    a: object, b: object, bits: object, layout: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an int_matmul call; return the int8 operands. TypeError/ValueError name the fix."""
    if not isinstance(bits, int) or bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    a8 = _check_operand("a", a, bits)
    b8 = _check_operand("b", b, bits)
    m, n, k = _schemas.output_shape(a8, b8, layout)
    k_b = b8.shape[1] if layout == "nt" else b8.shape[0]
    if k != k_b:
        raise ValueError(
            f"reduction dims differ for layout={layout!r}: a gives K={k}, b gives K={k_b} "
            f"(nt: a (M,K), b (N,K); nn: a (M,K), b (K,N); tn: a (K,M), b (K,N))"
        )
    if k > MAX_K[bits]:
        raise ValueError(
            f"K={k} exceeds lowbit.ops.MAX_K[{bits}] = {MAX_K[bits]}, the largest K whose int32 result "
            f"cannot overflow for {bits}-bit codes; split K into chunks and add the partial products in int64"
        )
    return a8, b8


def _check_codes_in_range(a8: torch.Tensor, b8: torch.Tensor, bits: int) -> None:
    lo, hi = IntFormat(bits).code_range
    for name, t in (("a", a8), ("b", b8)):
        if t.numel() == 0 or bits == 8:
            continue
        mn, mx = torch.aminmax(t)
        if int(mn) < lo or int(mx) > hi:
            raise ValueError(
                f"{name} holds codes in [{int(mn)}, {int(mx)}], outside [{lo}, {hi}] for bits={bits}"
            )


def _scale_vector(name: str, s: object, length: int, positive: bool = False) -> torch.Tensor:
    """A scalar or (length,) scale (or bias) as a contiguous float32 (length,) tensor; every entry must be
    finite (a NaN or Inf scale would make every output it touches NaN/Inf), and > 0 with ``positive``."""
    out = _as_vector(name, s, length)
    if not bool(torch.isfinite(out).all()):  # one reduction on the hot path; the count only when raising
        bad = int((~torch.isfinite(out)).sum())
        raise ValueError(f"{name} holds {bad} NaN/Inf values; scales and biases must be finite")
    if positive and bool((out <= 0).any()):
        raise ValueError(
            f"{name} must be > 0 everywhere, got min {float(out.min())}; an all-zero channel takes scale 1"
        )
    return out


def _as_vector(name: str, s: object, length: int) -> torch.Tensor:
    """A scalar or (length,) float32 tensor as a contiguous (length,) tensor (no value checks)."""
    if isinstance(s, bool):
        raise TypeError(f"{name} must be a float or a float32 tensor, got bool")
    if isinstance(s, (int, float)):  # beyond float32's range becomes Inf, refused by the caller
        return torch.tensor(float(s), dtype=torch.float64).to(torch.float32).expand(length).contiguous()
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"{name} must be a float or a float32 tensor, got {type(s).__name__}")
    if s.device.type != "cpu":
        raise ValueError(f"{name} is on {s.device}; pass {name}.cpu()")
    if s.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {s.dtype}; use {name}.float()")
    if s.numel() == 1:
        return s.reshape(1).expand(length).contiguous()
    if s.dim() != 1 or s.shape[0] != length:
        raise ValueError(f"{name} must be a scalar or have shape ({length},), got {tuple(s.shape)}")
    return s.contiguous()


# ---------------------------------------------------------------- CPU kernels of the lowbit:: ops


def _check_out(out: object, shape: tuple[int, int], dtype: torch.dtype) -> None:
    if not isinstance(out, torch.Tensor) or out.dtype != dtype or tuple(out.shape) != shape:
        raise ValueError(f"out must be a {dtype} tensor of shape {shape}")
    if not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError("out must be a contiguous CPU tensor")


def _int_matmul_into(a8, b8, bits: int, layout: str, backend: str, out: torch.Tensor) -> None:
    chosen = resolve_backend(backend)
    if backends.is_native(chosen):
        from lowbit.ops import native_gemm

        native_gemm.int_matmul(a8, b8, bits, layout, out, isa=chosen)
        return
    _check_codes_in_range(a8, b8, bits)
    if chosen == "onednn":
        onednn.int_matmul(a8, b8, layout, out)
        return
    out.copy_(reference.int_matmul(a8, b8, layout))


def _int_matmul_out_cpu(a, b, bits: int, layout: str, backend: str, out: torch.Tensor) -> None:
    a8, b8 = check_matmul_args(a, b, bits, layout)
    m, n, _ = _schemas.output_shape(a8, b8, layout)
    _check_out(out, (m, n), torch.int32)
    _int_matmul_into(a8, b8, bits, layout, backend, out)


def _int_matmul_cpu(a: torch.Tensor, b: torch.Tensor, bits: int, layout: str, backend: str) -> torch.Tensor:
    a8, b8 = check_matmul_args(a, b, bits, layout)
    m, n, _ = _schemas.output_shape(a8, b8, layout)
    out = torch.empty((m, n), dtype=torch.int32)
    _int_matmul_into(a8, b8, bits, layout, backend, out)
    return out


def _scaled_args(a, b, a_scale, b_scale, bias, bits, layout):
    a8, b8 = check_matmul_args(a, b, bits, layout)
    m, n, _ = _schemas.output_shape(a8, b8, layout)
    sa = _scale_vector("a_scale", a_scale, m)
    sb = _scale_vector("b_scale", b_scale, n)
    if bias is not None:
        bias = _scale_vector("bias", bias, n)
    return a8, b8, sa, sb, bias, m, n


def _int_matmul_scaled_into(a8, b8, sa, sb, bias, bits, layout, backend, out) -> None:
    chosen = resolve_backend(backend)
    if backends.is_native(chosen):
        from lowbit.ops import native_gemm

        native_gemm.int_matmul_scaled(a8, b8, sa, sb, bias, bits, layout, out, isa=chosen)
        return
    _check_codes_in_range(a8, b8, bits)
    if chosen == "onednn":
        onednn.int_matmul_scaled(a8, b8, sa, sb, bias, layout, out)
        return
    out.copy_(reference.int_matmul_scaled(a8, b8, sa, sb, bias, layout))


def _int_matmul_scaled_out_cpu(a, b, a_scale, b_scale, bias, bits, layout, backend, out) -> None:
    a8, b8, sa, sb, bias, m, n = _scaled_args(a, b, a_scale, b_scale, bias, bits, layout)
    _check_out(out, (m, n), torch.float32)
    _int_matmul_scaled_into(a8, b8, sa, sb, bias, bits, layout, backend, out)


def _int_matmul_scaled_cpu(a, b, a_scale, b_scale, bias, bits, layout, backend) -> torch.Tensor:
    a8, b8, sa, sb, bias, m, n = _scaled_args(a, b, a_scale, b_scale, bias, bits, layout)
    out = torch.empty((m, n), dtype=torch.float32)
    _int_matmul_scaled_into(a8, b8, sa, sb, bias, bits, layout, backend, out)
    return out


def _quantize_rows_cpu(x: torch.Tensor, bits: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a float32 torch.Tensor, got {type(x).__name__}")
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2:
        raise ValueError(f"x must be a 2-D float32 CPU tensor, got {x.dim()}-D {x.dtype} on {x.device}")
    qmax = IntFormat(bits, narrow=True).qmax  # symmetric: [-(2^(bits-1) - 1), 2^(bits-1) - 1]
    chosen = resolve_backend(backend)
    if backends.is_native(chosen) or (chosen == "onednn" and native.available()):  # same codes, faster
        from lowbit.ops import native_gemm

        return native_gemm.quantize_rows(x.contiguous(), qmax)  # counts NaN/Inf itself and raises the same
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"x holds {bad} non-finite values; clean them first (torch.nan_to_num or clamp)")
    return reference.quantize_rows(x, qmax)


_schemas.LIB.impl("int_matmul", _int_matmul_cpu, "CPU")
_schemas.LIB.impl("int_matmul_out", _int_matmul_out_cpu, "CPU")
_schemas.LIB.impl("int_matmul_scaled", _int_matmul_scaled_cpu, "CPU")
_schemas.LIB.impl("int_matmul_scaled_out", _int_matmul_scaled_out_cpu, "CPU")
_schemas.LIB.impl("quantize_rows", _quantize_rows_cpu, "CPU")


# ---------------------------------------------------------------- public functions


def int_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    bits: int,
    layout: str = "nt",
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Exact int32 product of two int8 code matrices.

    ``layout="nt"``: ``a @ b.T`` with a (M, K), b (N, K) — the forward X·Wᵀ; ``"nn"``: ``a @ b`` with
    b (K, N) — the activation gradient ∇Y·W; ``"tn"``: ``a.T @ b`` with a (K, M), b (K, N) — the weight
    gradient ∇Yᵀ·X.
    Any strides are accepted (the native kernel packs straight from them: no transposed copy is needed).
    Codes: bits=8 any int8 value; bits=4 values in [-8, 7] as int8, or uint8 packed nibbles (last dim).
    Exact for every code in range while K <= ``MAX_K[bits]`` (131071 for 8-bit, 33554431 for 4-bit);
    larger K raises ``ValueError`` (split K and sum the partial products).
    ``out`` (int32 (M, N), contiguous) is written in place and returned: reusing it avoids the page faults of
    a fresh output (~20 ms for 4096 x 3072).
    """
    _check_types(bits, layout, backend, a=a, b=b, out=out)
    if out is None:
        return torch.ops.lowbit.int_matmul(a, b, bits, layout, backend)
    torch.ops.lowbit.int_matmul_out(a, b, bits, layout, backend, out)
    return out


def _check_types(
    bits: object = 8, layout: object = "nt", backend: object = "auto", **tensors: object
) -> None:
    """TypeError / ValueError naming the argument before the op's schema would reject it with a less helpful
    message (the schema wants exact Python types)."""
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (4, 8):
        raise ValueError(f"bits must be the int 4 or 8, got {bits!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(backend, str) or backend not in backends.BACKENDS:
        raise ValueError(f"backend must be one of {backends.BACKENDS}, got {backend!r}")


def int_matmul_scaled(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor | float,
    b_scale: torch.Tensor | float,
    bias: torch.Tensor | None = None,
    *,
    bits: int,
    layout: str = "nt",
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``out[i, j] = float32(acc[i, j]) * a_scale[i] * b_scale[j] + bias[j]`` in float32, fused with the GEMM.

    ``acc`` is :func:`int_matmul` (same layouts, codes and K limit). Scales are Python floats, one-element
    tensors or float32 vectors of length M (``a_scale``) and N (``b_scale``); ``bias``: None or float32 (N,).
    ``out`` (float32 (M, N), contiguous) is written in place and returned: reuse it across calls to avoid page
    faults on fresh outputs (~25 ms for 50 MB).
    """
    _check_types(bits, layout, backend, a=a, b=b, bias=bias, out=out)
    if out is None:
        return torch.ops.lowbit.int_matmul_scaled(
            a, b, _as_tensor(a_scale), _as_tensor(b_scale), bias, bits, layout, backend
        )
    torch.ops.lowbit.int_matmul_scaled_out(
        a, b, _as_tensor(a_scale), _as_tensor(b_scale), bias, bits, layout, backend, out
    )
    return out


def _as_tensor(s: torch.Tensor | float) -> torch.Tensor:
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        return torch.tensor(float(s), dtype=torch.float32)
    return s  # validated by the op


def quantize_rows(x: torch.Tensor, bits: int, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Fused per-row absmax symmetric quantizer: ``x ≈ codes * scale[:, None]``.

    x: float32 (M, K). Returns int8 codes in [-(2**(bits-1) - 1), 2**(bits-1) - 1] (bits in 2..8; e.g.
    [-127, 127] for 8, [-7, 7] for 4, [-63, 63] for 7 — the 7-bit range lets 8-bit GEMMs take the fastest
    native path) and float32 scale (M,) = max(absmax / qmax, 2**-126), 1 for an all-zero row. Rounding is
    half-to-even of ``x / scale``. Non-finite input raises ``ValueError``.
    """
    _check_types(backend=backend, x=x)
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    codes, scale = torch.ops.lowbit.quantize_rows(x, bits, backend)
    return codes, scale
