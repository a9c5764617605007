"""ScaledInt / Scale Propagation and Dyadic multipliers against exact rational references."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from lowbit.integer.scaled import Dyadic, ScaledInt, add, concat, matmul, mul, requantize


@pytest.mark.parametrize("ratio", [0.37, 1e-5, 3.0, 1.0, 2**-30, 1234.5], ids=lambda r: f"r={r}")
def test_dyadic_approximates_ratio_within_half_ulp(ratio: float) -> None:
    d = Dyadic.from_ratio(ratio)
    err = abs(Fraction(int(d.mult)) / 2 ** int(d.shift) - Fraction(ratio))
    assert err <= Fraction(1, 2 ** (int(d.shift) + 1))
    assert 2**23 <= int(d.mult) < 2**24


def test_dyadic_apply_is_exact_rational_rounding(gen: torch.Generator) -> None:
    d = Dyadic.from_ratio(0.0123)
    x = torch.randint(-(2**31), 2**31 - 1, (2000,), generator=gen, dtype=torch.int64)
    # ties: values whose product lands exactly on .5 round up
    x[:4] = torch.tensor([0, 1, -1, 2 ** (int(d.shift) - 1)])
    got = d.apply(x)
    m, s = int(d.mult), int(d.shift)
    want = [(Fraction(int(v) * m, 2**s) + Fraction(1, 2)).__floor__() for v in x]
    assert got.tolist() == want


def test_dyadic_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        Dyadic.from_ratio(-1.0)
    with pytest.raises(TypeError, match="integer tensor"):
        Dyadic.from_ratio(0.5).apply(torch.ones(3))


def test_matmul_and_requantize_track_float64(gen: torch.Generator) -> None:
    a_hp = torch.randn(16, 64, generator=gen, dtype=torch.float64)
    b_hp = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    a = ScaledInt.quantize(a_hp, float(a_hp.abs().max()) / 127)
    b = ScaledInt.quantize(b_hp, float(b_hp.abs().max()) / 127)
    acc = matmul(a, b)
    assert acc.values.dtype == torch.int32
    exact = a.values.double() @ b.values.double().T
    assert torch.equal(acc.values.double(), exact)  # integer accumulation is exact
    out_scale = float((a.dequantize().double() @ b.dequantize().double().T).abs().max()) / 127
    y = requantize(acc, out_scale)
    assert y.values.dtype == torch.int8
    ref = torch.round(exact * (a.scale * b.scale / out_scale)).clamp(-127, 127)
    assert (y.values.double() - ref).abs().max() <= 1  # dyadic vs real ratio: at most one code at ties
    assert (y.values.double() - ref).abs().sum() <= 2


def test_add_scale_matching_and_mul() -> None:
    a = ScaledInt(torch.tensor([100, -50, 0], dtype=torch.int8), 0.01)
    b = ScaledInt(torch.tensor([10, 20, -127], dtype=torch.int8), 0.1)
    s = add(a, b)
    assert s.scale == 0.01
    assert s.values.tolist() == [200, 150, -1270]
    p = mul(a, b)
    assert p.values.tolist() == [1000, -1000, 0]
    assert p.scale == pytest.approx(0.001)


def test_shape_ops_keep_scales() -> None:
    v = torch.arange(24, dtype=torch.int8).reshape(2, 3, 4)
    pc = ScaledInt(v, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    parts = pc.split(2, dim=-1)
    assert [p.scale.tolist() for p in parts] == [[1.0, 2.0], [3.0, 4.0]]
    assert torch.equal(concat(parts).values, v)
    assert torch.equal(concat(parts).scale, pc.scale)
    assert pc.transpose(0, 1).values.shape == (3, 2, 4)
    with pytest.raises(ValueError, match="channel dimension"):
        pc.transpose(1, 2)
    with pytest.raises(ValueError, match="last dimension"):
        pc.reshape(2, 12)
    t = ScaledInt(v, 0.5)
    assert t.reshape(6, 4).values.shape == (6, 4)
    with pytest.raises(ValueError, match="common scale"):
        concat([t, ScaledInt(v, 0.25)])


def test_saturation_and_float_rejected() -> None:
    x = ScaledInt.quantize(torch.tensor([1e6, -1e6, 0.0]), 1.0)
    assert x.values.tolist() == [127, -127, 0]
    with pytest.raises(TypeError, match="integer tensor"):
        ScaledInt(torch.ones(2), 1.0)


def test_shape_errors_are_value_errors() -> None:
    """Found by the fuzz suite: mismatched shapes reached torch (RuntimeError from cat / broadcasting), a
    per-channel scale on 0-d values and split of 0-d values raised IndexError / RuntimeError, and add of two
    channel-less operands failed in min() of an empty tensor."""
    from lowbit.integer import ScaledInt, add, concat, mul

    a = ScaledInt(torch.zeros(0, 0, dtype=torch.int8), 1.0)
    b = ScaledInt(torch.zeros(0, 2, dtype=torch.int8), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="broadcastable shapes"):
        mul(a, b)
    with pytest.raises(ValueError, match="broadcastable shapes"):
        add(a, b)
    with pytest.raises(ValueError, match="cannot concatenate"):
        concat([a, ScaledInt(torch.zeros(0, 1, dtype=torch.int8), 1.0)], 0)
    with pytest.raises(ValueError, match="channel"):
        ScaledInt(torch.tensor(3, dtype=torch.int8), torch.ones(7))
    with pytest.raises(ValueError, match="cannot split"):
        ScaledInt(torch.tensor(3, dtype=torch.int8), 1.0).split(2)
    with pytest.raises(TypeError, match="integer tensor"):
        ScaledInt([1, 2], 1.0)
    empty = ScaledInt(torch.zeros(3, 0, dtype=torch.int32), torch.ones(0, dtype=torch.float64))
    assert add(empty, empty).values.shape == (3, 0)
