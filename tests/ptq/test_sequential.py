"""Sequential / asymmetric GPTQ and act-order: float64 least-squares references and the objective reduced."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

import lowbit.formats as F
from lowbit import ptq
from lowbit.experiments.ptq_formats import config_for, parse_formats
from lowbit.ptq.calibrate import observe_linears
from lowbit.ptq.gptq import asymmetric_target, gptq_round
from lowbit.ptq.sequential import fake_quant_activation, input_groups
from lowbit.ptq.weights import encode_weight
from lowbit.rounding import round_to_format


def _layer_problem(seed: int, n: int = 24, k: int = 48, m: int = 1500):
    """FP32-model inputs X, quantized-model inputs X̂ (upstream noise, then E4M3-rounded) and a weight."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) @ (torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k))
    noisy = x + 0.05 * torch.randn(m, k, generator=g) + 0.02 * x @ torch.randn(k, k, generator=g) / k**0.5
    x_hat = fake_quant_activation(noisy, F.FP8_E4M3, float(noisy.abs().max()) / 448)
    return x, x_hat, torch.randn(n, k, generator=g)


def _asym_objective(x, x_hat, w, q) -> float:
    return float((x.double() @ w.double().t() - x_hat.double() @ q.double().t()).pow(2).sum())


def test_asymmetric_target_is_the_least_squares_solution() -> None:
    x, x_hat, w = _layer_problem(0)
    gram, cross = x_hat.double().t() @ x_hat.double(), x_hat.double().t() @ x.double()
    got = asymmetric_target(w, gram, cross, damp=0.0)
    ref = torch.linalg.lstsq(x_hat.double(), x.double() @ w.double().t()).solution.t()
    assert torch.allclose(got.double(), ref, atol=1e-4)
    # the constant-offset identity that makes GPTQ-on-W* the asymmetric GPTQ
    v = w + 0.1 * torch.randn_like(w)
    const = _asym_objective(x, x_hat, w, ref)
    rounding = float((x_hat.double() @ (ref - v.double()).t()).pow(2).sum())
    assert _asym_objective(x, x_hat, w, v) == pytest.approx(const + rounding, rel=1e-9)
    # damping pulls W* toward W (not toward 0); without upstream error W* is W
    heavy = asymmetric_target(w, gram, cross, damp=1e6)
    assert torch.allclose(heavy, w, atol=1e-4)
    assert torch.allclose(asymmetric_target(w, gram, gram), w, atol=1e-6)
    with pytest.raises(ValueError, match="cross"):
        asymmetric_target(w, gram, cross[:-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asymmetric_gptq_reduces_the_asymmetric_objective(seed: int) -> None:
    x, x_hat, w = _layer_problem(seed)
    gram, cross = x_hat.double().t() @ x_hat.double(), x_hat.double().t() @ x.double()
    fmt = F.FP8_E4M3
    s = w.abs().amax(1, keepdim=True) / fmt.max
    plain = gptq_round(w / s, gram, fmt) * s  # GPTQ on the quantized model's inputs, target W
    w_star = asymmetric_target(w, gram, cross)
    s_star = w_star.abs().amax(1, keepdim=True) / fmt.max
    asym_units = gptq_round(w_star / s_star, gram, fmt)
    assert torch.equal(round_to_format(asym_units, fmt), asym_units)  # on the grid
    asym = asym_units * s_star
    nearest = round_to_format(w / s, fmt) * s
    obj = {k: _asym_objective(x, x_hat, w, q) for k, q in (("n", nearest), ("p", plain), ("a", asym))}
    assert obj["a"] < 0.97 * obj["p"] < 0.97 * obj["n"]


def test_act_order_permutes_columns_by_gram_diagonal() -> None:
    g = torch.Generator().manual_seed(4)
    k = 40
    x = torch.randn(300, k, generator=g)
    x = x / x.norm(dim=0) * 1.1 ** torch.arange(k)  # column norms (the Gram diagonal) increase with the index
    gram = x.double().t() @ x.double()
    w = torch.randn(8, k, generator=g) * 20.0
    got = gptq_round(w, gram, F.FP8_E4M3, act_order=True)
    rev = torch.arange(k - 1, -1, -1)  # decreasing diagonal = reversed columns here
    assert torch.equal(torch.argsort(torch.diagonal(gram), descending=True), rev)
    ref = gptq_round(w[:, rev], gram[rev][:, rev], F.FP8_E4M3)[:, rev]
    assert torch.equal(got, ref)
    assert not torch.equal(got, gptq_round(w, gram, F.FP8_E4M3))  # the order matters


def test_input_groups_share_one_input(tiny_bert, batches) -> None:
    names = ptq.select_linears(tiny_bert)
    groups = input_groups(tiny_bert, names, batches[0])
    assert groups[0] == [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    assert [len(gr) for gr in groups] == [3, 1, 1, 1] * 2
    assert [n for gr in groups for n in gr] == names


def test_gptq_seq_first_layer_uses_activation_rounded_inputs(tiny_bert, batches) -> None:
    """With one selected layer the sequential Gram is that of its E4M3-rounded calibration inputs."""
    name = "encoder.layer.0.intermediate.dense"
    calib = ptq.calibrate(tiny_bert, batches)
    cfg = ptq.PTQConfig("fp8-e4m3", "fp8-e4m3", "channel", modules=(name,), weight_rounding="gptq-seq")
    model = copy.deepcopy(tiny_bert)
    ptq.quantize(model, cfg, calib)
    scale = calib.scale(name, F.FP8_E4M3)
    gram = torch.zeros(64, 64, dtype=torch.float64)

    def add(_n, x2, _y2):
        nonlocal gram
        xq = fake_quant_activation(x2, F.FP8_E4M3, scale).double()
        gram += xq.t() @ xq

    observe_linears(tiny_bert, [name], calib.inputs, add)
    ref = encode_weight(tiny_bert.get_submodule(name).weight, F.FP8_E4M3, "channel", gram=gram)
    layer = model.get_submodule(name)
    assert torch.equal(layer.w_codes.float(), ref["w_codes"].float())
    assert torch.equal(layer.w_scale, ref["w_scale"])


def _last_layer_error(model, reference, name, batches) -> float:
    outs: dict[str, list[torch.Tensor]] = {"q": [], "r": []}
    observe_linears(model, [name], batches, lambda _n, _x, y: outs["q"].append(y))
    observe_linears(reference, [name], batches, lambda _n, _x, y: outs["r"].append(y))
    return float((torch.cat(outs["q"]) - torch.cat(outs["r"])).double().pow(2).sum())


@pytest.mark.parametrize("act_gran", ["tensor", "token"])
def test_gptq_asym_pulls_toward_the_fp32_output(tiny_bert, act_gran) -> None:
    """On the calibration tokens, the last layer's output is closer to FP32 with the asymmetric objective."""
    g = torch.Generator().manual_seed(5)
    batches = [
        {"input_ids": torch.randint(1, 120, (8, 16), generator=g), "attention_mask": torch.ones(8, 16).long()}
        for _ in range(6)
    ]
    calib = ptq.calibrate(tiny_bert, batches)
    last = "encoder.layer.1.output.dense"
    err = {}
    for rounding in ("gptq", "gptq-seq", "gptq-asym"):
        model = copy.deepcopy(tiny_bert)
        cfg = ptq.PTQConfig("fp8-e4m3", "fp8-e4m3", "channel", act_gran, weight_rounding=rounding)
        summary = ptq.quantize(model, cfg, calib)
        assert summary.weight_ratio <= 0.27 and len(summary.layers) == 12
        err[rounding] = _last_layer_error(model, tiny_bert, last, batches)
    assert err["gptq-asym"] < 0.8 * min(err["gptq"], err["gptq-seq"])


def test_config_and_cli_names() -> None:
    cfg = ptq.PTQConfig("fp8-e4m3", "fp8-e4m3", "channel", "token", weight_rounding="gptq-asym")
    assert cfg.describe() == "W fp8-e4m3/channel A fp8-e4m3/token +gptq-asym" and cfg.needs_calibration
    with pytest.raises(ValueError, match="weight_rounding"):
        ptq.PTQConfig(weight_rounding="gptq-sym")
    with pytest.raises(ValueError, match="act_order"):
        ptq.PTQConfig(gptq_act_order=True)
    args = argparse.Namespace(
        granularity="tensor",
        act_granularity="tensor",
        observer="max",
        percentile=99.99,
        fp8_compute="emulated",
    )
    (entry,) = parse_formats("fp8-e4m3/channel/token+gptq-asym+ao", args)
    got = config_for(entry, args)
    assert got.weight_rounding == "gptq-asym" and got.gptq_act_order and got.activation_granularity == "token"
    for bad in ("fp8-e4m3+gptq+gptq-asym", "fp8-e4m3+ao", "fp8-e4m3+gptq-foo"):
        with pytest.raises(ValueError, match="options"):
            parse_formats(bad, args)
