"""GPTQ weight rounding and bias correction: against an independent float64 OBS reference and exact means."""

from __future__ import annotations

import copy

import torch

import lowbit.formats as F
from lowbit import ptq
from lowbit.ptq.calibrate import observe_linears
from lowbit.ptq.gptq import gptq_round
from lowbit.rounding import round_to_format


def _obs_reference(w: torch.Tensor, h: torch.Tensor, fmt) -> torch.Tensor:
    """Textbook optimal-brain-surgeon order (float64): round column i, move the other remaining columns by
    the error times H_F⁻¹[:, i] / H_F⁻¹[i, i], then drop i from the inverse Hessian of the remaining set."""
    w = w.double().clone()
    k = w.shape[1]
    hinv = torch.linalg.inv(h.double())
    q = torch.empty_like(w)
    for i in range(k):
        q[:, i] = round_to_format(w[:, i], fmt)
        err = (w[:, i] - q[:, i]) / hinv[i, i]
        w[:, i:] -= err.unsqueeze(1) * hinv[i, i:].unsqueeze(0)
        hinv = hinv - torch.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return q


def _damped(x: torch.Tensor) -> torch.Tensor:
    h = x.double().t() @ x.double()
    return h + 0.01 * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)


def test_gptq_matches_obs_reference_and_beats_nearest() -> None:
    g = torch.Generator().manual_seed(0)
    n, k = 16, 40  # K > one block would need > 128 columns: the block boundary is tested below
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(300, k, generator=g) @ mix  # correlated inputs
    w = torch.randn(n, k, generator=g) * 20.0  # grid units: E4M3 values up to ~80
    for fmt in (F.FP8_E4M3, F.INT8):
        got = gptq_round(w, x.double().t() @ x.double(), fmt)
        ref = _obs_reference(w, _damped(x), fmt)
        assert torch.equal(got.double(), ref)  # same grid choices as the explicit-inverse reference
        assert torch.equal(round_to_format(got, fmt), got)  # on the grid
        nearest = round_to_format(w, fmt)
        err_g = (x.double() @ (w - got).double().t()).pow(2).sum()
        err_n = (x.double() @ (w - nearest).double().t()).pow(2).sum()
        assert err_g < 0.7 * err_n


def test_gptq_across_blocks_and_diagonal_gram_is_nearest() -> None:
    g = torch.Generator().manual_seed(1)
    k = 200  # two blocks of 128 / 72: the lazy cross-block update must agree with the reference
    x = torch.randn(400, k, generator=g) @ (torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k))
    w = torch.randn(6, k, generator=g) * 30.0
    got = gptq_round(w, x.double().t() @ x.double(), F.FP8_E4M3)
    ref = _obs_reference(w, _damped(x), F.FP8_E4M3)
    assert (got.double() != ref).float().mean() < 0.01  # float32 vs float64 can flip rare near-ties
    diag = torch.diag(torch.rand(k, generator=g, dtype=torch.float64) + 0.5)
    assert torch.equal(gptq_round(w, diag, F.FP8_E4M3), round_to_format(w, F.FP8_E4M3))  # no feedback


def test_quantize_with_gptq_and_bias_correction(tiny_bert, batches) -> None:
    calib = ptq.calibrate(tiny_bert, batches)
    name = "encoder.layer.1.output.dense"  # its input does not depend on any other quantized layer
    fp32 = tiny_bert.get_submodule(name)
    errors = {}
    for label, kwargs in {
        "nearest": {},
        "gptq": {"weight_rounding": "gptq"},
        "gptq+bc": {"weight_rounding": "gptq", "bias_correction": True},
    }.items():
        model = copy.deepcopy(tiny_bert)
        cfg = ptq.PTQConfig("fp8-e4m3", "fp8-e4m3", "channel", modules=(name,), **kwargs)
        summary = ptq.quantize(model, cfg, calib)
        layer = model.get_submodule(name)
        assert layer.w_codes.dtype == torch.float8_e4m3fn and summary.weight_ratio <= 0.27
        sums, sq, count = torch.zeros(fp32.out_features, dtype=torch.float64), 0.0, 0

        def record(_n, x2, y2, fp32=fp32):
            nonlocal sums, sq, count
            e = y2.double() - (x2.double() @ fp32.weight.double().t() + fp32.bias.double())
            sums += e.sum(0)
            sq += float(e.pow(2).sum())
            count += x2.shape[0]

        observe_linears(model, [name], calib.inputs, record)
        errors[label] = (sums / count, sq / count)
    assert errors["gptq"][1] < 0.8 * errors["nearest"][1]  # output MSE on the calibration tokens
    mean_bc, mean_gptq = errors["gptq+bc"][0], errors["gptq"][0]
    assert mean_bc.abs().max() < 1e-5 < mean_gptq.abs().max()  # the mean error is removed exactly
    assert ptq.PTQConfig("fp8-e4m3", weight_rounding="gptq", bias_correction=True).describe() == (
        "W fp8-e4m3/tensor A fp8-e4m3/tensor +gptq +bias-corr"
    )
