"""Orthonormal Walsh–Hadamard transforms: the fast block-diagonal ``hadamard`` and ``hadamard_matrix``.

The Sylvester matrix ``H_1 = [1]``, ``H_2n = [[H_n, H_n], [H_n, -H_n]] / sqrt(2)`` is symmetric and
orthogonal, so the transform is its own inverse and preserves norms. Applied block-diagonally along the
reduction dimension of both GEMM operands it leaves the product unchanged, ``(X H)(W H)^T = X W^T``, while
spreading outliers across each block before quantization (Xi et al., SPEC §1).
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
    if block == 1:
        return x.clone()
    y = x.reshape(-1, block)  # (rows, block)
    rows = y.shape[0]
    h = block // 2
    # Stage s pairs elements whose indices differ in one bit: view (rows, block/(2h), 2, h) and butterfly.
    while h >= 1:
        pairs = y.reshape(rows, block // (2 * h), 2, h)
        top, bottom = pairs[:, :, 0, :], pairs[:, :, 1, :]
        y = torch.stack((top + bottom, top - bottom), dim=2)
        h //= 2
    return (y * (1.0 / math.sqrt(block))).reshape(x.shape)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The explicit normalised ``n x n`` Sylvester Hadamard matrix (for tests and references)."""
    _check_block("n", n)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), dim=1), torch.cat((h, -h), dim=1)), dim=0)
    return (h / math.sqrt(n)).to(dtype)
