"""Float64 references for the quantizer tests, written from the format definitions, not from lowbit."""

from __future__ import annotations

import math

import numpy as np
import torch

import lowbit.formats as F


def ref_round(x: np.ndarray, fmt, mode: str = "nearest") -> np.ndarray:
    """Float64 reference: saturate, then the nearest of fmt.codes() (ties to even code / away from 0)."""
    if isinstance(fmt, F.IntFormat):
        t = np.clip(x, fmt.qmin, fmt.qmax)
        return np.round(t) if mode == "nearest" else np.sign(t) * np.floor(np.abs(t) + 0.5)
    grid = fmt.codes().numpy()
    pos = grid[grid >= 0]  # 0, min_subnormal, ..., max: index parity = mantissa parity of the bit pattern
    mag = np.minimum(np.abs(x), fmt.max)
    hi = np.clip(np.searchsorted(pos, mag, side="left"), 0, len(pos) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = mag - pos[lo], pos[hi] - mag
    tie_pick = hi if mode == "nearest-away" else np.where(hi % 2 == 0, hi, lo)
    idx = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, tie_pick))
    return np.copysign(pos[idx], x)


def boundary_values(fmt, gen: torch.Generator) -> torch.Tensor:
    """Every code, every midpoint between neighbours (ties), points just off them, beyond max, and random."""
    grid = fmt.codes()
    mids = (grid[1:] + grid[:-1]) / 2
    near = torch.cat([mids * (1 + 1e-9), mids * (1 - 1e-9)])
    beyond = torch.tensor([fmt.max * 1.01, fmt.max * 7, -fmt.max * 3, 0.0, -0.0], dtype=torch.float64)
    rand = torch.randn(2000, generator=gen, dtype=torch.float64) * fmt.max / 3
    return torch.cat([grid, mids, near, beyond, rand])


def ref_mx(x: np.ndarray, fmt: F.MXFormat) -> tuple[np.ndarray, np.ndarray]:
    """OCP MX reference, float64: per 32-block X = 2^(floor(log2 amax) - emax_elem), elements saturated."""
    blocks = x.reshape(*x.shape[:-1], -1, fmt.block)
    out, scales = np.empty_like(blocks), np.empty(blocks.shape[:-1])
    for idx in np.ndindex(*blocks.shape[:-1]):
        amax = np.abs(blocks[idx]).max()
        scale = 1.0 if amax == 0 else 2.0 ** (math.frexp(amax)[1] - 1 - fmt.element_emax)
        scales[idx] = scale
        out[idx] = ref_round(blocks[idx] / scale, fmt.element) * scale
    return out.reshape(x.shape), scales
