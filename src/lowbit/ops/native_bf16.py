"""Kind 5, the bf16 GEMM of FP8 layers (``vdpbf16ps``, AVX512-BF16): float32 operands whose values are
bf16-exact (FP8 grid values are) packed into bf16 panels and multiplied, with float32 sums, by the blocked
native driver :func:`lowbit.ops.native_gemm.gemm`.
"""

from __future__ import annotations

import functools

import torch

from lowbit.ops import native, native_gemm
from lowbit.ops.native_gemm import KIND_BF16, MR, Epilogue, gemm, threads


def has_bf16_dot() -> bool:
    """Whether kind 5 (``vdpbf16ps``, AVX512-BF16) can run here: the library loads and the CPU has it."""
    return native.available() and _cpu_has_bf16_dot()


@functools.cache
def _cpu_has_bf16_dot() -> bool:
    """CPUID (and the OS's zmm state) for AVX512-BF16, asked once per process."""
    return bool(native.lib().lowbit_cpu_has_avx512bf16())


def pack_bf16(t: torch.Tensor, panel: int, scratch: str | None = None) -> torch.Tensor:
    """Kind 5 operand: float32 rows (R, K) whose values are bf16-exact (FP8 grid values are) -> bf16 panels of
    ``panel`` rows (MR for A, NR for B), as int16 storage of the bf16 bits."""
    if t.dtype != torch.float32 or t.dim() != 2:
        raise ValueError(f"pack_bf16 takes a 2-D float32 tensor, got {t.dim()}-D {t.dtype}")
    rows, k = t.shape
    size = -(-rows // panel) * panel * (-(-k // 2) * 2)
    if scratch is None:
        dst = torch.empty(size, dtype=torch.int16)
    else:  # a per-thread buffer (native_gemm.scratch), as the integer kinds' one-off panels
        dst = native_gemm.scratch(scratch, size, torch.int16)
    lib = native.lib()
    lib.lowbit_pack_bf16(t.data_ptr(), t.stride(0), t.stride(1), rows, k, panel, dst.data_ptr(), threads())
    return dst


def bf16_matmul_scaled(
    a_vals: torch.Tensor,
    b_packed: torch.Tensor,
    n: int,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """``out = (a_vals · Bᵀ) * a_scale[i] * b_scale[j] (+ bias[j])`` with the products on ``vdpbf16ps``:
    ``a_vals`` float32 (M, K) of bf16-exact values, ``b_packed`` from ``pack_bf16(w_vals, NR)``; each sum is
    float32, sequential over k in pairs. ``out`` float32 (M, N) contiguous."""
    m, k = a_vals.shape
    a_packed = pack_bf16(a_vals, MR, scratch="a-bf16")
    epi = Epilogue(out_f32=out, a_scale=a_scale, b_scale=b_scale, bias=bias)
    gemm(KIND_BF16, 0, a_packed, b_packed, None, m, n, k, epi)
