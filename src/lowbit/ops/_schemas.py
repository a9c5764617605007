"""Every ``lowbit::`` op schema and its fake (meta) implementation, in one place.

The CPU kernels are registered in ``lowbit.ops.api``; the op's ``backend`` argument picks the backend
(``lowbit.ops.backends``: ``"auto"``, ``"native"``, ``"avx512-vnni"``, ``"avx2"``, ``"onednn"``,
``"reference"``). The fake implementations only
compute output shapes and dtypes, so the ops trace under ``torch.compile`` and FakeTensor mode.

Ops (``layout``: ``"nt"`` a (M,K) @ b (N,K)ᵀ; ``"nn"`` a (M,K) @ b (K,N); ``"tn"`` a (K,M)ᵀ @ b (K,N)):

* ``int_matmul(a, b, bits, layout, backend) -> int32 (M, N)``; a, b int8 codes (bits 4 or 8).
* ``int_matmul_out(a, b, bits, layout, backend, out)``: the same, written into ``out`` (int32 (M, N)).
* ``int_matmul_scaled(a, b, a_scale, b_scale, bias, bits, layout, backend) -> float32 (M, N)``.
* ``int_matmul_scaled_out(..., out)``: the same, written into ``out`` (float32 (M, N), contiguous).
* ``quantize_rows(x, bits, backend) -> (int8 codes (M, K), float32 scale (M,))``.
"""

from __future__ import annotations

import torch

LIB = torch.library.Library("lowbit", "DEF")  # the one definition site of the namespace

LIB.define("int_matmul(Tensor a, Tensor b, int bits, str layout, str backend) -> Tensor")
LIB.define("int_matmul_out(Tensor a, Tensor b, int bits, str layout, str backend, Tensor(a!) out) -> ()")
LIB.define(
    "int_matmul_scaled(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, Tensor? bias, int bits, "
    "str layout, str backend) -> Tensor"
)
LIB.define(
    "int_matmul_scaled_out(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, Tensor? bias, int bits, "
    "str layout, str backend, Tensor(a!) out) -> ()"
)
LIB.define("quantize_rows(Tensor x, int bits, str backend) -> (Tensor, Tensor)")


def output_shape(a: torch.Tensor, b: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(M, N, K) of the product for the given layout; unpacked int4 doubles the last dim of uint8 input."""
    a_rows, a_cols = a.shape[0], a.shape[1] * (2 if a.dtype == torch.uint8 else 1)
    b_rows, b_cols = b.shape[0], b.shape[1] * (2 if b.dtype == torch.uint8 else 1)
    if layout == "nt":
        return a_rows, b_rows, a_cols
    if layout == "nn":
        return a_rows, b_cols, a_cols
    return a_cols, b_cols, a_rows  # "tn"


def _check_common(a: torch.Tensor, b: torch.Tensor, bits: int, layout: str) -> tuple[int, int]:
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "a and b must be 2-D")
    torch._check(bits in (4, 8), lambda: f"bits must be 4 or 8, got {bits}")
    torch._check(layout in ("nt", "nn", "tn"), lambda: f"layout must be nt, nn or tn, got {layout!r}")
    m, n, _ = output_shape(a, b, layout)
    return m, n


@torch.library.register_fake("lowbit::int_matmul")
def _int_matmul_fake(a: torch.Tensor, b: torch.Tensor, bits: int, layout: str, backend: str) -> torch.Tensor:
    m, n = _check_common(a, b, bits, layout)
    return a.new_empty((m, n), dtype=torch.int32)


@torch.library.register_fake("lowbit::int_matmul_out")
def _int_matmul_out_fake(
    a: torch.Tensor, b: torch.Tensor, bits: int, layout: str, backend: str, out: torch.Tensor
) -> None:
    m, n = _check_common(a, b, bits, layout)
    torch._check(tuple(out.shape) == (m, n), lambda: f"out must have shape {(m, n)}, got {tuple(out.shape)}")


@torch.library.register_fake("lowbit::int_matmul_scaled")
def _int_matmul_scaled_fake(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    layout: str,
    backend: str,
) -> torch.Tensor:
    m, n = _check_common(a, b, bits, layout)
    return a.new_empty((m, n), dtype=torch.float32)


@torch.library.register_fake("lowbit::int_matmul_scaled_out")
def _int_matmul_scaled_out_fake(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    layout: str,
    backend: str,
    out: torch.Tensor,
) -> None:
    m, n = _check_common(a, b, bits, layout)
    torch._check(tuple(out.shape) == (m, n), lambda: f"out must have shape {(m, n)}, got {tuple(out.shape)}")


@torch.library.register_fake("lowbit::quantize_rows")
def _quantize_rows_fake(x: torch.Tensor, bits: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch._check(x.dim() == 2, lambda: "x must be 2-D (rows, features)")
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],), dtype=torch.float32)
