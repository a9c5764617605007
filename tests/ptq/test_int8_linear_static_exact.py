"""Int8Linear with a static per-tensor activation scale: fused ops.linear on a cached PackedWeight,
bit for bit the unfused quantize_static + int_matmul_scaled product."""

from __future__ import annotations

import pytest
import torch

import lowbit.formats as F
from lowbit import ops
from lowbit.ptq.modules import LayerSpec, build_layer, quantize_static
from lowbit.ptq.weights import encode_weight


def _layer(gen, kernel: str, k: int = 96, n: int = 40, gran: str = "channel"):
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, 3] *= 20  # an outlier input channel
    b = torch.randn(n, generator=gen)
    wfmt = F.INT7 if kernel == "w7" else F.INT8
    afmt = F.INT7 if kernel == "a7" else F.INT8
    x = torch.randn(3, 150, k, generator=gen)
    s_x = float(x.abs().max()) / afmt.max * 0.6  # the largest 40% of the range saturates
    spec = LayerSpec("int8", k, n, "int8", gran, None, "int8", "tensor", None, True, kernel)
    return build_layer(spec, encode_weight(w, wfmt, gran), b, s_x), x, afmt


def _unfused(layer, x2, afmt):
    codes = quantize_static(x2, afmt, layer.act_scale)
    return ops.int_matmul_scaled(
        codes, layer.w_codes, layer.act_scale, layer.w_scale, layer.bias, bits=8, backend="reference"
    )


@pytest.mark.parametrize("kernel", ["exact", "w7", "a7"])
@pytest.mark.parametrize("gran", ["tensor", "channel"])
def test_static_int8_layer_is_the_unfused_product(gen, kernel, gran) -> None:
    layer, x, afmt = _layer(gen, kernel, gran=gran)
    y = layer(x)
    want = _unfused(layer, x.reshape(-1, x.shape[-1]), afmt)
    assert torch.equal(y.reshape(-1, y.shape[-1]), want)
    codes = quantize_static(x.reshape(-1, x.shape[-1]), afmt, layer.act_scale)
    assert int(codes.min()) == afmt.qmin and int(codes.max()) == afmt.qmax  # saturation on both sides
    for rows in (1, 7):  # small batches take the unfused native form
        assert torch.equal(layer(x[0, :rows]), want[:rows])


def test_static_layer_packs_once_and_repacks_on_new_weights(gen) -> None:
    layer, x, afmt = _layer(gen, "w7")
    layer(x)
    first = layer.packed_weight()
    layer(x)
    assert layer.packed_weight() is first
    with torch.no_grad():
        layer.w_codes[0, 0] = -layer.w_codes[0, 0] - 1
    y = layer(x)
    assert layer.packed_weight() is not first
    assert torch.equal(y.reshape(-1, y.shape[-1]), _unfused(layer, x.reshape(-1, x.shape[-1]), afmt))


def test_static_layer_rejects_non_finite_input(gen) -> None:
    layer, x, _ = _layer(gen, "exact")
    x[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        layer(x)
