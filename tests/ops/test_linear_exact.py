"""pack_weight + linear: bit-identical to quantize_rows + int_matmul_scaled on every backend and path."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import BACKENDS

import lowbit.ops as ops
from lowbit.ops import native


def unfused(x, w_codes, w_scale, bias, bits, act_bits):
    codes, sx = ops.quantize_rows(x.reshape(-1, x.shape[-1]), act_bits, backend="reference")
    y = ops.int_matmul_scaled(codes, w_codes, sx, w_scale, bias, bits=bits, backend="reference")
    return y.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bits,w_lo,w_hi,act_bits",
    [
        pytest.param(4, -8, 7, None, id="int4"),  # u4 x s4 int16-accumulate path
        pytest.param(8, -64, 64, None, id="int8-w7"),  # u8 x s7 path (7-bit weight)
        pytest.param(8, -127, 127, 7, id="int8-a7"),  # u7 x s8 path (7-bit activations)
        pytest.param(8, -128, 127, None, id="int8-full"),  # exact int16 path
    ],
)
@pytest.mark.parametrize(
    "shape", [(1, 5, 1), (3, 7, 37, 33), (2, 50, 130, 515)], ids=["tiny", "ragged", "K>512"]
)
def test_linear_matches_unfused(gen, backend, bits, w_lo, w_hi, act_bits, shape):
    *lead, n, k = shape
    x = torch.randn(*lead, k, generator=gen) * torch.rand(*lead, 1, generator=gen) * 10
    w = torch.randint(w_lo, w_hi + 1, (n, k), generator=gen, dtype=torch.int8)
    sw = torch.rand(n, generator=gen) + 0.01
    bias = torch.randn(n, generator=gen)
    packed = ops.pack_weight(w, sw, bits=bits, backend=backend)
    want = unfused(x, w, sw, bias, bits, act_bits or bits)
    got = ops.linear(x, packed, bias, act_bits=act_bits, backend=backend)
    assert got.shape == (*lead, n)
    assert torch.equal(got, want)
    out = torch.empty(*lead, n)
    assert ops.linear(x, packed, bias, act_bits=act_bits, out=out, backend=backend) is out
    assert torch.equal(out, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_weight(gen, backend):
    w = torch.randint(-8, 8, (40, 24), generator=gen, dtype=torch.int8)  # (K, N)
    x = torch.randn(9, 40, generator=gen)
    got = ops.linear(x, ops.pack_weight(w, 0.5, bits=4, transposed=True, backend=backend), backend=backend)
    assert torch.equal(got, unfused(x, w.t(), torch.full((24,), 0.5), None, 4, 4))


def test_paths_named():
    w7 = ops.pack_weight(torch.full((4, 8), 64, dtype=torch.int8), 1.0, bits=8, backend="reference")
    w8 = ops.pack_weight(torch.full((4, 8), -100, dtype=torch.int8), 1.0, bits=8, backend="reference")
    assert "offset 128" in w7.path() and "s16" in w8.path() and "offset 64" in w8.path(7)


def test_bad_input():
    w = ops.pack_weight(torch.zeros(4, 8, dtype=torch.int8), 1.0, bits=4, backend="reference")
    with pytest.raises(ValueError, match="last dim 8"):
        ops.linear(torch.zeros(2, 7), w)
    with pytest.raises(ValueError, match="act_bits"):
        ops.linear(torch.zeros(2, 8), w, act_bits=8)
    with pytest.raises(TypeError, match="PackedWeight"):
        ops.linear(torch.zeros(2, 8), torch.zeros(4, 8))
    with pytest.raises(ValueError, match="outside"):
        ops.pack_weight(torch.full((4, 8), 8, dtype=torch.int8), 1.0, bits=4)


@pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native available")
@pytest.mark.parametrize("fused", [True, False], ids=["fused-quant-gemm", "quant-pack-then-gemm"])
@pytest.mark.parametrize(
    "bits,w_lo,w_hi,act_bits",
    [
        pytest.param(4, -8, 7, None, id="int4"),
        pytest.param(8, -64, 64, None, id="int8-w7"),
        pytest.param(8, -128, 127, 7, id="int8-a7"),
        pytest.param(8, -128, 127, None, id="int8-full"),
    ],
)
@pytest.mark.parametrize(
    "m,n,k",
    [
        pytest.param(103, 40, 515, id="ragged-rows"),  # last band and last panel partial; K tail of 3
        pytest.param(61, 33, 1030, id="two-K-slices"),  # K > 1024: partial sums across slices
        pytest.param(200, 530, 64, id="wide-N"),  # several 512-column chunks inside one row band
    ],
)
def test_fused_quantize_gemm_matches_unfused(gen, monkeypatch, fused, bits, w_lo, w_hi, act_bits, m, n, k):
    """linear's fused quantize + GEMM (rows quantized in the GEMM) equals the two-step form bit for bit."""
    from lowbit.ops import native_gemm

    monkeypatch.setattr(native_gemm, "FUSED_ROWS_PER_THREAD", 1 if fused else 10**9)
    assert native_gemm.fuses(m) == fused
    x = torch.randn(m, k, generator=gen) * torch.logspace(-3, 3, m).reshape(-1, 1)  # a scale per row
    x[5, :] = 0.0  # an all-zero row (scale 1)
    w = torch.randint(w_lo, w_hi + 1, (n, k), generator=gen, dtype=torch.int8)
    sw = torch.rand(n, generator=gen) + 0.01
    bias = torch.randn(n, generator=gen)
    packed = ops.pack_weight(w, sw, bits=bits, backend="native")
    got = ops.linear(x, packed, bias, act_bits=act_bits, backend="native")
    assert torch.equal(got, unfused(x, w, sw, bias, bits, act_bits or bits))
    x[m - 1, k // 2] = float("inf")
    with pytest.raises(ValueError, match="1 non-finite"):
        ops.linear(x, packed, bias, act_bits=act_bits, backend="native")


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0, float("inf"), 1e39])
def test_pack_weight_rejects_unusable_scales(bad):
    """Issue 14 #10: a NaN, zero, negative or infinite w_scale made every output NaN / zero; now refused."""
    w = torch.ones(3, 4, dtype=torch.int8)
    with pytest.raises(ValueError, match="w_scale"):
        ops.pack_weight(w, bad, bits=8)
    with pytest.raises(ValueError, match="w_scale"):
        ops.pack_weight(w, torch.tensor([1.0, bad, 1.0]), bits=8)


@pytest.mark.parametrize("name", ["a_scale", "b_scale", "bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_int_matmul_scaled_rejects_non_finite_scales(name, bad):
    """Issue 14 #10: non-finite scales or bias returned NaN/Inf silently; zero and negative stay allowed
    (an all-zero gradient's scale in training can be 0)."""
    a = torch.ones(2, 4, dtype=torch.int8)
    args = {"a_scale": torch.ones(2), "b_scale": torch.ones(3), "bias": torch.zeros(3)}
    args[name] = args[name].clone()
    args[name][1] = bad
    with pytest.raises(ValueError, match=f"{name} holds 1 NaN/Inf"):
        ops.int_matmul_scaled(
            a, torch.ones(3, 4, dtype=torch.int8), args["a_scale"], args["b_scale"], args["bias"], bits=8
        )
    out = ops.int_matmul_scaled(a, torch.ones(3, 4, dtype=torch.int8), 0.0, -2.0, bits=8)
    assert torch.equal(out, torch.zeros(2, 3))
