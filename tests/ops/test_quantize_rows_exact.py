"""quantize_rows: bit-exact against its definition on every backend; edge cases; bad input."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import BACKENDS

import lowbit.ops as ops


def definition(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Written out independently: scale = max(absmax/qmax, 2**-126) (1 if the row is 0), round half even."""
    qmax = 2 ** (bits - 1) - 1
    scales, rows = [], []
    for row in x:
        amax = float(row.abs().max()) if row.numel() else 0.0
        s = torch.tensor(amax, dtype=torch.float32) / qmax
        s = torch.tensor(1.0) if amax == 0 else torch.clamp(s, min=2.0**-126)
        scales.append(s)
        rows.append(torch.clamp(torch.round(row / s), -qmax, qmax).to(torch.int8))
    codes = torch.stack(rows) if rows else torch.zeros(x.shape, dtype=torch.int8)
    return codes, torch.stack(scales) if scales else torch.zeros(0)


def planted(gen: torch.Generator, m: int, k: int) -> torch.Tensor:
    """Rows with very different scales, an outlier, an all-zero row and exact .5 ties."""
    x = torch.randn(m, k, generator=gen) * torch.logspace(-3, 3, m).reshape(-1, 1)
    x[0, k // 2] = 1e4
    x[1] = 0.0
    if k >= 4:
        x[2, :4] = torch.tensor([127.0, 0.5, 1.5, -2.5])  # scale 1 for 8 bits: ties at .5
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [8, 7, 4, 2])
@pytest.mark.parametrize(
    "shape", [(1, 1), (5, 3), (17, 33), (64, 768)], ids=["1x1", "5x3", "17x33", "64x768"]
)
def test_exact(gen, backend, bits, shape):
    x = planted(gen, *shape) if shape[0] >= 3 else torch.randn(shape, generator=gen)
    codes, scale = ops.quantize_rows(x, bits, backend=backend)
    want_codes, want_scale = definition(x, bits)
    assert torch.equal(scale, want_scale)
    assert torch.equal(codes, want_codes)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_rows_keep_normal_scale(backend):
    x = torch.tensor([[1e-40, -2e-42], [0.0, 0.0]])
    codes, scale = ops.quantize_rows(x, 8, backend=backend)
    assert scale[0] == 2.0**-126 and scale[1] == 1.0
    assert torch.equal(codes, definition(x, 8)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    with pytest.raises(ValueError, match="non-finite"):
        ops.quantize_rows(torch.tensor([[1.0, float("nan")]]), 8, backend=backend)
    with pytest.raises(ValueError, match="bits"):
        ops.quantize_rows(torch.zeros(2, 2), 9, backend=backend)
    with pytest.raises(ValueError, match="float32"):
        ops.quantize_rows(torch.zeros(2, 2, dtype=torch.float64), 8, backend=backend)
    with pytest.raises(TypeError, match="Tensor"):
        ops.quantize_rows([[1.0]], 8, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("static", [False, True], ids=["per-row", "static"])
def test_non_finite_count_is_exact(backend, static):
    """NaN/Inf in the 8-wide body and the scalar tail of rows are all counted (quantize_rows and linear)."""
    x = torch.ones(5, 37)
    x[0, 3] = float("nan")  # body
    x[0, 35] = float("inf")  # tail of the same row
    x[2, 36] = float("-inf")  # tail only
    x[4, 8] = float("nan")  # body only
    x[4, 9] = -float("nan")
    if not static:
        with pytest.raises(ValueError, match="x holds 5 non-finite"):
            ops.quantize_rows(x, 8, backend=backend)
    w = ops.pack_weight(torch.ones(3, 37, dtype=torch.int8), 1.0, bits=8, backend=backend)
    for rows in (x, x.repeat(100, 1)):  # below and above the fused-path threshold
        want = 5 * (rows.shape[0] // 5)
        with pytest.raises(ValueError, match=f"x holds {want} non-finite"):
            ops.linear(rows, w, act_scale=0.5 if static else None, backend=backend)
