"""Orthonormal Walsh–Hadamard transforms: the fast block-diagonal ``hadamard`` and ``hadamard_matrix``.

The Sylvester matrix ``H_1 = [1]``, ``H_2n = [[H_n, H_n], [H_n, -H_n]] / sqrt(2)`` is symmetric and
orthogonal, so the transform is its own inverse and preserves norms. Applied block-diagonally along the
reduction dimension of both GEMM operands it leaves the product unchanged, ``(X H)(W H)^T = X W^T``, while
spreading outliers across each block before quantization (Xi et al., docs/SPEC.md §1).
"""

from __future__ import annotations

import math

import torch


def _check_block(name: str, block: object, size: int | None = None) -> int:
    if isinstance(block, bool) or not isinstance(block, int):
        raise TypeError(f"{name} must be an int power of two, got {type(block).__name__} {block!r}")
    if block < 1 or block & (block - 1):
        raise ValueError(f"{name} must be a power of two (1, 2, 4, ..., 1024, ...), got {block}")
    if size is not None and size % block:
        raise ValueError(
            f"{name}={block} does not divide the last dim {size}; pick a power of two that divides it "
            "or pad the last dim"
        )
    return block


def hadamard(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Orthonormal Hadamard transform of each ``block`` of the last dim (default: the whole last dim).

    A radix-2 butterfly, ``log2(block)`` vectorised stages of adds and subtracts: O(n log n), no matrix
    multiply, differentiable, in ``x``'s floating dtype. Self-inverse: ``hadamard(hadamard(x, b), b) == x``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise TypeError(f"x must be a float32/float64 (or half) tensor, got {x.dtype}; use x.float()")
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension (the transform runs over the last dim)")
    size = x.shape[-1]
    block = _check_block("block", size if block is None else block, size)
    if block == 1 or x.numel() == 0:
        return x.clone()
    return _Hadamard.apply(x, block)


def _butterfly(x: torch.Tensor, block: int) -> torch.Tensor:
    """One multiply by 1/sqrt(block) into a fresh buffer, then log2(block) add/subtract stages."""
    src = x.reshape(-1, block) * (1.0 / math.sqrt(block))  # (rows, block); the input is never written
    dst = torch.empty_like(src)
    rows, h = src.shape[0], block // 2
    while h >= 1:
        # Pair the elements whose indices differ in the bit of value h: view (rows, block/(2h), 2, h).
        s4, d4 = src.view(rows, block // (2 * h), 2, h), dst.view(rows, block // (2 * h), 2, h)
        torch.add(s4[:, :, 0], s4[:, :, 1], out=d4[:, :, 0])
        torch.sub(s4[:, :, 0], s4[:, :, 1], out=d4[:, :, 1])
        src, dst = dst, src
        h //= 2
    return src.reshape(x.shape)


class _Hadamard(torch.autograd.Function):
    """The transform is linear, symmetric and orthogonal: the gradient of H x is H applied to the gradient."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, block: int) -> torch.Tensor:
        ctx.block = block
        return _butterfly(x, block)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple:
        # grad_x = H^T grad_out = H grad_out (block-wise); block gets no gradient
        return _Hadamard.apply(grad_out, ctx.block), None


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The explicit normalised ``n x n`` Sylvester Hadamard matrix (for tests and references)."""
    _check_block("n", n)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), dim=1), torch.cat((h, -h), dim=1)), dim=0)
    return (h / math.sqrt(n)).to(dtype)
