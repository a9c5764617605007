"""Bit splitting (Xi et al. §4.2): a gradient tensor as two INT4 tensors, ``g ≈ (14·hi + lo) · unit``.

``scale = 196 / (2·max|g|)``, ``t = g·scale`` in [-98, 98]; ``hi = clamp(round(t/14), ±c)`` (nearest),
``lo = clamp(round_stochastic(t − 14·hi), ±c)``; ``unit = 1/scale``. docs/SPEC.md §1 uses c = 6, which clips
|t| > 90 (the low half cannot absorb a residual of up to 14) and so biases the largest entries; lowbit's
default is c = 7, still inside INT4's [-8, 7], for which ``|t − 14·hi| <= 7`` always and stochastic rounding
of the residual makes ``E[(14·hi + lo)·unit] = g`` exactly.
"""

from __future__ import annotations

import math

import torch

from lowbit.training._kernels import absmax, native_reason, split_merged_native

SPLIT_TOP = 98.0  # = 196 / 2: max|t|
SPLIT_RADIX = 14  # weight of the high half


_M32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B1


def _hash32(h: torch.Tensor) -> torch.Tensor:
    """The "lowbias32" integer finaliser on int64 tensors holding uint32 values (as ``train_split.c``)."""
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _M32
    return h ^ (h >> 16)


def hash_uniform(
    shape: torch.Size | tuple[int, ...], seed: int, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Counter-based U[0, 1) noise, float32 with 24 random bits: ``(hash32(i·φ + seed) >> 8) · 2⁻²⁴``.

    ``i`` is the flat (row-major) index; identical to the native kernel's noise for the same seed. ``rows``
    (int64, one per row of a 2-D ``shape``): the rows' indices in a larger matrix of the same width, whose
    noise they take (a data-parallel shard drawing the single process's numbers for its rows).
    """
    n = 1
    for dim in shape:
        n *= int(dim)
    if rows is None:
        idx = torch.arange(n, dtype=torch.int64)
    else:
        width = int(shape[1])
        idx = (rows.to(torch.int64)[:, None] * width + torch.arange(width, dtype=torch.int64)).reshape(-1)
    h = _hash32((idx * _GOLDEN32 + seed) & _M32)
    return ((h >> 8).to(torch.float32) * 2.0**-24).reshape(shape)


def draw_seed(generator: torch.Generator | None) -> int:
    """One 32-bit seed from ``generator`` (the torch default generator when None)."""
    return int(torch.randint(0, 2**32, (1,), generator=generator, dtype=torch.int64))


def round_stochastic(
    x: torch.Tensor, generator: torch.Generator | None, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``floor(x + U)``, U ~ U[0, 1) from :func:`hash_uniform` seeded by one draw of ``generator``: unbiased
    rounding to an integer (to the 2⁻²⁴ resolution of U), reproducible and identical to the native kernel.
    ``rows``: see :func:`hash_uniform`."""
    return torch.floor(x + hash_uniform(x.shape, draw_seed(generator), rows))


def bit_split(
    g: torch.Tensor,
    *,
    clamp: int = 7,
    rounding: str = "stochastic",
    generator: torch.Generator | None = None,
    amax: float | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(hi, lo, unit)``: int8 tensors with values in [-clamp, clamp] and the float unit of ``lo``.

    ``g ≈ (SPLIT_RADIX · hi + lo) · unit``; an all-zero ``g`` gives zeros and unit 1. ``amax``: the scale's
    ``max|g|`` when ``g`` is a shard of a larger tensor (its global max, >= the local one); ``rows``: the
    global row index of each row of a 2-D shard, for the stochastic noise (see :func:`hash_uniform`).
    """
    if rounding not in ("stochastic", "nearest"):
        raise ValueError(f"rounding must be 'stochastic' or 'nearest', got {rounding!r}")
    g32 = g.detach().float()
    local = float(g32.abs().max()) if g32.numel() else 0.0
    if not math.isfinite(local):
        raise ValueError(f"the gradient holds non-finite values (max |g| = {local}); cannot bit-split")
    amax = local if amax is None else amax
    if not math.isfinite(amax):
        raise ValueError(f"the gradient holds non-finite values (max |g| = {amax}); cannot bit-split")
    if amax == 0.0:
        zeros = torch.zeros(g32.shape, dtype=torch.int8)
        return zeros, zeros.clone(), 1.0
    scale = SPLIT_TOP / amax
    t = g32 * scale  # in [-98, 98]
    hi = torch.round(t / SPLIT_RADIX).clamp_(-clamp, clamp)
    # lo = rounded(t) − 14·hi: equal to rounding the residual t − 14·hi (in [-7, 7]; 14·hi is an even
    # integer), written so that 14·hi + lo is bit-identical to rounding t once (``bit_split_merged``)
    t_int = round_stochastic(t, generator, rows) if rounding == "stochastic" else torch.round(t)
    lo = (t_int - SPLIT_RADIX * hi).clamp_(-clamp, clamp)
    return hi.to(torch.int8), lo.to(torch.int8), 1.0 / scale


def bit_merge(hi: torch.Tensor, lo: torch.Tensor, unit: float) -> torch.Tensor:
    """The float32 value a bit split represents."""
    return (SPLIT_RADIX * hi.float() + lo.float()) * unit


def bit_split_merged(
    g: torch.Tensor,
    *,
    clamp: int = 7,
    rounding: str = "stochastic",
    generator: torch.Generator | None = None,
    amax: float | None = None,
    row_offset: int = 0,
) -> tuple[torch.Tensor, float]:
    """``(SPLIT_RADIX · hi + lo, unit)`` of :func:`bit_split` as one int8 tensor, from the same random draws.

    A shard of a larger tensor (data parallelism) passes the global ``amax`` and its first row's global
    index ``row_offset``: its codes are then those of the matching rows of the whole tensor.

    With ``clamp == 7`` nothing clips and 14·hi is an even integer, so ``14·hi + round(t − 14·hi) = round(t)``
    for both roundings: the merged code is ``t`` rounded once (in [-98, 98]). Identical integers to
    ``bit_split`` followed by ``14·hi + lo`` for the same generator state (tested).
    """
    rows = None
    if row_offset and g.dim() == 2:
        rows = torch.arange(row_offset, row_offset + g.shape[0], dtype=torch.int64)
    if clamp != 7:
        hi, lo, unit = bit_split(g, clamp=clamp, rounding=rounding, generator=generator, amax=amax, rows=rows)
        return (SPLIT_RADIX * hi.short() + lo).to(torch.int8), unit
    if rounding not in ("stochastic", "nearest"):
        raise ValueError(f"rounding must be 'stochastic' or 'nearest', got {rounding!r}")
    g32 = g.detach().float()
    native = not native_reason() and g32.is_contiguous() and g32.numel() > 0
    # the native absmax is one fused pass and raises on non-finite entries itself
    local = absmax(g32) if native else (float(g32.abs().max()) if g32.numel() else 0.0)
    if not math.isfinite(local):
        raise ValueError(f"the gradient holds non-finite values (max |g| = {local}); cannot bit-split")
    amax = local if amax is None else amax
    if amax == 0.0:
        return torch.zeros(g32.shape, dtype=torch.int8), 1.0
    scale = SPLIT_TOP / amax
    if native:
        seed = draw_seed(generator) if rounding == "stochastic" else 0
        # the noise of flat index i is hash(i·φ + seed) mod 2³²: a shard starting at global element
        # row_offset·C shifts the seed by that many φ
        seed = (seed + row_offset * (g32.numel() // max(1, g32.shape[0])) * _GOLDEN32) & _M32
        return split_merged_native(g32, scale, seed, rounding == "stochastic"), 1.0 / scale
    t = g32 * scale
    code = round_stochastic(t, generator, rows) if rounding == "stochastic" else torch.round(t)
    return code.clamp_(-SPLIT_TOP, SPLIT_TOP).to(torch.int8), 1.0 / scale
