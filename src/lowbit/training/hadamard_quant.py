"""The Hadamard quantizer (HQ): block Hadamard along the reduction dim, then the LSQ INT4 quantizer.

``(X H)(W H)ᵀ = X Wᵀ`` for the orthonormal block-diagonal H, so both operands are transformed before
quantization and the integer product needs no correction. The block size is fixed (default 32, the released
code) or searched once per layer: g ∈ {1, 2, ..., 1024} dividing D minimising ``‖Q(X)−X‖·‖Q(W)−W‖`` with the
LSQ initial steps (the norm is the same in the transformed basis, H being orthonormal).
"""

from __future__ import annotations

import torch

from lowbit.formats import INT4_RANGE
from lowbit.training.lsq import lsq_init
from lowbit.transforms import hadamard

MAX_SEARCH_BLOCK = 1024


def candidate_blocks(d: int) -> list[int]:
    """Powers of two up to 1024 that divide ``d`` (always includes 1)."""
    out, g = [], 1
    while g <= min(d, MAX_SEARCH_BLOCK) and d % g == 0:
        out.append(g)
        g *= 2
    return out


def block_transform(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` with the orthonormal block Hadamard applied along its last dim (no autograd graph)."""
    with torch.no_grad():
        return x.detach().float() if block == 1 else hadamard(x.detach().float(), block)


def _quant_error(xh: torch.Tensor) -> float:
    s = lsq_init(xh)
    return float(torch.linalg.vector_norm((xh / s).round().clamp(*INT4_RANGE) * s - xh))


def search_block(x: torch.Tensor, w: torch.Tensor) -> int:
    """The block size in ``candidate_blocks(D)`` minimising ``‖Q(XH)−XH‖·‖Q(WH)−WH‖`` (ties: smallest g)."""
    best, best_err = 1, float("inf")
    for g in candidate_blocks(x.shape[-1]):
        err = _quant_error(block_transform(x, g)) * _quant_error(block_transform(w, g))
        if err < best_err:
            best, best_err = g, err
    return best


def resolve_block(fixed: int | None, d: int) -> int | None:
    """The block size a layer with reduction dim ``d`` uses: None ("search at the first forward") or the
    largest power of two ``<= fixed`` that divides ``d`` (e.g. 32 for D=768, 16 for D=16, 4 for D=100)."""
    if fixed is None:
        return None
    block = 1
    while block * 2 <= fixed and d % (block * 2) == 0:
        block *= 2
    return block
