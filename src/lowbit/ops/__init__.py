"""lowbit's integer engine: exact INT8/INT4 matrix products on the CPU (native kernels + PyTorch reference).

Public API (see each docstring):

* :func:`int_matmul` — exact int32 product of int8/int4 code matrices, layouts ``"nt"``, ``"nn"``, ``"tn"``.
* :func:`int_matmul_scaled` — the same with the dequantization epilogue fused (per-row/column scales + bias)
  straight into float32, optionally into a reused ``out`` buffer.
* :func:`quantize_rows` — fused per-row absmax symmetric quantizer (codes int8 + float32 scale per row).
* :class:`PackedWeight` / :func:`pack_weight` / :func:`linear` — a weight packed once for repeated use, and
  the fused linear ``x (float32) -> quantize rows -> integer GEMM -> dequantize + bias`` on it (per-row
  activation scales, or one static scale with ``act_scale=`` as ``lowbit.ptq``'s calibrated INT8 layers use).
* :func:`backend` — the backend ``"auto"`` runs on this machine and why not each other one;
  :func:`use_backend` — a context manager that makes ``"auto"`` run a chosen backend (tests, benchmarks).

Every op is also a ``torch.library`` custom op (``torch.ops.lowbit.*``) with a fake implementation, so it
traces under ``torch.compile`` (``linear`` is plain Python around them). Every function takes ``backend=``:
``"auto"``, ``"native"`` or one of :data:`BACKENDS` (``lowbit.ops.backends``: ``avx512-vnni``, ``avx2``,
``onednn``, ``reference``; ``amx`` is listed, not shipped); all return identical integers and floats.

Native paths (``csrc/gemm.h``): on ``avx512-vnni`` every product is ``vpdpbusd`` (u8 x s8, exact for every
int8 code). On ``avx2`` (the rule is in docs/DESIGN.md "INT8 fast-path rule"): 4-bit codes use u4 x s4
``vpmaddubsw`` with int16 accumulation widened to int32 every 512 k; 8-bit codes use u8 x s8 ``vpmaddubsw``
when one operand is 7-bit (b in [-64, 64], e.g. ``lowbit.ptq``'s per-channel INT8 weights in [-63, 63], or a
in [-64, 63], e.g. ``quantize_rows(x, 7)``) and an exact int16 ``vpmaddwd`` kernel otherwise (~0.8x the
speed). The engine checks the code ranges itself on every call, so every int8 code is exact; every path is
exact for K <= ``MAX_K[bits]`` and larger K raises ``ValueError``. Reuse ``out=`` buffers and
:class:`PackedWeight` in hot loops: fresh 50 MB outputs cost ~20 ms of page faults.
"""

from __future__ import annotations

from lowbit.ops.api import (
    BACKENDS,
    LAYOUTS,
    MAX_K,
    BackendReport,
    backend,
    int_matmul,
    int_matmul_scaled,
    quantize_rows,
    use_backend,
)
from lowbit.ops.linear import PackedWeight, linear, pack_weight
from lowbit.ops.native import why_not_native

__all__ = [
    "BACKENDS",
    "LAYOUTS",
    "MAX_K",
    "BackendReport",
    "PackedWeight",
    "backend",
    "int_matmul",
    "int_matmul_scaled",
    "linear",
    "pack_weight",
    "quantize_rows",
    "use_backend",
    "why_not_native",
]
