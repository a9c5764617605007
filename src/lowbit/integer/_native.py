"""What every native integer kernel wrapper shares: the library handle, the thread rule, the backend test."""

from __future__ import annotations

import ctypes

from lowbit.ops import backends, native, native_gemm

#: Elements below which a native call runs single-threaded.
SMALL_WORK = 1 << 16


def _lib() -> ctypes.CDLL:
    """The native library (its signatures are declared once, in ``lowbit.ops.native``)."""
    return native.lib()


def _threads(work: int) -> int:
    """One thread for small calls (an OpenMP team costs more than it saves below ~64k elements)."""
    return native_gemm.threads() if work >= SMALL_WORK else 1


def native_kernels_enabled(backend: str) -> bool:
    """Whether the native integer kernels run for ``backend`` (resolved by ``lowbit.ops.backends``): on a
    native ISA, and on ``onednn`` when they load (oneDNN has no integer LayerNorm / softmax / requant)."""
    chosen = backends.resolve(backend)
    return backends.is_native(chosen) or (chosen == "onednn" and native.available())
