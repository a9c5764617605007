"""linear(..., act_scale=s): one static activation scale, bit-identical to quantize-then-int_matmul_scaled."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import BACKENDS

import lowbit.ops as ops
from lowbit.formats import IntFormat
from lowbit.ops import native, native_gemm
from lowbit.ptq.modules import quantize_static as ptq_quantize_static

needs_native = pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native")

# (bits of the weight, weight code range, act_bits): every kernel the static path can reach
PATHS = [
    pytest.param(4, -8, 7, 4, id="int4"),  # u4 x s4, activation codes [-8, 7]
    pytest.param(8, -63, 63, 8, id="int8-w7"),  # u8 x s7, activation codes [-128, 127] shifted by 128
    pytest.param(8, -128, 127, 7, id="int8-a7"),  # u7 x s8, activation codes [-64, 63] shifted by 64
    pytest.param(8, -128, 127, 8, id="int8-full"),  # exact int16 kernel
    pytest.param(8, -8, 7, 8, id="int8-4bit-weight"),  # 8-bit activations x 4-bit codes (u8 x s7)
]


def oracle(x2, w, sw, bias, bits, act_bits, s):
    """Independent statement of the contract: lowbit.ptq's static quantizer, then the reference product."""
    codes = ptq_quantize_static(x2, IntFormat(act_bits), torch.tensor(s, dtype=torch.float32))
    return ops.int_matmul_scaled(codes, w, s, sw, bias, bits=bits, backend="reference")


def make(gen, m, n, k, bits, w_lo, w_hi):
    x = torch.randn(m, k, generator=gen) * 3
    w = torch.randint(w_lo, w_hi + 1, (n, k), generator=gen, dtype=torch.int8)
    sw = torch.rand(n, generator=gen) + 0.01
    bias = torch.randn(n, generator=gen)
    return x, w, sw, bias


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits,w_lo,w_hi,act_bits", PATHS)
@pytest.mark.parametrize(
    "m,n,k",
    [(1, 1, 1), (3, 5, 7), (37, 33, 515), (13, 17, 1030), (200, 530, 64)],
    ids=["1x1x1", "ragged", "K>512", "two-K-slices", "wide-N"],
)
def test_static_matches_oracle(gen, backend, bits, w_lo, w_hi, act_bits, m, n, k):
    x, w, sw, bias = make(gen, m, n, k, bits, w_lo, w_hi)
    qmax = 2 ** (act_bits - 1) - 1
    s = float(x.abs().max()) / qmax * 0.7  # 30% of the range saturates
    packed = ops.pack_weight(w, sw, bits=bits, backend=backend)
    want = oracle(x, w, sw, bias, bits, act_bits, s)
    got = ops.linear(x, packed, bias, act_bits=act_bits, act_scale=s, backend=backend)
    assert torch.equal(got, want)
    out = torch.empty(m, n)
    scale_t = torch.tensor(s)
    assert ops.linear(x, packed, bias, act_bits=act_bits, act_scale=scale_t, out=out, backend=backend) is out
    assert torch.equal(out, want)


@needs_native
@pytest.mark.parametrize("fused", [True, False], ids=["fused-quant-gemm", "quant-pack-then-gemm"])
@pytest.mark.parametrize("bits,w_lo,w_hi,act_bits", PATHS)
@pytest.mark.parametrize("m,n,k", [(103, 40, 515), (61, 33, 1030), (7, 530, 64)])
def test_static_fused_and_unfused_native(gen, monkeypatch, fused, bits, w_lo, w_hi, act_bits, m, n, k):
    """Both native forms (rows quantized inside the GEMM, or packed first) equal the oracle bit for bit."""
    monkeypatch.setattr(native_gemm, "FUSED_ROWS_PER_THREAD", 1 if fused else 10**9)
    assert native_gemm.fuses(m) == fused
    x, w, sw, bias = make(gen, m, n, k, bits, w_lo, w_hi)
    x[5, :] = 0.0
    s = float(x.abs().max()) / (2 ** (act_bits - 1) - 1) * 0.5
    packed = ops.pack_weight(w, sw, bits=bits, backend="native")
    got = ops.linear(x, packed, bias, act_bits=act_bits, act_scale=s, backend="native")
    assert torch.equal(got, oracle(x, w, sw, bias, bits, act_bits, s))
    x[m - 1, k // 2] = float("nan")
    x[0, 0] = float("-inf")
    with pytest.raises(ValueError, match="2 non-finite"):
        ops.linear(x, packed, bias, act_bits=act_bits, act_scale=s, backend="native")


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_above_fusion_threshold(gen, backend):
    """M well above the fused-path threshold with the real setting (no monkeypatching)."""
    m = native_gemm.FUSED_ROWS_PER_THREAD * native_gemm.threads() + 37
    x, w, sw, bias = make(gen, m, 48, 96, 8, -63, 63)
    packed = ops.pack_weight(w, sw, bits=8, backend=backend)
    got = ops.linear(x, packed, bias, act_scale=0.05, backend=backend)
    assert torch.equal(got, oracle(x, w, sw, bias, 8, 8, 0.05))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act_bits,bits", [(8, 8), (4, 4)])
def test_ties_round_half_even_and_saturation(backend, act_bits, bits):
    """x / s halfway between codes rounds to even; beyond the range saturates to -2**(b-1) / 2**(b-1) - 1."""
    hi = 2 ** (act_bits - 1) - 1
    s = 0.25
    halves = torch.arange(-2 * hi - 1, 2 * hi + 2, dtype=torch.float32) / 2  # -hi-0.5 .. hi+0.5, steps 0.5
    row = torch.cat([halves, torch.tensor([1e30, -1e30, 3.0e38, -3.0e38])]) * s
    x = row.reshape(1, -1)
    k = x.shape[1]
    eye_codes = torch.eye(k, dtype=torch.int8)  # weight = identity: y = codes * s * 1
    packed = ops.pack_weight(eye_codes, 1.0, bits=bits, backend=backend)
    got = ops.linear(x, packed, act_bits=act_bits, act_scale=s, backend=backend)
    codes = got / s
    want = torch.clamp(torch.round(row / s), -hi - 1, hi)
    assert torch.equal(codes.reshape(-1), want)
    assert codes.min() == -hi - 1 and codes.max() == hi
    first = torch.tensor([-hi - 1, -hi, -hi + 1, -hi + 1, -hi + 1], dtype=torch.float32)  # -hi-.5 .. -hi+1.5
    assert torch.equal(codes[0, :5], first)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zeros_give_bias(gen, backend):
    w = torch.randint(-8, 8, (9, 20), generator=gen, dtype=torch.int8)
    bias = torch.randn(9, generator=gen)
    packed = ops.pack_weight(w, 0.3, bits=4, backend=backend)
    got = ops.linear(torch.zeros(4, 20), packed, bias, act_scale=1e-3, backend=backend)
    assert torch.equal(got, bias.expand(4, 9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_non_finite_raises_like_per_row(backend):
    packed = ops.pack_weight(torch.ones(3, 10, dtype=torch.int8), 1.0, bits=8, backend=backend)
    x = torch.ones(2, 10)
    x[1, 3] = float("inf")
    for act_scale in (None, 0.1):
        with pytest.raises(ValueError, match="1 non-finite values"):
            ops.linear(x, packed, act_scale=act_scale, backend=backend)


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (0.0, ValueError, "positive and finite"),
        (-1.0, ValueError, "positive and finite"),
        (float("nan"), ValueError, "positive and finite"),
        (float("inf"), ValueError, "positive and finite"),
        (1e-50, ValueError, "positive and finite"),  # 0 as float32
        (torch.ones(3), ValueError, "one-element float32"),
        (torch.tensor(1.0, dtype=torch.float64), ValueError, "one-element float32"),
        ("0.1", TypeError, "act_scale must be"),
        (True, TypeError, "act_scale must be"),
    ],
)
def test_bad_act_scale(bad, exc, match):
    packed = ops.pack_weight(torch.ones(3, 10, dtype=torch.int8), 1.0, bits=8, backend="reference")
    with pytest.raises(exc, match=match):
        ops.linear(torch.ones(2, 10), packed, act_scale=bad)


def test_paths_of_static_activations():
    """The static range [-2**(b-1), 2**(b-1)-1] picks the kernels the PTQ recipes expect."""
    w7 = ops.pack_weight(torch.full((4, 8), 63, dtype=torch.int8), 1.0, bits=8, backend="reference")
    w8 = ops.pack_weight(torch.full((4, 8), -128, dtype=torch.int8), 1.0, bits=8, backend="reference")
    assert "offset 128" in w7.path(8, static=True)
    assert "offset 64" in w8.path(7, static=True) and "s16" in w8.path(8, static=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_with_4bit_codes_in_an_8bit_weight(gen, backend):
    """8-bit activations x an 8-bit weight whose codes fit [-8, 7] (planned as kind 3 by int_matmul) work."""
    x, w, sw, bias = make(gen, 450, 20, 33, 8, -8, 7)
    packed = ops.pack_weight(w, sw, bits=8, backend=backend)
    codes, sx = ops.quantize_rows(x, 8, backend="reference")
    want = ops.int_matmul_scaled(codes, w, sx, sw, bias, bits=8, backend="reference")
    for rows in (5, 450):  # below and above the fusion threshold
        assert torch.equal(ops.linear(x[:rows], packed, bias, backend=backend), want[:rows])
