"""The fused FP8 steps of FP8Linear: native kernels bit for bit against the torch definitions."""

from __future__ import annotations

import copy

import pytest
import torch

from lowbit import ptq
from lowbit.formats import FP8_E4M3, FP8_E5M2, get_format
from lowbit.ops import native, native_bf16, native_gemm, reference
from lowbit.ptq import fp8_kernels as K
from lowbit.quantizers import quantize

needs_native = pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native")
FP8 = [FP8_E4M3, FP8_E5M2]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _torch_cast(x: torch.Tensor, fmt, s) -> torch.Tensor:
    """The FP8 layer's definition: divide, saturate, cast to float8 (round half to even), back to float32."""
    return (x / s).clamp(-fmt.max, fmt.max).to(fmt.torch_dtype).float()


def _every_bf16_value() -> torch.Tensor:
    """All finite bfloat16 bit patterns as float32 (every binade, sign and zero, 65,280 values)."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    return x[torch.isfinite(x)].reshape(-1, 255)


@needs_native
@pytest.mark.parametrize("fmt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("s", [1.0, 0.37, 2.0**-10])
def test_round_every_bf16_value_per_tensor(fmt, s) -> None:
    x = _every_bf16_value()
    got = K.round_to_grid(x, fmt, s, backend="native")
    assert torch.equal(_bits(got), _bits(K.round_to_grid(x, fmt, s, backend="reference")))
    assert torch.equal(_bits(got), _bits(_torch_cast(x, fmt, torch.tensor(s))))


@needs_native
@pytest.mark.parametrize("fmt", FP8, ids=["e4m3", "e5m2"])
def test_ties_and_their_neighbours_round_like_the_cast(fmt) -> None:
    grid = torch.arange(256, dtype=torch.uint8).view(fmt.torch_dtype).float()
    grid = torch.unique(grid[torch.isfinite(grid)])  # sorted, -max .. max, one zero
    mid = (grid[:-1] + grid[1:]) / 2  # exact ties between neighbours (float32 holds them exactly)
    x = torch.cat([grid, mid, torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1)])
    x = torch.cat([x, torch.tensor([fmt.max * 1.01, -fmt.max * 3, 1e30, -1e30, 0.0, -0.0, 1e-30, -1e-30])])
    x = x.reshape(1, -1)
    got = K.round_to_grid(x, fmt, 1.0, backend="native")
    assert torch.equal(_bits(got), _bits(_torch_cast(x, fmt, torch.tensor(1.0))))
    assert torch.equal(_bits(got), _bits(K.round_to_grid(x, fmt, 1.0, backend="reference")))
    assert float(got.abs().max()) == fmt.max  # saturation, never Inf
    neg_zero = _bits(torch.tensor([-0.0])).item()
    assert _bits(got[:, -4]).item() == 0 and _bits(got[:, -3]).item() == neg_zero  # the signs of zero kept
    assert _bits(got[:, -2]).item() == 0 and _bits(got[:, -1]).item() == neg_zero  # underflow keeps the sign


@needs_native
@pytest.mark.parametrize("name", ["fp8-e4m3", "fp8-e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 8), (33, 257), (130, 1024)])
def test_round_per_row_and_odd_shapes_match_the_quantizer(name, shape) -> None:
    fmt = get_format(name)
    gen = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    x = torch.randn(shape, generator=gen) * torch.logspace(-6, 3, shape[0]).unsqueeze(1)
    q = quantize(x, fmt, "row")  # per-row absmax steps; codes = the reference rounding
    got = K.round_to_grid(x, fmt, q.scale, backend="native")
    assert torch.equal(_bits(got), _bits(q.codes.float()))
    step = torch.rand(()) + 0.5  # one static step for the tensor
    want = quantize(x, fmt, scale=step).codes.float()
    assert torch.equal(_bits(K.round_to_grid(x, fmt, float(step), backend="native")), _bits(want))


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_round_rejects_bad_input(backend) -> None:
    if backend == "native" and not native.available():
        pytest.skip(native.why_not_native())
    x = torch.randn(4, 9)
    x[1, 3], x[2, 8] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="1 NaN and 1 infinite"):
        K.round_to_grid(x, FP8_E4M3, 0.1, backend=backend)
    with pytest.raises(ValueError, match="1 or 4"):
        K.round_to_grid(torch.randn(4, 9), FP8_E4M3, torch.ones(3), backend=backend)
    with pytest.raises(TypeError, match="2-D float32"):
        K.round_to_grid(torch.randn(4, 9, dtype=torch.float64), FP8_E4M3, 0.1, backend=backend)


@pytest.mark.parametrize("act_gran", ["tensor", "token"])
def test_fp8_layer_outputs_equal_the_unfused_definition(tiny_bert, batches, act_gran) -> None:
    """The emulated FP8 layer gives exactly the old six-pass arithmetic's outputs (same GEMM inputs)."""
    model = copy.deepcopy(tiny_bert)
    cfg = ptq.PTQConfig(activation_granularity=act_gran, fp8_compute="emulated")
    ptq.quantize(model, cfg, ptq.calibrate(model, batches[:2]))
    layer = model.encoder.layer[0].attention.self.query
    x = torch.randn(3, 5, layer.in_features)
    x2 = x.reshape(-1, layer.in_features)
    if act_gran == "tensor":
        a, sa = ptq.modules.quantize_static(x2, FP8_E4M3, layer.act_scale).float(), layer.act_scale
    else:
        q = quantize(x2, FP8_E4M3, "row")
        a, sa = q.codes.float(), q.scale
    acc = a @ layer.w_codes.float().t()
    want = torch.addcmul(layer.bias, acc, sa * layer.w_scale) if sa.numel() == 1 else acc * sa * layer.w_scale
    want = want if sa.numel() == 1 else want + layer.bias
    assert torch.equal(layer(x).reshape(-1, layer.out_features), want)
    # quantization carries no gradient (as quantize() detaches): a grad-tracking input gives a plain output
    assert not layer(x.clone().requires_grad_()).requires_grad


@needs_native
@pytest.mark.parametrize("name", ["mxfp8-e4m3", "mxfp8-e5m2", "mxfp6-e2m3", "mxfp6-e3m2", "mxfp4", "mxint8"])
def test_mx_fake_quantize_matches_quantize_dequantize(name) -> None:
    fmt = get_format(name)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(37, 96, generator=gen) * torch.logspace(-30, 20, 37).unsqueeze(1)
    x[3] = 0.0  # an all-zero row: blocks of zeros take scale 1
    x[5, :32] = torch.linspace(-1, 1, 32)  # exact ties of the element grid after scaling
    want = quantize(x, fmt).dequantize()
    got = K.mx_fake_quantize(x, fmt)
    assert torch.equal(_bits(got), _bits(want))


needs_bf16 = pytest.mark.skipif(
    not native_bf16.has_bf16_dot(), reason=native.why_not_native() or "this CPU lacks avx512_bf16 (vdpbf16ps)"
)


@needs_bf16
@pytest.mark.parametrize("act_gran", ["tensor", "token"])
def test_fp8_layer_on_bf16_dot_is_exact_products_with_float32_sums(tiny_bert, batches, act_gran) -> None:
    """bf16_dot: the products of the FP8 grid values are exact; the float32 sums run in the order of
    ``reference.bf16_dot_matmul`` bit for bit, and stay within the float32 accumulation bound of float64."""
    model = copy.deepcopy(tiny_bert)
    cfg = ptq.PTQConfig(activation_granularity=act_gran, fp8_compute="bf16_dot")
    ptq.quantize(model, cfg, ptq.calibrate(model, batches[:2]))
    layer = model.encoder.layer[0].attention.self.query
    assert "vdpbf16ps" in layer.compute_path()
    x2 = torch.randn(15, layer.in_features)
    if act_gran == "tensor":
        a, sa = ptq.modules.quantize_static(x2, FP8_E4M3, layer.act_scale).float(), layer.act_scale
    else:
        q = quantize(x2, FP8_E4M3, "row")
        a, sa = q.codes.float(), q.scale
    w = layer.w_codes.float()
    got = layer(x2)
    acc = reference.bf16_dot_matmul(a, w)
    want = acc * sa.reshape(-1, 1).expand(15, 1) * layer.w_scale.reshape(1, -1) + layer.bias
    assert torch.equal(got, want)
    scale = sa.double().reshape(-1, 1) * layer.w_scale.double()
    exact = (a.double() @ w.double().t()) * scale + layer.bias.double()
    magnitude = (a.double().abs() @ w.double().abs().t()) * scale
    bound = layer.in_features * 2**-23 * magnitude + 1e-6 * exact.abs() + 1e-7
    assert bool(((got.double() - exact).abs() <= bound).all())


@needs_bf16
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (7, 17, 3), (13, 70, 33), (50, 130, 769), (6, 64, 2)])
def test_bf16_kernel_matches_its_reference_order(m, n, k) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    a = (torch.randn(m, k, generator=gen) * 8).to(torch.float8_e4m3fn).float()
    w = (torch.randn(n, k, generator=gen) * 8).to(torch.float8_e5m2).float()
    a[0, 0], w[0, 0] = 448.0, 57344.0  # extreme E4M3 / E5M2 values
    sa, sb = torch.rand(m, generator=gen) + 0.5, torch.rand(n, generator=gen) + 0.5
    bias = torch.randn(n, generator=gen)
    out = torch.empty(m, n)
    native_bf16.bf16_matmul_scaled(a, native_bf16.pack_bf16(w, native_gemm.NR), n, sa, sb, bias, out)
    want = reference.bf16_dot_matmul(a, w) * sa.reshape(-1, 1) * sb.reshape(1, -1) + bias
    assert torch.equal(out, want)


def test_bf16_dot_refused_where_unavailable(monkeypatch, tiny_bert, batches) -> None:
    model = copy.deepcopy(tiny_bert)
    monkeypatch.setattr(native_bf16, "has_bf16_dot", lambda: False)
    ptq.quantize(model, ptq.PTQConfig(fp8_compute="bf16_dot"), ptq.calibrate(model, batches[:2]))
    layer = model.encoder.layer[0].attention.self.query
    with pytest.raises(RuntimeError, match="avx512_bf16|AVX512-BF16"):
        layer(torch.randn(2, layer.in_features))
    model2 = copy.deepcopy(tiny_bert)
    ptq.quantize(model2, ptq.PTQConfig(), ptq.calibrate(model2, batches[:2]))
    assert "emulated" in model2.encoder.layer[0].attention.self.query.compute_path()  # auto falls back


@needs_bf16
@pytest.mark.parametrize("fmt_name", ["mxfp8-e4m3", "mxfp8-e5m2", "mxfp4", "mxint8"])  # storable MX weights
def test_mx_layer_on_bf16_dot_is_exact_products_with_float32_sums(fmt_name) -> None:
    """MX W+A layers multiply on vdpbf16ps: their dequantized values (element x 2^scale) are exact bf16, so
    the output is reference.bf16_dot_matmul of those values bit for bit, within float32's bound of float64."""
    from lowbit.ptq.modules import LayerSpec, build_layer
    from lowbit.ptq.weights import decode_weight, encode_weight

    gen = torch.Generator().manual_seed(7)
    k, n, m = 96, 40, 13
    fmt = get_format(fmt_name)
    w = torch.randn(n, k, generator=gen) * 0.05
    b = torch.randn(n, generator=gen)
    bufs = encode_weight(w, fmt)
    layer = build_layer(LayerSpec("emulated", k, n, fmt.name, "tensor", None, fmt.name, "block"), bufs, b)
    assert "vdpbf16ps" in layer.compute_path()
    x = torch.randn(m, k, generator=gen)
    xq = K.mx_fake_quantize(x, fmt)
    wq = decode_weight(bufs, fmt, (n, k))
    for t in (xq, wq):  # the premise: every operand value is an exact bf16 value
        assert torch.equal(t, t.bfloat16().float())
    got = layer(x)
    assert torch.equal(got, reference.bf16_dot_matmul(xq, wq) + b)
    exact = xq.double() @ wq.double().t() + b.double()
    bound = k * 2**-23 * (xq.double().abs() @ wq.double().abs().t()) + 1e-6 * exact.abs() + 1e-7
    assert bool(((got.double() - exact).abs() <= bound).all())
    with torch.enable_grad():  # where a gradient is needed the layer keeps the differentiable float32 GEMM
        assert not layer.uses_bf16_dot(x.clone().requires_grad_())
