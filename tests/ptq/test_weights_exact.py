"""decode_weight's native one-pass decode: bit for bit the torch expression, for every stored code type."""

from __future__ import annotations

import copy

import pytest
import torch

from lowbit import ptq
from lowbit.formats import get_format
from lowbit.ops import native
from lowbit.ptq import weights

pytestmark = pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native")

CASES = [  # (format, granularity, group size)
    ("int4", "tensor", None),
    ("int4", "channel", None),
    ("int4", "group", 32),
    ("int4", "group", 2),
    ("int8", "tensor", None),
    ("int8", "channel", None),
    ("int8", "group", 16),
    ("fp8-e4m3", "tensor", None),
    ("fp8-e4m3", "channel", None),
    ("fp8-e5m2", "channel", None),
    ("mxfp8-e4m3", "tensor", None),
    ("mxfp4", "tensor", None),
    ("mxint8", "tensor", None),
]


def _torch_decode(buffers, fmt, shape, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(weights.native, "available", lambda: False)
        return weights.decode_weight(buffers, fmt, shape)


@pytest.mark.parametrize(("name", "gran", "group"), CASES)
@pytest.mark.parametrize("shape", [(1, 64), (7, 96), (130, 256)])  # K a multiple of the MX block (32)
def test_native_decode_matches_torch(name, gran, group, shape, monkeypatch) -> None:
    fmt = get_format(name)
    gen = torch.Generator().manual_seed(shape[0] + shape[1])
    w = torch.randn(shape, generator=gen) * torch.logspace(-3, 1, shape[0]).unsqueeze(1)
    buffers = weights.encode_weight(w, fmt, gran, group)
    want = _torch_decode(buffers, fmt, shape, monkeypatch)
    got = weights.decode_weight(buffers, fmt, shape)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    out = torch.full(shape, float("nan"))
    assert weights.decode_weight(buffers, fmt, shape, out=out) is out
    assert torch.equal(out.view(torch.int32), want.view(torch.int32))


def test_every_code_decodes(monkeypatch) -> None:
    """All 256 bytes of each stored code type, with a per-channel scale."""
    for dtype, fmt, k in [
        (torch.uint8, get_format("int4"), 512),
        (torch.int8, get_format("int8"), 256),
        (torch.float8_e4m3fn, get_format("fp8-e4m3"), 256),
    ]:
        bytes_ = torch.arange(256, dtype=torch.uint8).view(dtype)
        codes = bytes_.reshape(1, -1).repeat(3, 1)
        buffers = {"w_codes": codes, "w_scale": torch.tensor([1.0, 0.37, 3.0e-5])}
        want = _torch_decode(buffers, fmt, (3, k), monkeypatch)
        got = weights.decode_weight(buffers, fmt, (3, k))
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    # MXFP4: every byte (two sign-magnitude nibbles, incl. -0) with E8M0 block exponents down to 2^-127
    codes = torch.arange(256, dtype=torch.uint8).reshape(1, -1).repeat(3, 1)
    exps = torch.tensor([[0, 1, 100, 127, 128, 150, 200, 254] * 2] * 3, dtype=torch.uint8)
    buffers = {"w_codes": codes, "w_exp": exps}
    want = _torch_decode(buffers, get_format("mxfp4"), (3, 512), monkeypatch)
    got = weights.decode_weight(buffers, get_format("mxfp4"), (3, 512))
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert (got.view(torch.int32) == torch.tensor([-0.0]).view(torch.int32)).any()  # the -0 nibble


def test_bad_out_and_groups_are_named() -> None:
    buffers = weights.encode_weight(torch.randn(4, 64), get_format("int4"), "group", 32)
    with pytest.raises(ValueError, match="contiguous float32"):
        weights.decode_weight(buffers, get_format("int4"), (4, 64), out=torch.empty(4, 63))
    bad = {"w_codes": torch.zeros(4, 48, dtype=torch.int8), "w_scale": torch.ones(4, 5)}
    with pytest.raises(ValueError, match="5 scale groups"):
        weights.decode_weight(bad, get_format("int8"), (4, 48))


def test_weight_only_layer_keeps_its_outputs_and_gradients(tiny_bert, batches) -> None:
    """The layer's product equals F.linear on the torch-decoded weight; with a grad-tracking input the
    decoded weight is a fresh tensor (not the shared workspace), so the input gradient stays right."""
    model = copy.deepcopy(tiny_bert)
    ptq.quantize(model, ptq.WeightOnlyConfig("int4", "group", group_size=32))
    layer = model.encoder.layer[0].intermediate.dense
    w = layer.dequantized_weight()
    x = torch.randn(5, layer.in_features)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, w, layer.bias))
    xg = x.clone().requires_grad_()
    y = layer(xg)
    other = model.encoder.layer[1].intermediate.dense  # same shape, other weight: refills a shared workspace
    other(torch.randn(9, other.in_features))
    y.sum().backward()
    assert torch.equal(xg.grad, torch.ones(5, layer.out_features) @ w)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2])
def test_code_values_every_code_and_shape(dtype) -> None:
    codes = torch.arange(256, dtype=torch.uint8).view(dtype)
    assert torch.equal(weights.code_values(codes).view(torch.int32), codes.float().view(torch.int32))
    big = torch.randint(0, 256, (300, 1111), dtype=torch.uint8).view(dtype)
    out = torch.empty(300, 1111)
    assert weights.code_values(big, out=out) is out
    assert torch.equal(out.view(torch.int32), big.float().view(torch.int32))
    assert weights.code_values(big[:, :0]).shape == (300, 0)
    with pytest.raises(TypeError, match="int8 or float8"):
        weights.code_values(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="contiguous float32"):
        weights.code_values(big, out=torch.empty(300, 1110))
