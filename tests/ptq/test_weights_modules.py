"""Weight storage round trips and the quantized linears against float64 references."""

from __future__ import annotations

import pytest
import torch

import lowbit.formats as F
from lowbit.ptq.modules import FP8Linear, Int8Linear, LayerSpec, build_layer, quantize_static
from lowbit.ptq.weights import decode_weight, encode_weight, nbytes
from lowbit.quantizers import quantize


def _weight(gen: torch.Generator, n: int = 48, k: int = 96) -> torch.Tensor:
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, 7] *= 30  # an outlier input channel
    w[3] *= 10  # a large output row: per-channel scales differ
    return w


CASES = [  # (format, granularity, group size, bytes per weight): every storage path
    (F.INT8, "tensor", None, 1.0),
    (F.INT8, "channel", None, 1.0),
    (F.INT4, "group", 32, 0.5),  # packed nibbles + (N, K/32) scales
    (F.FP8_E4M3, "tensor", None, 1.0),
    (F.FP8_E5M2, "channel", None, 1.0),
    (F.MXFP8_E4M3, "tensor", None, 1.0),  # float8 elements + uint8 E8M0 exponents
    (F.MXFP4, "tensor", None, 0.5),  # packed FP4 nibbles
]
IDS = ["int8-tensor", "int8-channel", "int4-group32", "e4m3-tensor", "e5m2-channel", "mxfp8", "mxfp4"]


@pytest.mark.parametrize(("fmt", "gran", "group", "per_weight"), CASES, ids=IDS)
def test_encode_decode_is_the_quantizer(gen, fmt, gran, group, per_weight) -> None:
    w = _weight(gen)
    bufs = encode_weight(w, fmt, gran, group)
    if isinstance(fmt, F.MXFormat):
        ref = quantize(w, fmt).dequantize()
    else:
        g = {"tensor": "tensor", "channel": "row", "group": ("group", group)}[gran]
        ref = quantize(w, fmt, g).dequantize()
    assert torch.equal(decode_weight(bufs, fmt, tuple(w.shape)), ref)
    assert bufs["w_codes"].numel() * bufs["w_codes"].element_size() == w.numel() * per_weight
    assert nbytes(bufs) <= w.numel() * 4 * (0.27 if per_weight == 1 else 0.17)


def test_fp4_nibbles_cover_every_code() -> None:
    codes = F.FP4_E2M1.codes().float()  # all 15 values (one zero)
    w = torch.cat([codes, codes[:1]]).repeat(2, 2)  # (2, 32): one MX block per row, max 6 -> scale 1
    w[:, 0] = 6.0
    bufs = encode_weight(w, F.MXFP4)
    assert torch.equal(bufs["w_exp"], torch.full((2, 1), 127, dtype=torch.uint8))
    assert torch.equal(decode_weight(bufs, F.MXFP4, (2, 32)), w)


def _spec(kind, w, act, gran="tensor", act_gran="tensor", compute=None, bias=True) -> LayerSpec:
    return LayerSpec(kind, w.shape[1], w.shape[0], act, gran, None, act, act_gran, compute, bias)


def test_int8_linear_is_the_exact_integer_product(gen) -> None:
    w, b = _weight(gen), torch.randn(48, generator=gen)
    x = torch.randn(5, 7, 96, generator=gen)
    x[0, 0, 0] = 50.0  # beyond the static range: saturates to code 127
    s_x = 0.02
    layer = build_layer(_spec("int8", w, "int8", "channel"), encode_weight(w, F.INT8, "channel"), b, s_x)
    assert isinstance(layer, Int8Linear)
    y = layer(x)
    a_codes = torch.round(x.reshape(-1, 96).double() / s_x).clamp(-128, 127)
    assert a_codes.max() == 127
    acc = a_codes @ layer.w_codes.double().t()  # exact in float64 (|acc| < 2**53)
    ref = acc * s_x * layer.w_scale.double() + b.double()
    torch.testing.assert_close(y.reshape(-1, 48).double(), ref, rtol=1e-6, atol=1e-5)
    assert y.shape == (5, 7, 48)


def test_int8_linear_per_token(gen) -> None:
    w, x = _weight(gen), torch.randn(9, 96, generator=gen)
    layer = build_layer(
        _spec("int8", w, "int8", act_gran="token", bias=False), encode_weight(w, F.INT8), None
    )
    scale = x.abs().amax(dim=1, keepdim=True).double() / 127
    acc = torch.round(x.double() / scale) @ layer.w_codes.double().t()
    torch.testing.assert_close(layer(x).double(), acc * scale * layer.w_scale.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("compute", ["emulated", "scaled_mm"])
@pytest.mark.parametrize(
    ("fmt", "gran", "act_gran"),
    [(F.FP8_E4M3, "tensor", "tensor"), (F.FP8_E5M2, "channel", "token")],
    ids=["e4m3-tensor", "e5m2-channel-token"],
)
def test_fp8_linear_matches_float64_product_of_fp8_values(gen, compute, fmt, gran, act_gran) -> None:
    w, b = _weight(gen), torch.randn(48, generator=gen)
    x = torch.randn(33, 96, generator=gen)
    s_x = float(x.abs().max()) / fmt.max
    spec = _spec("fp8", w, fmt.name, gran, act_gran, compute)
    layer = build_layer(spec, encode_weight(w, fmt, gran), b, s_x if act_gran == "tensor" else None)
    assert isinstance(layer, FP8Linear) and layer.w_codes.dtype == fmt.torch_dtype
    xq = quantize(
        x, fmt, "tensor" if act_gran == "tensor" else "row", scale=s_x if act_gran == "tensor" else "absmax"
    )
    ref = xq.dequantize(torch.float64) @ layer.dequantized_weight().double().t() + b.double()
    # float32 accumulation of exact FP8 products over K=96: relative error ~1e-7 of the magnitudes
    torch.testing.assert_close(layer(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_scaled_mm_and_emulation_agree(gen) -> None:
    w, x = _weight(gen), torch.randn(64, 96, generator=gen)
    bufs = encode_weight(w, F.FP8_E4M3)
    outs = [
        build_layer(_spec("fp8", w, "fp8-e4m3", compute=c, bias=False), bufs, None, 0.01)(x)
        for c in ("emulated", "scaled_mm")
    ]
    # both sum exact products in float32, in different orders: equal up to accumulation rounding
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_layer_errors(gen) -> None:
    w = _weight(gen)
    with pytest.raises(ValueError, match="act_scale"):
        build_layer(_spec("int8", w, "int8", bias=False), encode_weight(w, F.INT8), None)
    with pytest.raises(ValueError, match="has_bias"):
        build_layer(_spec("int8", w, "int8"), encode_weight(w, F.INT8), None, 0.1)
    with pytest.raises(ValueError, match="kind"):
        LayerSpec("int3", 4, 4, "int8", "tensor")
    with pytest.raises(ValueError, match="unknown format"):
        LayerSpec("int8", 4, 4, "int9x", "tensor")
    layer = build_layer(_spec("int8", w, "int8", bias=False), encode_weight(w, F.INT8), None, 0.1)
    with pytest.raises(ValueError, match="last dim 96"):
        layer(torch.zeros(2, 95))


@pytest.mark.parametrize("fmt", [F.INT8, F.FP8_E4M3, F.FP8_E5M2], ids=["int8", "e4m3", "e5m2"])
def test_static_activation_codes_equal_the_quantizer(gen, fmt) -> None:
    """The layers' fused static activation quantizer gives quantize()'s codes bit for bit."""
    s_x = torch.tensor(0.0625)
    grid = fmt.codes().float() * s_x
    mids = (grid[1:] + grid[:-1]) / 2  # ties: half to even
    x = torch.cat([grid, mids, torch.randn(500, generator=gen) * 3, grid[-1:] * 5, -grid[-1:] * 5])
    got = quantize_static(x, fmt, s_x)
    ref = quantize(x, fmt, "tensor", scale=s_x).codes
    assert got.dtype == ref.dtype
    assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        quantize_static(torch.tensor([1.0, float("nan")]), fmt, s_x)
