"""The native integer kernels of lowbit.integer.fast (requantize, norms, attention rows, GELU) against their
PyTorch references: the same integers, bit for bit."""

from __future__ import annotations

import pytest
import torch

from lowbit.integer import kernels as K
from lowbit.integer.fast import requant_channels, requant_rows
from lowbit.ops import native

BACKENDS = ["reference"] + (["native"] if native.available() else [])


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("residual", [False, True], ids=["int8", "residual"])
def test_requant_channels_native_bit_exact(relu: bool, residual: bool, gen: torch.Generator) -> None:
    m, n = 37, 29  # ragged sizes
    acc = torch.randint(-(2**31), 2**31 - 1, (m, n), generator=gen, dtype=torch.int32)
    acc[0, :3] = torch.tensor([2**31 - 1, -(2**31), 0])  # saturation edges
    bias = torch.randint(-1000, 1000, (n,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**23, 2**24, (n,), generator=gen, dtype=torch.int32)
    shift = torch.randint(0, 40, (n,), generator=gen, dtype=torch.int32)
    outs = []
    for be in BACKENDS:
        res = (
            torch.randint(
                -(2**31), 2**31 - 1, (m, n), generator=torch.Generator().manual_seed(3), dtype=torch.int32
            )
            if residual
            else None
        )
        outs.append(requant_channels(acc, bias, mult, shift, relu=relu, residual=res, backend=be))
    for o in outs[1:]:
        assert torch.equal(o, outs[0])

    # the reference itself against exact integers
    def sat32(v: int) -> int:
        return max(-(2**31), min(2**31 - 1, v))

    x = [[sat32(int(acc[i, j]) + int(bias[j])) for j in range(n)] for i in range(2)]
    x = [[max(v, 0) if relu else v for v in row] for row in x]
    want = [
        [(x[i][j] * int(mult[j]) + ((1 << int(shift[j])) >> 1)) >> int(shift[j]) for j in range(n)]
        for i in range(2)
    ]
    if not residual:
        assert outs[0][:2].tolist() == [[max(-127, min(127, v)) for v in row] for row in want]


def test_requant_rows_native_bit_exact(gen: torch.Generator) -> None:
    acc = torch.randint(-(2**21), 2**21, (19, 33), generator=gen, dtype=torch.int32)
    row_mult = torch.randint(0, 2**36, (19,), generator=gen, dtype=torch.int64)
    outs = []
    for be in BACKENDS:
        big = torch.zeros(19, 70, dtype=torch.int8)
        requant_rows(acc, row_mult, 44, big[:, 5:38], backend=be)  # strided output view
        outs.append(big)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    want = ((acc.long() * row_mult[:, None] + 2**43) >> 44).clamp(-127, 127)
    assert torch.equal(outs[0][:, 5:38].long(), want)


@pytest.mark.parametrize("kind", ["l1", "layer"])
@pytest.mark.parametrize("c", [48, 52, 256])
def test_norm_rows_native_bit_exact(kind: str, c: int, gen: torch.Generator) -> None:
    from lowbit.integer.fast import norm_rows, to_offset

    x = torch.randint(-(2**20), 2**20, (37, c), generator=gen, dtype=torch.int32)
    x[0] = 5  # constant row: zero deviation, eps only
    x[1, 0] = 2**22  # outlier
    if kind == "l1":  # (the standard norm's Σ(x−μ)² leaves int64 for such rows, in both backends)
        x[2, ::2], x[2, 1::2] = 2**31 - 1, -(2**31)  # int32 extremes: the scalar (wide) path
        x[3] = torch.randint(-(2**30), 2**30, (c,), generator=gen, dtype=torch.int32)  # beyond calibration
        x[4, :] = -(2**31)
    w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    k = K.norm_constants(kind, 1e-5, 2**22 * 1e-5, w, b, 1e-5, 0.015)
    outs = [norm_rows(x, kind, k, backend=be) for be in BACKENDS]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    assert int((outs[0].abs() == 127).sum()) > 0 and int((outs[0].abs() < 100).sum()) > 0  # both regimes
    shifted = norm_rows(x, kind, k, out_off=128)
    assert shifted.dtype == torch.uint8 and torch.equal(shifted, to_offset(outs[0], 128))


@pytest.mark.parametrize("kind", ["poly", "softmax"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_attention_rows_native_bit_exact(kind: str, causal: bool, gen: torch.Generator) -> None:
    from lowbit.integer.fast import attention_rows

    scores = torch.randint(-5000, 5000, (2, 3, 9, 9), generator=gen, dtype=torch.int32)
    scores[0, 0, 3] = 4000  # a row of ties
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, 6:] = False  # padding
    extra = (
        {"poly_bias": torch.tensor([100, -200, 0]).view(3, 1, 1), "delta": 7}
        if kind == "poly"
        else {"exp": K.exp_constants(2e-3)}
    )
    outs = [
        attention_rows(scores, causal=causal, key_mask=key_mask, row_const=3, backend=be, **extra)
        for be in BACKENDS
    ]
    for codes, mult in outs[1:]:
        assert torch.equal(codes, outs[0][0]) and torch.equal(mult, outs[0][1])
    codes = outs[0][0]
    assert int(codes[1, :, :, 6:].abs().sum()) == 0  # padded keys get no weight
    if causal:
        assert int(codes[0, 0].triu(1).abs().sum()) == 0


@pytest.mark.parametrize("scale", [5 / 1024, 1e-3, 0.05])
@pytest.mark.parametrize("pre", [0, 3])
def test_gelu_requant_native_bit_exact(scale: float, pre: int, gen: torch.Generator) -> None:
    from lowbit.integer.fast import gelu_requant, to_offset

    k = K.gelu_constants(scale)
    x = torch.randint(-(2**13), 2**13, (37, 53), generator=gen, dtype=torch.int32)  # odd shape: scalar tail
    x[0] = 0
    x[1, :6] = torch.tensor([2**31 - 1, -(2**31), 1, -1, -k.b, k.b])  # int32 extremes, the clip point
    mult = torch.randint(2**23, 2**24, (53,), generator=gen, dtype=torch.int32)
    shift = torch.randint(20, 40, (53,), generator=gen, dtype=torch.int32)
    outs = [gelu_requant(x, k, pre, mult, shift, backend=be) for be in BACKENDS]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    assert int((outs[0].abs() == 127).sum()) > 0 and int((outs[0].abs() < 100).sum()) > 0
    assert torch.equal(gelu_requant(x, k, pre, mult, shift, out_off=128), to_offset(outs[0], 128))
