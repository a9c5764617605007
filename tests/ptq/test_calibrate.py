"""Calibration sees real tokens only: a padded batch gives the statistics of the same sentences unpadded."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

import lowbit.formats as F
from lowbit import ptq
from lowbit.ptq.calibrate import observe_linears
from lowbit.ptq.observers import ObserverSpec

LENGTHS = (12, 5, 9, 3)  # the padded batch is 4 x 12: 17 of its 48 positions are padding


def _sentences() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randint(1, 120, (n,), generator=g) for n in LENGTHS]


def _padded(sentences: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    t = max(len(s) for s in sentences)
    ids = torch.zeros(len(sentences), t, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sentences):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def _unpadded(sentences: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [
        {"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)} for s in sentences
    ]


def test_observers_and_gptq_grams_ignore_padding(tiny_bert) -> None:
    sentences = _sentences()
    padded = ptq.calibrate(tiny_bert, [_padded(sentences)])
    plain = ptq.calibrate(tiny_bert, _unpadded(sentences))
    n_real = sum(LENGTHS)
    rules = [ObserverSpec("max"), ObserverSpec("percentile", 99.0), ObserverSpec("mse")]
    for name, obs in plain.observers.items():
        other = padded.observers[name]
        assert obs.count == other.count == n_real * tiny_bert.get_submodule(name).in_features
        assert abs(other.amax - obs.amax) <= 1e-6 * obs.amax  # float32 summation order only
        assert other.range == obs.range
        # real-token activations agree to float32 rounding: at most a handful of values change bin
        assert float((other.hist - obs.hist).abs().sum()) <= 4
        for rule in rules:
            for fmt in (F.FP8_E4M3, F.INT8):
                assert abs(other.scale(fmt, rule) - obs.scale(fmt, rule)) <= 2e-3 * obs.scale(fmt, rule)

    grams: dict[str, dict[str, torch.Tensor]] = {"padded": {}, "plain": {}}

    def collect(store: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor, torch.Tensor], None]:
        def fn(name: str, x2: torch.Tensor, _y2: torch.Tensor) -> None:
            g = x2.double().t() @ x2.double()
            store[name] = store[name] + g if name in store else g

        return fn

    names = list(plain.observers)
    observe_linears(tiny_bert, names, padded.inputs, collect(grams["padded"]))
    observe_linears(tiny_bert, names, plain.inputs, collect(grams["plain"]))
    for name in names:
        a, b = grams["padded"][name], grams["plain"][name]
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_padding_would_change_the_statistics(tiny_bert) -> None:
    """The check above can fail: with the mask all ones the padding rows are observed and counted."""
    sentences = _sentences()
    batch = _padded(sentences)
    unmasked = {"input_ids": batch["input_ids"], "attention_mask": torch.ones_like(batch["attention_mask"])}
    seen = ptq.calibrate(tiny_bert, [unmasked])
    real = ptq.calibrate(tiny_bert, [batch])
    name = "encoder.layer.0.attention.self.query"
    width = tiny_bert.get_submodule(name).in_features
    assert seen.observers[name].count == batch["input_ids"].numel() * width
    assert real.observers[name].count == sum(LENGTHS) * width


def test_quantized_model_is_the_same_padded_or_not(tiny_bert) -> None:
    """Static scales and GPTQ weights from a padded calibration equal those from the unpadded sentences."""
    sentences = _sentences()
    cfg = ptq.PTQConfig("fp8-e4m3", "fp8-e4m3", "channel", weight_rounding="gptq")
    models = []
    for batches in ([_padded(sentences)], _unpadded(sentences)):
        m = copy.deepcopy(tiny_bert)
        ptq.quantize(m, cfg, ptq.calibrate(m, batches))
        models.append(m)
    for name, layer in models[0].named_modules():
        if isinstance(layer, ptq.PTQLinear):
            other = models[1].get_submodule(name)
            assert abs(float(layer.act_scale) - float(other.act_scale)) <= 1e-6 * float(other.act_scale)
            diff = (layer.w_codes.float() != other.w_codes.float()).float().mean()
            assert diff < 0.01  # float32 summation order may flip a rare near-tie
