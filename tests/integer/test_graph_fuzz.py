"""Fuzz the integer-only graph's public entries (issue 14): ``IntegerGPT`` inputs and ``integer.convert``
(weights, calibration batches, config) — a documented result or a ValueError/TypeError naming the problem,
never another exception or silently non-finite logits. ``Dyadic`` and ``ScaledInt``: test_scaled_fuzz.py."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import documented_errors, fuzz_settings

from lowbit.integer import IntegerConfig, convert
from lowbit.models.gpt import GPT, GPTConfig

VOCAB, BLOCK = 24, 8
PARAMS = ["blocks.0.attn.q_proj.weight", "wte.weight", "blocks.0.norm2.weight", "lm_head.weight",
          "blocks.0.mlp.fc_in.bias", "blocks.0.attn.poly_b"]  # fmt: skip


@functools.cache
def _fp32() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.integer_transformer(VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)).eval()


@functools.cache
def _integer():
    return convert(_fp32(), [torch.randint(0, VOCAB, (2, BLOCK), generator=torch.Generator().manual_seed(1))])


@st.composite
def id_tensors(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([[1, 2, 3], [[1, 2]], None, 3, "ab"]))
    nd = draw(st.sampled_from([2, 2, 2, 2, 0, 1, 3]))
    sides = st.integers(1, BLOCK)
    shape = [draw(st.integers(0, 10) if draw(st.integers(0, 4)) == 0 else sides) for _ in range(nd)]
    dtypes = [torch.int64] * 4 + [torch.int32, torch.uint8, torch.int8, torch.float32, torch.bool]
    dtype = draw(st.sampled_from(dtypes))
    lo, hi = draw(st.sampled_from([(0, VOCAB)] * 4 + [(-2, VOCAB), (0, VOCAB + 3)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randint(lo, hi, shape, generator=g)
    if nd == 2 and draw(st.booleans()):  # non-contiguous views of valid ids
        x = (
            x.t().contiguous().t()
            if draw(st.booleans())
            else torch.randint(0, VOCAB, (shape[0], 2 * shape[1]))[:, ::2]
        )
    if dtype in (torch.uint8, torch.int8):
        x = x.clamp(min=0)
    return x.to(dtype)


@fuzz_settings(120)
@given(idx=id_tensors())
def test_fuzz_integer_gpt_forward(idx) -> None:
    im = _integer()
    with documented_errors():
        logits = im(idx)
        assert tuple(logits.shape) == (*idx.shape, VOCAB) and bool(torch.isfinite(logits).all())
        ref, _ = _fp32()(idx)  # the FP32 model takes exactly the same inputs
        assert ref.shape == logits.shape
        return
    with pytest.raises((ValueError, TypeError)):  # and refuses the same ones
        _fp32()(idx)


@fuzz_settings(25)
@given(
    param=st.sampled_from(
        [
            "blocks.0.attn.q_proj.weight",
            "wte.weight",
            "blocks.0.norm2.weight",
            "lm_head.weight",
            "blocks.0.mlp.fc_in.bias",
            "blocks.0.attn.poly_b",
        ]
    ),  # fmt: skip
    value=st.sampled_from([float("nan"), float("inf"), 0.0, 1e30, -1e-30, 3e38, 1.0, 0.5, -2.0, 1e-3]),
    whole=st.booleans(),
    qmax=st.sampled_from([127, 127, 63, 63, 1, 0, 128, 127.0, True]),
    calib=st.sampled_from(["ok"] * 5 + ["empty", "float", "out_of_range", "long", "1d"]),
)
def test_fuzz_integer_convert(param, value, whole, qmax, calib) -> None:
    import copy

    model = copy.deepcopy(_fp32())
    with torch.no_grad():
        p = model.get_parameter(param) if "poly_b" not in param else model.blocks[0].attn.poly_b
        if whole:
            p.fill_(value)
        else:
            p.view(-1)[0] = value
    g = torch.Generator().manual_seed(2)
    batches = {
        "ok": [torch.randint(0, VOCAB, (2, BLOCK), generator=g)],
        "empty": [],
        "float": [torch.rand(2, BLOCK)],
        "out_of_range": [torch.full((2, BLOCK), VOCAB)],
        "long": [torch.randint(0, VOCAB, (1, BLOCK + 1), generator=g)],
        "1d": [torch.randint(0, VOCAB, (BLOCK,), generator=g)],
    }[calib]
    with documented_errors():
        cfg = IntegerConfig(act_qmax=qmax)
        im = convert(model, batches, cfg)
        logits = im(torch.randint(0, VOCAB, (2, BLOCK), generator=g))
        assert bool(torch.isfinite(logits).all()), "silently non-finite logits"
