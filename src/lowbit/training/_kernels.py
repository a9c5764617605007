"""ctypes bindings of the fused training kernels (``ops/csrc/train_*.c``, in ``lowbit/ops/_native``).

:func:`native_reason` is ``""`` when the kernels are usable, else why not (the library is missing, lacks the
symbols, or the CPU lacks AVX2) — the layer then runs the bit-identical PyTorch path, and
``lowbit.training.kernel_backend()`` reports which one runs and why.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from lowbit.ops.native import lib as _ops_lib
from lowbit.ops.native import why_not_native


def _lib() -> tuple[ctypes.CDLL | None, str]:
    """(library, "") or (None, why not); the signatures are declared once, in ``lowbit.ops.native``."""
    reason = why_not_native()
    return (None, reason) if reason else (_ops_lib(), "")


def _profiled(fn):
    """Label the kernel call ``lowbit_train::<name>`` in torch.profiler traces (lowbit bench train-step)."""
    label = f"lowbit_train::{fn.__name__.strip('_')}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    return wrapper


def _threads() -> int:
    """Threads for one kernel call: torch's intra-op setting, read per call (as lowbit.ops does)."""
    return max(1, torch.get_num_threads())


def native_reason() -> str:
    """Empty when the fused training kernels run; otherwise the reason they do not."""
    return _lib()[1]


def _check(x: torch.Tensor, name: str) -> None:
    if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() != 2 or x.device.type != "cpu":
        raise ValueError(
            f"{name} must be a contiguous 2-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)}"
        )


@_profiled
def hq_quantize(
    x: torch.Tensor, block: int, step: float, *, with_dq: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Native block FWHT + LSQ INT4 quantize: ``(codes int8, dq_ds float32)``, identical to the torch path.

    ``with_dq=False`` skips ``dq_ds`` (returns None): :func:`hq_grad_x_` recomputes it from ``x``.
    """
    lib, reason = _lib()
    if lib is None:
        raise RuntimeError(f"native training kernels unavailable: {reason}")
    _check(x, "x")
    codes = torch.empty(x.shape, dtype=torch.int8)
    dq_ds = torch.empty(x.shape, dtype=torch.float32) if with_dq else None
    if lib.lowbit_train_hq_quant(
        x.data_ptr(),
        x.shape[0],
        x.shape[1],
        block,
        step,
        codes.data_ptr(),
        None if dq_ds is None else dq_ds.data_ptr(),
        _threads(),
    ):
        raise ValueError(f"block {block} must be a power of two <= 4096 dividing {x.shape[1]}")
    return codes, dq_ds


@_profiled
def hq_grad_x_(grad: torch.Tensor, x: torch.Tensor, step: float, block: int) -> float:
    """In place ``grad <- H(grad · clip_mask)``; returns ``Σ grad · dq_ds`` (before masking, double sum), with
    ``dq_ds`` (and the clip mask) recomputed from the forward input ``x`` and ``step``: the same values
    :func:`hq_quantize` gives."""
    lib, reason = _lib()
    if lib is None:
        raise RuntimeError(f"native training kernels unavailable: {reason}")
    _check(grad, "grad")
    _check(x, "x")
    if grad.shape != x.shape:
        raise ValueError(f"grad {tuple(grad.shape)} and x {tuple(x.shape)} differ in shape")
    total = ctypes.c_double()
    rc = lib.lowbit_train_hq_grad_x(
        grad.data_ptr(),
        x.data_ptr(),
        step,
        x.shape[0],
        x.shape[1],
        block,
        ctypes.addressof(total),
        _threads(),
    )
    if rc == -2:
        raise MemoryError("lowbit_train_hq_grad_x could not allocate its per-chunk sums")
    if rc:
        raise ValueError(f"block {block} must be a power of two <= 4096 dividing {x.shape[1]}")
    return total.value


@_profiled
def absmax(g: torch.Tensor) -> float:
    """max |g| of a contiguous float32 tensor (one native pass); ValueError on non-finite entries."""
    lib, reason = _lib()
    if lib is None:
        raise RuntimeError(f"native training kernels unavailable: {reason}")
    if g.dtype != torch.float32 or not g.is_contiguous():
        raise ValueError(f"g must be a contiguous float32 tensor, got {g.dtype}")
    out = ctypes.c_float()
    bad = lib.lowbit_train_absmax(g.data_ptr(), g.numel(), ctypes.addressof(out), _threads())
    if bad:
        raise ValueError(f"the gradient holds {bad} non-finite values; cannot bit-split")
    return out.value


@_profiled
def split_merged_native(g: torch.Tensor, scale: float, seed: int, stochastic: bool) -> torch.Tensor:
    """Merged bit-split code ``round(g · scale)`` (stochastic: hash noise of ``seed``), int8 in [-98, 98]."""
    lib, reason = _lib()
    if lib is None:
        raise RuntimeError(f"native training kernels unavailable: {reason}")
    if g.dtype != torch.float32 or not g.is_contiguous():
        raise ValueError(f"g must be a contiguous float32 tensor, got {g.dtype}")
    out = torch.empty(g.shape, dtype=torch.int8)
    lib.lowbit_train_split_merged(
        g.data_ptr(), g.numel(), scale, seed, int(stochastic), out.data_ptr(), _threads()
    )
    return out


@_profiled
def transpose_i8(codes: torch.Tensor) -> torch.Tensor:
    """Contiguous transposed copy of a 2-D int8 CPU tensor (native blocked transpose); the same bytes as
    ``codes.t().contiguous()``, several times faster."""
    lib, reason = _lib()
    if lib is None:
        raise RuntimeError(f"native training kernels unavailable: {reason}")
    if codes.dtype != torch.int8 or codes.dim() != 2 or codes.device.type != "cpu":
        raise ValueError(f"codes must be a 2-D int8 CPU tensor, got {codes.dtype} {tuple(codes.shape)}")
    src = codes.contiguous()
    out = torch.empty((src.shape[1], src.shape[0]), dtype=torch.int8)
    lib.lowbit_train_transpose_i8(src.data_ptr(), src.shape[0], src.shape[1], out.data_ptr(), _threads())
    return out
