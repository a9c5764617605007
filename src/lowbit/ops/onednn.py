"""The ``onednn`` backend: torch's own exact int8 product (``torch._int_mm``, int32 out) inside lowbit's
quantization and epilogue.

``torch._int_mm`` accumulates int8 x int8 in int32, exactly, so this backend returns the same integers as
every other one; the float epilogue is the reference's, operation by operation in float32 (``acc *
a_scale[i] * b_scale[j] + bias[j]``), so floats match too. On CPUs where oneDNN has VNNI / AMX kernels it is
fast; elsewhere ``torch._int_mm`` is a slow reference loop (``lowbit.ops.backends`` never picks it there).
"""

from __future__ import annotations

import torch

from lowbit.ops import reference


def int_matmul(a8: torch.Tensor, b8: torch.Tensor, layout: str, out: torch.Tensor) -> None:
    """Exact int32 ``a8 ∘ b8`` (layout as in ``lowbit.ops.int_matmul``) into ``out`` (int32 (M, N))."""
    a2, b_nk = reference.as_nt(a8, b8, layout)  # views: a2 (M, K), b_nk (N, K)
    b2 = b_nk.t()
    if 0 in (a2.shape[0], a2.shape[1], b2.shape[1]):
        out.zero_()
        return
    if a2.shape[1] == 1:
        # torch 2.13's CPU _int_mm reads a (1, N) right operand whose strides are degenerate (a view of an
        # (N, 1) tensor, stride (1, 1)) wrongly; give it operands with the canonical row-major strides.
        a2 = torch.empty(a2.shape, dtype=torch.int8).copy_(a2)
        b2 = torch.empty(b2.shape, dtype=torch.int8).copy_(b2)
    torch._int_mm(a2, b2, out=out)


def int_matmul_scaled(
    a8: torch.Tensor,
    b8: torch.Tensor,
    sa: torch.Tensor,
    sb: torch.Tensor,
    bias: torch.Tensor | None,
    layout: str,
    out: torch.Tensor,
) -> None:
    """``float32(acc) * sa[i] * sb[j] (+ bias[j])`` into ``out`` (float32 (M, N)), as the reference does."""
    acc = torch.empty(out.shape, dtype=torch.int32)
    int_matmul(a8, b8, layout, acc)
    reference.dequantize(acc, sa, sb, bias, out=out)
