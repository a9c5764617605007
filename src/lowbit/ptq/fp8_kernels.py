"""Fused activation rounding for the FP8 and MX layers (:mod:`lowbit.ptq.modules`), in C.

* :func:`round_to_grid` — activations ``x`` to the float32 values of their FP8 codes for a step ``scale`` (one
  for the tensor or one per row): ``quantize(x, fmt, scale=...).codes.float()`` bit for bit, in one pass
  instead of six (divide, clamp, cast to float8, cast back, plus the finiteness check).
* :func:`mx_fake_quantize` — MX activations (float elements): ``quantize(x, fmt).dequantize()`` bit for bit,
  the 32-element blocks' shared scales from torch, the element rounding in the native pass.

torch's float8 <-> float32 casts run at ~2 ns per value on this CPU, which made the emulated FP8 layer
0.37–0.64x the speed of FP32 (its weight codes decode through :func:`lowbit.ptq.weights.code_values`); the
kernel is in ``lowbit/ops/csrc/fp_round.c``. ``backend="reference"`` gives the same values with torch ops
(the definition the tests hold the kernel to).
"""

from __future__ import annotations

import torch

from lowbit.formats import FloatFormat, MXFormat
from lowbit.ops import native
from lowbit.ops.api import resolve_backend
from lowbit.ops.backends import is_native
from lowbit.ops.native_gemm import threads
from lowbit.quantizers import quantize
from lowbit.rounding import round_checked
from lowbit.scales import mx_scale


def _use_native(backend: str) -> bool:
    """The FP8 rounding / decode passes run natively on a native ISA and on ``onednn`` (it has none)."""
    chosen = resolve_backend(backend)
    return is_native(chosen) or (chosen == "onednn" and native.available())


def round_to_grid(
    x: torch.Tensor,
    fmt: FloatFormat,
    scale: torch.Tensor | float,
    *,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """float32 values of ``round_half_even(clamp(x / scale, -fmt.max, fmt.max))`` on ``fmt``'s grid.

    x: float32 (M, K). scale: a positive scalar (Python float or one-element tensor) or M per-row values
    ((M,) or (M, 1)). out: an optional contiguous float32 (M, K) tensor to write into (e.g. a reused
    workspace). NaN or Inf in ``x`` raise ``ValueError``. Any :class:`FloatFormat` with at least one
    mantissa bit runs natively (FP8 E4M3/E5M2, FP6, FP4); others use the reference.
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 2:
        raise TypeError(f"x must be a 2-D float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    if s.numel() not in (1, x.shape[0]):
        raise ValueError(f"scale must hold 1 or {x.shape[0]} (one per row) values, got {s.numel()}")
    if out is not None and (out.dtype != torch.float32 or out.shape != x.shape or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous float32 tensor of shape {tuple(x.shape)}")
    if not _use_native(backend) or fmt.man_bits < 1 or x.numel() == 0:
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(_nonfinite_message(x))
        step = s.reshape(()) if s.numel() == 1 else s.reshape(-1, 1)
        values = round_checked(x / step, fmt, "nearest", None)
        return values if out is None else out.copy_(values)
    x = x.contiguous()
    s = s.contiguous()
    out = torch.empty_like(x) if out is None else out
    bad = native.lib().lowbit_fp_round(
        x.data_ptr(),
        x.shape[0],
        x.shape[1],
        x.shape[1],
        s.data_ptr(),
        int(s.numel() > 1),
        fmt.man_bits,
        2.0**fmt.emin,
        fmt.max,
        out.data_ptr(),
        threads(),
    )
    if bad:
        raise ValueError(_nonfinite_message(x))
    return out


def mx_fake_quantize(x: torch.Tensor, fmt: MXFormat, *, backend: str = "auto") -> torch.Tensor:
    """``quantize(x, fmt).dequantize()`` for float32 (M, K) ``x`` with K a multiple of the block: each block
    of 32 values shares an OCP power-of-two scale and its values round to the element format. MXINT8 (or no
    native library) takes the generic quantizer."""
    if (
        not _use_native(backend)
        or not isinstance(fmt.element, FloatFormat)
        or x.dim() != 2
        or x.dtype != torch.float32
        or x.shape[-1] % fmt.block
        or x.numel() == 0
    ):
        return quantize(x, fmt).dequantize()
    blocks = x.contiguous().reshape(-1, fmt.block)
    scale = mx_scale(blocks, (1,), fmt)  # (blocks, 1), powers of two
    values = round_to_grid(blocks, fmt.element, scale, backend=backend)
    return values.mul_(scale).reshape(x.shape)


def _nonfinite_message(x: torch.Tensor) -> str:
    return (
        f"input holds {int(torch.isnan(x).sum())} NaN and {int(torch.isinf(x).sum())} infinite values; "
        "a quantized layer needs finite activations"
    )
