"""Fuzz ``lowbit.convert`` and the converted layers (issue 14): random models, recipes, skip patterns and
inputs (shapes incl. 0 rows, dtypes, strides, NaN/Inf/huge values) give a documented result or a
ValueError/TypeError naming the problem — never another exception or a silently non-finite output."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import documented_errors, fuzz_settings, tensors
from torch import nn

import lowbit
from lowbit.training import QuantLinear

RECIPES = ["int4", "int8", "int4-naive", "fp32", "int4-sample", "int16", "", None, 4]
skips = st.one_of(
    st.just(()), st.sampled_from(["0", "*", "1.*", "[", "nope"]), st.lists(st.sampled_from(["0", "2", "x*"]))
)


def _model(kind: str, d_in: int, d_hidden: int) -> nn.Module:
    if kind == "sequential":
        return nn.Sequential(
            nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_hidden), nn.Linear(d_hidden, 3)
        )
    if kind == "nested":
        return nn.Sequential(
            nn.Sequential(nn.Linear(d_in, d_hidden)), nn.GELU(), nn.Linear(d_hidden, 2, bias=False)
        )
    if kind == "linear":
        return nn.Linear(d_in, d_hidden)
    return nn.Sequential(nn.ReLU())  # no Linear at all


@fuzz_settings(60)
@given(
    kind=st.sampled_from(["sequential", "nested", "linear", "none"]),
    recipe=st.sampled_from(RECIPES),
    skip=skips,
    keep_head=st.booleans(),
    d_hidden=st.sampled_from([1, 8, 24]),
    twice=st.booleans(),
    x=tensors(max_dims=2, max_side=6, dtypes=(torch.float32,)),
)
def test_fuzz_convert_and_run(kind, recipe, skip, keep_head, d_hidden, twice, x) -> None:
    """The model's input has the right width (16) and dtype: wrong inputs to an unconverted nn.Linear are
    torch's to report. A finite input of moderate size gives a finite output; NaN/Inf give an error unless
    no layer was converted (plain FP32)."""
    torch.manual_seed(0)
    model = _model(kind, 16, d_hidden)
    x = x.reshape(-1)[: (x.numel() // 16) * 16].reshape(-1, 16) if x.numel() >= 16 else torch.zeros(0, 16)
    with documented_errors():
        summary = lowbit.convert(model, recipe, skip=skip, keep_head=keep_head)
        assert len(summary.converted) == sum(isinstance(m, QuantLinear) for m in model.modules())
        if twice:
            lowbit.convert(model, "int8")  # a converted model: refused unless nothing was converted
            assert not summary.converted
        y = model(x)
        assert y.shape[0] == x.shape[0]
        moderate = bool(torch.isfinite(x).all()) and (x.numel() == 0 or float(x.abs().max()) < 1e6)
        if moderate or summary.converted:
            assert bool(torch.isfinite(y).all()), "silently non-finite output"
        if y.numel() and y.requires_grad:
            y.sum().backward()


@fuzz_settings(80)
@given(
    recipe=st.sampled_from(["int4", "int8", "int4-naive", "int4-sample"]),
    x=tensors(max_dims=3, max_side=7, last=(32,)),
    train=st.booleans(),
    grad=st.booleans(),
)
def test_fuzz_quant_linear(recipe, x, train, grad) -> None:
    layer = QuantLinear(32, 8, recipe=recipe).train(train)
    if grad and x.dtype == torch.float32:
        x = x.detach().requires_grad_(True)
    with documented_errors():
        y = layer(x)
        assert tuple(y.shape) == (*x.shape[:-1], 8) and y.dtype == x.dtype
        if x.dtype in (torch.float32, torch.float64):  # half types may overflow on the way back: theirs
            assert bool(torch.isfinite(y).all()), "silently non-finite output"
        if x.requires_grad:
            y.sum().backward()
            assert x.grad.shape == x.shape and bool(torch.isfinite(layer.weight.grad).all())
