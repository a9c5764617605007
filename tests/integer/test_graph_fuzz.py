"""Fuzz the integer-only graph's public entries (issue 14): ``IntegerGPT`` inputs, ``integer.convert``
(weights, calibration batches, config), ``Dyadic`` and ``ScaledInt`` — a documented result or a
ValueError/TypeError naming the problem, never another exception or silently non-finite logits."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import documented_errors, fuzz_settings, tensors

from lowbit.integer import Dyadic, IntegerConfig, ScaledInt, add, convert, rescale
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


positive = st.floats(1e-12, 1e6)
finite_or_not = st.one_of(positive, positive, st.floats(allow_nan=True, allow_infinity=True))


@fuzz_settings(150)
@given(ratio=st.one_of(finite_or_not, st.lists(finite_or_not, min_size=0, max_size=5)))
def test_fuzz_dyadic(ratio) -> None:
    r = torch.tensor(ratio, dtype=torch.float64)
    with documented_errors():
        d = Dyadic.from_ratio(r)
        v = d.value()
        assert bool(torch.isfinite(v).all()) and torch.allclose(v, r, rtol=2**-20, atol=2**-40)


@fuzz_settings(150)
@given(
    x=tensors(max_dims=2, max_side=6, dtypes=(torch.float32, torch.float64)),
    s1=finite_or_not,
    s2=finite_or_not,
    dtype=st.sampled_from([torch.int8, torch.int32, torch.int16, torch.float32]),
)
def test_fuzz_scaled_int(x, s1, s2, dtype) -> None:
    with documented_errors():
        a = ScaledInt.quantize(x, s1, dtype)
        assert a.values.shape == x.shape and a.values.dtype == dtype
        assert bool(torch.isfinite(a.dequantize()).all()), "silently non-finite dequantization"
        b = rescale(a, s2)
        c = add(a, b)
        assert c.values.shape == x.shape and math.isfinite(c.scale)
        assert bool(torch.isfinite(c.dequantize()).all())


@st.composite
def scaled_ints(draw: st.DrawFn) -> object:
    """A ScaledInt-ish operand: int8/int32/int64/float values of a random 0-3-D shape, a per-tensor float
    or per-channel scale (sometimes of the wrong length, non-positive or non-finite)."""
    nd = draw(st.sampled_from([2, 2, 1, 0, 3]))
    shape = [draw(st.integers(0, 5)) for _ in range(nd)]
    dtype = draw(st.sampled_from([torch.int8, torch.int8, torch.int32, torch.int64, torch.float32]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 1000)))
    values = torch.randint(-127, 128, shape, generator=g).to(dtype)
    kind = draw(st.sampled_from(["float", "float", "channel", "bad"]))
    if kind == "float":
        scale = draw(positive)
    elif kind == "channel" and nd:
        scale = torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.01
    else:
        scale = draw(st.sampled_from([0.0, -1.0, float("nan"), 1, torch.ones(7), "s", None]))
    return values, scale


OPS = ["matmul_nt", "matmul_nn", "mul", "add", "concat0", "concat-1", "split", "requant", "T"]


@fuzz_settings(150)
@given(
    a=scaled_ints(),
    b=scaled_ints(),
    op=st.sampled_from(OPS),
)
def test_fuzz_scaled_int_ops(a, b, op) -> None:
    from lowbit.integer import concat, matmul, mul, requantize

    with documented_errors():
        x, y = ScaledInt(*a), ScaledInt(*b)
        if op.startswith("matmul"):
            out = matmul(x, y, layout=op[-2:])
        elif op == "mul":
            out = mul(x, y)
        elif op == "add":
            out = add(x, y)
        elif op.startswith("concat"):
            out = concat([x, y], int(op[6:]))
        elif op == "split":
            out = x.split(2)[0]
        elif op == "T":
            out = x.transpose(0, -1)
        else:
            out = requantize(x, float(y.scale) if isinstance(y.scale, float) else 1.0)
        assert bool(torch.isfinite(out.dequantize()).all())
