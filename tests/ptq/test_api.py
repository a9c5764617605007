"""quantize(model, config) on a tiny BertModel: selection, dispatch, bytes, fidelity, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lowbit import ptq
from lowbit.formats import INT8
from lowbit.ptq import FP8Linear, Int8Linear, PTQConfig, WeightOnlyConfig

ENCODER_LINEARS = 12  # 2 layers x (query, key, value, attention out, intermediate, output)


def _out(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_default_selection_is_every_encoder_linear(tiny_bert) -> None:
    names = ptq.select_linears(tiny_bert)
    assert len(names) == ENCODER_LINEARS and all(n.startswith("encoder.layer.") for n in names)
    assert "pooler.dense" not in names


def test_explicit_selection_and_errors(tiny_bert) -> None:
    assert ptq.select_linears(tiny_bert, ["encoder.layer.*.attention.self.query"]) == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.1.attention.self.query",
    ]
    assert len(ptq.select_linears(tiny_bert, exclude=("*intermediate*",))) == ENCODER_LINEARS - 2
    with pytest.raises(ValueError, match="not found"):
        ptq.select_linears(tiny_bert, ["encoder.layer.9.query"])
    with pytest.raises(TypeError, match="not an nn.Linear"):
        ptq.select_linears(tiny_bert, ["embeddings.LayerNorm"])
    with pytest.raises(ValueError, match="no nn.Linear under"):
        ptq.select_linears(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize(
    ("config", "layer_type", "min_cos"),
    [
        (PTQConfig("fp8-e4m3", "fp8-e4m3"), FP8Linear, 0.999),
        (PTQConfig("fp8-e5m2", "fp8-e5m2", weight_granularity="channel"), FP8Linear, 0.99),
        (PTQConfig("int8", "int8"), Int8Linear, 0.999),
        (PTQConfig("int8", "int8", "channel", "token"), Int8Linear, 0.999),
        (PTQConfig("mxfp8-e4m3", "mxfp8-e4m3"), ptq.EmulatedLinear, 0.999),
        (WeightOnlyConfig("int4", "group", group_size=32), ptq.EmulatedLinear, 0.99),
        (WeightOnlyConfig("mxfp4"), ptq.EmulatedLinear, 0.99),
    ],
    ids=["e4m3", "e5m2-channel", "int8", "int8-channel-token", "mxfp8", "int4-w-only", "mxfp4-w-only"],
)
def test_quantize_replaces_layers_and_stays_close(tiny_bert, batches, config, layer_type, min_cos) -> None:
    ref = _out(tiny_bert, batches[2])
    model = copy.deepcopy(tiny_bert)
    calib = ptq.calibrate(model, batches[:2])
    summary = ptq.quantize(model, config, calib)
    quantized = [m for m in model.modules() if isinstance(m, ptq.PTQLinear)]
    assert len(quantized) == ENCODER_LINEARS and all(isinstance(m, layer_type) for m in quantized)
    assert isinstance(model.pooler.dense, torch.nn.Linear) and summary.kept_fp32 == ["pooler.dense"]
    assert not any(isinstance(m, torch.nn.Linear) for m in model.encoder.modules())  # no FP32 copy left
    out = _out(model, batches[2])
    cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > min_cos
    assert not torch.equal(out, ref)
    limit = 0.27 if config.weight.bits == 8 else 0.17
    assert summary.weight_bytes <= limit * summary.weight_bytes_fp32
    assert summary.model_bytes_after < summary.model_bytes_before
    assert summary.weight_bytes == sum(m.weight_nbytes() for m in quantized)
    text = str(summary)  # print(summary) is the readable table, not the dataclass dump
    assert text == summary.table() and text.startswith(f"PTQ {config.describe()}: {ENCODER_LINEARS} linears")


def test_static_scales_come_from_calibration(tiny_bert, batches) -> None:
    calib = ptq.calibrate(tiny_bert, batches, observer="max")
    model = copy.deepcopy(tiny_bert)
    summary = ptq.quantize(model, PTQConfig("fp8-e4m3", "fp8-e4m3"), calib)
    name = "encoder.layer.0.attention.self.query"
    seen = []
    handle = tiny_bert.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    for b in batches:
        _out(tiny_bert, b)
    handle.remove()
    amax = max(float(x.abs().max()) for x in seen)
    report = next(r for r in summary.layers if r.name == name)
    assert report.act_scale == pytest.approx(amax / 448, rel=1e-6)


def test_dispatch_and_config_errors(tiny_bert, batches) -> None:
    with pytest.raises(TypeError, match="known configs: PTQConfig, WeightOnlyConfig"):
        ptq.quantize(tiny_bert, {"weight": "fp8"})
    with pytest.raises(ValueError, match="calibrate"):
        ptq.quantize(copy.deepcopy(tiny_bert), PTQConfig("int8", "int8"))
    with pytest.raises(ValueError, match="unknown format"):
        PTQConfig("float8", "fp8-e4m3")
    with pytest.raises(ValueError, match="WeightOnlyConfig"):
        PTQConfig("fp8-e4m3", "int8")
    with pytest.raises(ValueError, match="WeightOnlyConfig"):
        PTQConfig("int4", "int4")
    with pytest.raises(ValueError, match="both be MX"):
        PTQConfig("mxfp4", "fp8-e4m3")
    with pytest.raises(ValueError, match="group_size"):
        WeightOnlyConfig("int4", "group")
    with pytest.raises(ValueError, match="observer"):
        ptq.calibrate(tiny_bert, batches, observer="minmax")
    with pytest.raises(ValueError, match="no batches"):
        ptq.calibrate(tiny_bert, [])
    model = copy.deepcopy(tiny_bert)
    ptq.quantize(model, PTQConfig("int8", "int8", activation_granularity="token"))  # dynamic: no calibration
    with pytest.raises(ValueError, match="already holds quantized"):
        ptq.quantize(model, PTQConfig("int8", "int8", activation_granularity="token"))


def test_failure_on_a_later_layer_leaves_the_model_untouched() -> None:
    model = torch.nn.Module()
    model.encoder = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 8))
    with pytest.raises(
        ValueError, match="does not divide"
    ):  # the second layer's K=48 is not a multiple of 32
        ptq.quantize(model, WeightOnlyConfig("int4", "group", group_size=32))
    assert all(type(m) is torch.nn.Linear for m in model.encoder)


def test_config_observer_applies_any_rule_to_one_calibration(tiny_bert, batches) -> None:
    calib = ptq.calibrate(tiny_bert, batches)  # default rule: max
    name = "encoder.layer.1.output.dense"
    scales = {}
    for rule in ("max", ("percentile", 90.0), "mse"):
        model = copy.deepcopy(tiny_bert)
        summary = ptq.quantize(model, PTQConfig("int8", "int8", observer=rule), calib)
        scales[str(rule)] = next(r.act_scale for r in summary.layers if r.name == name)
        expected = calib.observers[name].scale(INT8, ptq.ObserverSpec.parse(rule))
        assert scales[str(rule)] == pytest.approx(expected, rel=1e-7)
    obs = calib.observers[name]
    assert scales["max"] == pytest.approx(obs.amax / 127, rel=1e-6)
    assert scales[str(("percentile", 90.0))] < 0.8 * scales["max"]  # the 90th percentile clips hard
    assert scales["mse"] <= scales["max"]
    assert PTQConfig("int8", "int8", observer="mse").describe() == "W int8/tensor A int8/tensor (mse)"
    assert PTQConfig("int8", "int8", "channel").describe() == "W int7/channel A int8/tensor"  # auto: w7
    assert PTQConfig("int8", "int8", int8_kernel="w7").describe() == "W int7/tensor A int8/tensor"
    assert PTQConfig("int8", "int8", int8_kernel="a7").describe() == "W int8/tensor A int7/tensor"
    with pytest.raises(ValueError, match="int8_kernel"):
        PTQConfig("int8", "int8", int8_kernel="w6")


@pytest.mark.parametrize("kernel", ["w7", "a7", "exact"])
@pytest.mark.parametrize("act_gran", ["tensor", "token"])
def test_int8_kernels_code_ranges_and_exact_integer_products(tiny_bert, batches, kernel, act_gran) -> None:
    """Each int8_kernel stores the promised code ranges and every layer equals the float64 integer product."""
    calib = ptq.calibrate(tiny_bert, batches)
    model = copy.deepcopy(tiny_bert)
    ptq.quantize(model, PTQConfig("int8", "int8", activation_granularity=act_gran, int8_kernel=kernel), calib)
    name = "encoder.layer.1.output.dense"
    layer = model.get_submodule(name)
    w_bound = 63 if kernel == "w7" else 127
    assert int(layer.w_codes.abs().max()) == w_bound  # absmax scaling reaches the bound exactly
    assert layer.w_codes.dtype == torch.int8 and layer.spec.int8_kernel == kernel
    x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(3))
    x2 = x.reshape(-1, layer.in_features).double()
    if act_gran == "tensor":
        obs = calib.observers[name]
        s_x = torch.tensor(obs.amax / (63 if kernel == "a7" else 127), dtype=torch.float32).double()
        assert float(layer.act_scale) == pytest.approx(float(s_x), rel=1e-7)
        lo, hi = (-64, 63) if kernel == "a7" else (-128, 127)
        codes = torch.round(x2 / s_x).clamp(lo, hi)
    else:
        qmax = 63 if kernel == "a7" else 127
        s_x = (x2.float().abs().amax(1, keepdim=True) / qmax).double()
        codes = torch.round(x2 / s_x)
    ref = (codes @ layer.w_codes.double().t()) * s_x * layer.w_scale.double() + layer.bias.double()
    torch.testing.assert_close(layer(x).reshape(-1, layer.out_features).double(), ref, rtol=1e-5, atol=1e-5)
    assert ("u8 x s8" in layer.compute_path()) == (kernel != "exact")


def test_meta_model_is_named(tiny_bert, batches) -> None:
    """Issue 14 #14 (PTQ side): calibrate on a meta model failed in Tensor.item(); weight-only quantize of
    a meta model now names the meta device too (from lowbit.quantize)."""
    meta = copy.deepcopy(tiny_bert).to("meta")
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        ptq.calibrate(meta, batches[:1])
    with pytest.raises(ValueError, match="meta device"):
        ptq.quantize(copy.deepcopy(tiny_bert).to("meta"), WeightOnlyConfig("int4", "group", group_size=32))
    with pytest.raises(TypeError, match="nn.Module"):
        ptq.calibrate("bert", batches[:1])
