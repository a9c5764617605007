"""Process-level tuning for lowbit's commands: keep freed large buffers for reuse instead of unmapping them.

glibc's malloc serves every allocation above 32 MB (and smaller ones, under its dynamic threshold) with a
fresh ``mmap`` and returns it to the OS on ``free``; the next step's buffer of the same size is mapped again
and every page faults in. A Transformer training step allocates and frees hundreds of MB of activations
(attention scores, GELU inputs, gradients), so on this machine the page faults cost about a second of every
training step, FP32 or INT4 alike (``lowbit bench train-step --system-malloc`` vs without; figures in
``results/train_step/README.md``). PyTorch's CPU tuning guides recommend jemalloc or tcmalloc for this;
:func:`keep_freed_memory` gets the same effect from glibc itself: ``mallopt(M_MMAP_MAX, 0)`` (every block
from the heap) and a 2 GB trim threshold (freed memory stays in the process). The cost: the process keeps
its peak memory until it exits.

The ``lowbit`` command applies it at start (``lowbit --system-malloc ...`` opts out); the library never does
on import — call :func:`keep_freed_memory` in your own training script if you want it.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GB of free memory at the heap's top


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return None


def keep_freed_memory(keep: bool = True) -> bool:
    """Serve large allocations from malloc's heap and keep freed memory for reuse (``keep=False``: glibc's
    defaults again, which return large freed blocks to the OS). Returns False when the C library is not
    glibc, True when the setting was applied."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mmap_max, trim = (0, KEEP_TRIM_THRESHOLD) if keep else (DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD)
    return bool(mallopt(M_MMAP_MAX, mmap_max)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
