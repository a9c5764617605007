"""Pure-PyTorch integer GEMM and row quantizer: the test oracle and the fallback on CPUs without AVX2.

Every function here returns exactly the numbers the native kernels return:

* integer products are exact. The products of two codes are integers of magnitude <= 2**14 and every partial
  sum is an integer of magnitude <= K * 2**14, so a float64 matrix product is exact (every intermediate is an
  integer below 2**53) for any K < 2**39 whatever order the BLAS sums in; the front end (``lowbit.ops.api``)
  additionally limits K so that the int32 result cannot overflow.
* the float epilogue is defined operation by operation in float32, in this order and without fused
  multiply-add: ``out = float32(acc) * a_scale[i] * b_scale[j] + bias[j]``.
* the row quantizer is ``scale = max(absmax / qmax, 2**-126)`` (1 for an all-zero row) and
  ``codes = clamp(round_half_even(x / scale), -qmax, qmax)`` in float32: lowbit's one symmetric quantizer,
  :func:`lowbit.quantizers.quantize_symmetric` with its default zero/floor policy, along ``dim=1``.

Inputs are assumed validated by ``lowbit.ops.api``; these functions do not re-check them.
"""

from __future__ import annotations

import torch

from lowbit.quantizers import quantize_symmetric


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Unpack uint8 nibbles along the last dim into int8 codes in [-8, 7] (element 2j = low nibble)."""
    p = packed.to(torch.int16)
    lo = p & 0xF
    hi = (p >> 4) & 0xF
    codes = torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    return torch.where(codes >= 8, codes - 16, codes).to(torch.int8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack int8 codes in [-8, 7] (even last dim) into uint8 nibbles, element 2j in the low nibble."""
    c = codes.to(torch.int16) & 0xF
    lo, hi = c[..., 0::2], c[..., 1::2]
    return (lo | (hi << 4)).to(torch.uint8)


def as_nt(a: torch.Tensor, b: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (no copies) so that the product is ``a2 @ b2.T`` with a2: (M, K), b2: (N, K)."""
    if layout == "nt":
        return a, b
    if layout == "nn":
        return a, b.t()
    return a.t(), b.t()  # "tn"


def int_matmul(a: torch.Tensor, b: torch.Tensor, layout: str = "nt") -> torch.Tensor:
    """Exact int32 product of int8 code matrices (see module docstring for why float64 is exact)."""
    a2, b2 = as_nt(a, b, layout)
    acc = a2.to(torch.float64) @ b2.to(torch.float64).t()
    return acc.to(torch.int32)


def int_matmul_scaled(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    layout: str = "nt",
) -> torch.Tensor:
    """``float32(acc) * a_scale[i] * b_scale[j] + bias[j]`` with a_scale: (M,), b_scale: (N,) float32."""
    return dequantize(int_matmul(a, b, layout), a_scale, b_scale, bias)


def dequantize(
    acc: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The epilogue every backend matches: ``float32(acc) * a_scale[i] * b_scale[j] (+ bias[j])``, one float32
    rounding per operation, in that order (into ``out`` when given: float32, acc's shape)."""
    out = torch.mul(
        acc, a_scale.reshape(-1, 1), out=out
    )  # int32 * float32: float32(acc) * a_scale, rounded once
    out.mul_(b_scale.reshape(1, -1))
    if bias is not None:
        out.add_(bias.reshape(1, -1))
    return out


def quantize_rows(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row absmax symmetric quantization of a float32 (M, K) matrix to codes in [-qmax, qmax]."""
    return quantize_symmetric(x, qmax, dim=1)  # the default policy: floor 2**-126, an all-zero row scale 1


def bf16_dot_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` (float32 (M, K) x (N, K) of bf16-exact values) summed as ``vdpbf16ps`` sums: per output,
    one float32 chain over k in pairs, each pair adding its odd element's product, then its even element's
    (exact products, a float32 rounding after each add; the order Intel documents and Zen 4 follows)."""
    m, k = a.shape
    kp = k + k % 2
    a2 = torch.nn.functional.pad(a, (0, kp - k))
    b2 = torch.nn.functional.pad(b, (0, kp - k))
    acc = torch.zeros(m, b.shape[0], dtype=torch.float32)
    for i in range(0, kp, 2):
        acc = acc + a2[:, i + 1 : i + 2] * b2[:, i + 1].reshape(1, -1)
        acc = acc + a2[:, i : i + 1] * b2[:, i].reshape(1, -1)
    return acc
