"""Fused requantization of int32 accumulators: native C (``ops/csrc/int_requant.c``) + PyTorch reference.

Both backends return identical integers (tested bit-exactly). ``backend="auto"`` uses native when
``lowbit.ops.backend()`` reports native kernels, else the reference (``lowbit.ops.why_not_native`` says why).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from lowbit.ops import native, native_gemm

_P = ctypes.c_void_p
_L = ctypes.c_long
_I = ctypes.c_int


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = native.lib()
    lib.lowbit_int_requant.argtypes = [_P, _L, _L, _L, _P, _P, _P, _I, _I, _P, _L, _I]
    lib.lowbit_int_requant.restype = None
    lib.lowbit_int_requant_rows.argtypes = [_P, _L, _L, _L, _P, _I, _P, _L, _I]
    lib.lowbit_int_requant_rows.restype = None
    return lib


def _use_native(backend: str) -> bool:
    if backend == "reference":
        return False
    if backend == "native":
        native.lib()  # raises with the reason
        return True
    if backend == "auto":
        return native.available()
    raise ValueError(f"backend must be 'auto', 'native' or 'reference', got {backend!r}")


def _dyadic(x: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    m64, s64 = mult.to(torch.int64), shift.to(torch.int64)
    half = torch.where(s64 > 0, torch.ones_like(s64) << (s64 - 1).clamp_min(0), torch.zeros_like(s64))
    return (x.to(torch.int64) * m64 + half) >> s64


def _check_2d(acc: torch.Tensor, n_channels: int) -> None:
    if acc.dtype != torch.int32 or acc.dim() != 2 or acc.stride(1) != 1:
        raise ValueError(f"acc must be 2-D int32 with unit column stride, got {acc.dtype} {tuple(acc.shape)}")
    if acc.shape[1] != n_channels:
        raise ValueError(f"acc has {acc.shape[1]} columns but the multipliers have {n_channels}")


def requant_channels(
    acc: torch.Tensor,
    bias: torch.Tensor | None,
    mult: torch.Tensor,
    shift: torch.Tensor,
    *,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``y[i, j] = round_half_up((acc[i, j] + bias[j]) · mult[j] / 2^shift[j])`` (ReLU first if asked).

    Without ``residual``: returns int8 (M, N) saturated to [-127, 127]. With ``residual`` (int32 (M, N),
    contiguous): adds y into it in place (saturating to int32) and returns it. ``bias``/``mult``/``shift``
    are int32 (N,).
    """
    _check_2d(acc, mult.numel())
    for name, t in (("bias", bias), ("mult", mult), ("shift", shift)):
        if t is not None and (t.dtype != torch.int32 or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous int32 vector, got {t.dtype}")
    m, n = acc.shape
    if residual is not None and (
        residual.dtype != torch.int32 or residual.shape != acc.shape or not residual.is_contiguous()
    ):
        raise ValueError("residual must be a contiguous int32 tensor shaped like acc")
    if _use_native(backend):
        out = residual if residual is not None else torch.empty(m, n, dtype=torch.int8)
        _lib().lowbit_int_requant(
            acc.data_ptr(),
            m,
            n,
            acc.stride(0),
            bias.data_ptr() if bias is not None else None,
            mult.data_ptr(),
            shift.data_ptr(),
            int(relu),
            0 if residual is None else 1,
            out.data_ptr(),
            n,
            native_gemm.threads(),
        )
        return out
    x = acc.to(torch.int64)
    if bias is not None:
        x = x + bias
    if relu:
        x = x.clamp_min(0)
    y = _dyadic(x, mult, shift)
    if residual is None:
        return y.clamp(-127, 127).to(torch.int8)
    residual.copy_((y + residual).clamp(-(2**31), 2**31 - 1).to(torch.int32))
    return residual


def requant_rows(
    acc: torch.Tensor, row_mult: torch.Tensor, shift: int, out: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """``out[i, j] = clamp(round_half_up(acc[i, j] · row_mult[i] / 2^shift), ±127)`` into int8 ``out``.

    ``acc`` int32 (M, N) with unit column stride; ``row_mult`` int64 (M,); ``out`` int8 (M, N), unit column
    stride (may be a strided view, e.g. one head's columns of a (T, C) activation).
    """
    m, n = acc.shape
    _check_2d(acc, n)
    if row_mult.dtype != torch.int64 or row_mult.numel() != m or not row_mult.is_contiguous():
        raise ValueError("row_mult must be a contiguous int64 vector with one entry per row")
    if out.dtype != torch.int8 or out.shape != acc.shape or out.stride(1) != 1:
        raise ValueError("out must be int8, shaped like acc, with unit column stride")
    if _use_native(backend):
        _lib().lowbit_int_requant_rows(
            acc.data_ptr(),
            m,
            n,
            acc.stride(0),
            row_mult.data_ptr(),
            shift,
            out.data_ptr(),
            out.stride(0),
            native_gemm.threads(),
        )
        return out
    sh = torch.tensor(shift, dtype=torch.int64)
    out.copy_(_dyadic(acc, row_mult.reshape(m, 1), sh).clamp(-127, 127).to(torch.int8))
    return out
