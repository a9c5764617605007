"""The converted Integer-Transformer GPT: integer-only by instrumentation, close to its FP32 model."""

from __future__ import annotations

import pytest
import torch

from lowbit.integer import DtypeTrace, IntegerConfig, convert, integer_lm_loss
from lowbit.models.gpt import GPT, GPTConfig, evaluate_lm_loss

#: A random-init model's loss is ~ln(V); the integer graph must track FP32 to 1% (issue 6's target).
LOSS_REL_TOL = 0.01


@pytest.fixture(scope="module")
def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig.integer_transformer(40, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    tokens = torch.randint(0, 40, (600,), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(12):  # a few steps so weights and poly biases move off their init
        i = torch.randint(0, 580, (8,), generator=torch.Generator().manual_seed(step))
        x = torch.stack([tokens[j : j + 16] for j in i])
        y = torch.stack([tokens[j + 1 : j + 17] for j in i])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, 40, (4, 17), generator=g)
        out.append((x[:, :16], x[:, 1:]))
    return out


@pytest.mark.parametrize("path", ["fused", "unfused"])
def test_every_intermediate_is_integer(tiny_gpt: GPT, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lowbit.integer.graph import IntGPTBlock

    if path == "unfused":
        monkeypatch.setattr(IntGPTBlock, "fused_linears", lambda self: None)
    im = convert(tiny_gpt, [x for x, _ in _batches(2, 1)])
    trace = DtypeTrace()
    im(_batches(1, 2)[0][0], trace)
    names = [r[0] for r in trace.records]
    # the trace covers every kind of op in every block: embeddings, norms, linears, attention, residual
    must = ["embed", "blocks.0.norm1", "blocks.1.attn.scores", "blocks.1.attn.probs", "blocks.0.fc_in"]
    must += ["blocks.1.residual", "ln_f", "lm_head.acc"]
    must += ["blocks.1.out_proj.acc"] if path == "unfused" else ["blocks.1.qkv", "blocks.1.residual_attn"]
    for name in must:
        assert name in names
    assert trace.non_integer() == []
    dtypes = {r[0]: r[1] for r in trace.records}
    assert dtypes["blocks.0.attn.probs"] == torch.int8 and dtypes["blocks.0.residual"] == torch.int32
    if path == "unfused":
        assert dtypes["blocks.0.q"] == torch.int8 and dtypes["blocks.0.q.acc"] == torch.int32
    else:  # accumulators never leave the fused kernel: GEMM outputs are int8 codes
        assert dtypes["blocks.0.qkv"] == torch.int8 and dtypes["blocks.0.fc_in"] == torch.int8


def test_trace_detects_a_float() -> None:
    trace = DtypeTrace()
    trace.record("x", torch.zeros(2))
    assert trace.non_integer() == [("x", torch.float32, (2,))]


@pytest.mark.parametrize("act_qmax", [127, 63], ids=["int8", "int7-act"])
def test_loss_within_one_percent(tiny_gpt: GPT, act_qmax: int) -> None:
    im = convert(tiny_gpt, [x for x, _ in _batches(4, 1)], IntegerConfig(act_qmax=act_qmax))
    held = _batches(4, 7)
    fp = evaluate_lm_loss(tiny_gpt, held)
    it = integer_lm_loss(im, held)
    assert abs(it - fp) / fp <= LOSS_REL_TOL


def test_weight_bytes(tiny_gpt: GPT) -> None:
    im = convert(tiny_gpt, [_batches(1, 1)[0][0]])
    fp32 = sum(p.numel() * 4 for p in tiny_gpt.parameters())
    assert im.weight_bytes() < 0.4 * fp32  # tiny dims: per-channel constants weigh more than at 256+


def test_convert_rejects_standard_gpt() -> None:
    with pytest.raises(ValueError, match="Integer Transformer"):
        convert(GPT(GPTConfig(40, block_size=8, n_layer=1, n_head=1, n_embd=8)), [torch.zeros(1, 8).long()])


@pytest.mark.parametrize("kind", ["poly", "softmax"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize(("h", "c", "t"), [(3, 24, 11), (2, 64, 37), (1, 32, 5), (2, 32, 16)], ids=str)
def test_fused_attention_matches_unfused(kind: str, causal: bool, h: int, c: int, t: int) -> None:
    """Row kernel (head dim 8) and blocked SIMD kernel (head dims 16, 32), q/k/v as slices of one QKV."""
    from lowbit.integer import kernels
    from lowbit.integer.fast import attention_fused, to_offset
    from lowbit.integer.graph import IntAttention
    from lowbit.ops import native

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_not_native()}")
    g = torch.Generator().manual_seed(5)
    qkv = torch.randint(-128, 128, (3, t, 3 * c), generator=g, dtype=torch.int8)
    qkv[0, 0] = -128  # extreme codes
    q, k, v = qkv.split(c, dim=2)
    key_mask = torch.ones(3, t, dtype=torch.bool)
    key_mask[2, t // 2 + 1 :] = False
    bias = torch.tensor([50, -300, 0])[:h].view(h, 1, 1)
    extra = {"bias": bias, "delta": 11} if kind == "poly" else {"exp": kernels.exp_constants(4e-3)}
    att = IntAttention(h, kind, 9000, 40, **extra)
    unfused = att(q, k, v, causal, key_mask, DtypeTrace(), "attn")  # tracing runs the unfused path
    kw = {"poly_bias": extra.get("bias"), "delta": extra.get("delta", 0), "exp": extra.get("exp")}
    fused = attention_fused(
        q, k, v, h, causal=causal, key_mask=key_mask, row_const=9000, row_shift=40, **kw
    )  # fmt: skip
    assert torch.equal(fused, unfused)
    assert int(fused.abs().max()) > 20  # non-trivial outputs
    shifted = attention_fused(
        q, k, v, h, causal=causal, key_mask=key_mask, row_const=9000, row_shift=40, out_off=128, **kw
    )  # fmt: skip
    assert torch.equal(shifted, to_offset(unfused, 128))


@pytest.mark.parametrize("weight_qmax", [64, 127], ids=["w7-u8-path", "w8-int16-path"])
def test_fused_block_path_matches_unfused(
    tiny_gpt: GPT, weight_qmax: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocks run the fused kernels (QKV as one GEMM, requantize in the epilogue; 7-bit weights: uint8
    activations): the same logits as the unfused path, and the trace of that path is integer-only too."""
    from lowbit.integer.graph import IntGPTBlock
    from lowbit.ops import native

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_not_native()}")
    im = convert(tiny_gpt, [x for x, _ in _batches(2, 1)], IntegerConfig(weight_qmax=weight_qmax))
    fused_parts = [blk.fused_linears() for blk in im.blocks]
    assert all(f is not None and f[4] == (128 if weight_qmax == 64 else 0) for f in fused_parts)
    x = _batches(1, 3)[0][0]
    fused = im(x)
    trace = DtypeTrace()
    traced = im(x, trace)
    names = {r[0] for r in trace.records}
    assert {"blocks.0.qkv", "blocks.1.attn.probs", "blocks.1.fc_in", "blocks.1.residual"} <= names
    assert trace.non_integer() == []
    monkeypatch.setattr(IntGPTBlock, "fused_linears", lambda self: None)
    unfused = im(x)
    assert torch.equal(fused, unfused) and torch.equal(fused, traced)
    held = _batches(4, 7)
    fp = evaluate_lm_loss(tiny_gpt, held)
    assert abs(integer_lm_loss(im, held) - fp) / fp <= LOSS_REL_TOL


def test_forward_rejects_ids_outside_the_vocabulary(tiny_gpt: GPT) -> None:
    """Issue 14 #7: id -1 silently indexed the last embedding row; 40 gave a raw IndexError."""
    im = convert(tiny_gpt, [x for x, _ in _batches(1, 1)])
    for bad in (-1, 40):
        with pytest.raises(ValueError, match=r"outside \[0, 40\)"):
            im(torch.tensor([[1, bad, 2]]))


def test_forward_accepts_non_contiguous_ids(tiny_gpt: GPT) -> None:
    """Issue 14 #7: a transposed (non-contiguous) id tensor failed in ``.view``; it is a valid input."""
    im = convert(tiny_gpt, [x for x, _ in _batches(1, 1)])
    x = _batches(1, 3)[0][0][:, :8]  # (4, 8)
    xt = x.t()  # (8, 4) strides (1, 16)
    assert not xt.is_contiguous()
    torch.testing.assert_close(im(xt), im(xt.contiguous()), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((0, 5), "empty"),
        ((3, 0), "empty"),
        ((5,), r"shape \(batch, seq\).*unsqueeze"),
        ((1, 2, 3), r"\(batch, seq\)"),
    ],
)
def test_forward_names_the_expected_shape(tiny_gpt: GPT, shape: tuple[int, ...], match: str) -> None:
    """Issue 14 #7: empty and 1-D inputs gave reshape errors / 'not enough values to unpack'."""
    im = convert(tiny_gpt, [x for x, _ in _batches(1, 1)])
    for model in (im, tiny_gpt):
        with pytest.raises(ValueError, match=match):
            model(torch.zeros(shape, dtype=torch.long))


def test_forward_rejects_float_ids(tiny_gpt: GPT) -> None:
    im = convert(tiny_gpt, [x for x, _ in _batches(1, 1)])
    for model in (im, tiny_gpt):
        with pytest.raises(TypeError, match="integer token ids"):
            model(torch.zeros(2, 3))


@pytest.mark.parametrize("param", ["blocks.0.attn.q_proj.weight", "wte.weight", "blocks.1.norm1.weight"])
def test_convert_names_a_non_finite_weight(tiny_gpt: GPT, param: str) -> None:
    """Issue 14: integer.convert with a NaN weight raised "a dyadic ratio must be finite" with the whole
    ratio tensor in the message (or "cannot convert float NaN to integer" for a norm weight)."""
    import copy

    model = copy.deepcopy(tiny_gpt)
    with torch.no_grad():
        model.get_parameter(param).view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=rf"{param} holds 1 NaN/Inf values of \d+") as info:
        convert(model, [x for x, _ in _batches(1, 1)])
    assert len(str(info.value)) < 300 and "tensor(" not in str(info.value)


def test_convert_names_non_finite_calibration(tiny_gpt: GPT) -> None:
    import copy

    model = copy.deepcopy(tiny_gpt)
    with torch.no_grad():
        model.blocks[0].attn.q_proj.weight.fill_(3e38)  # finite weights, activations overflow to Inf
    with pytest.raises(ValueError, match="calibration saw NaN/Inf activations at") as info:
        convert(model, [x for x, _ in _batches(1, 1)])
    assert "tensor(" not in str(info.value)


def test_dyadic_error_counts_instead_of_dumping() -> None:
    from lowbit.integer import Dyadic

    r = torch.ones(10_000, dtype=torch.float64)
    r[5] = float("nan")
    with pytest.raises(ValueError, match="1 NaN, 0 infinite and 0 negative of 10000 ratios") as info:
        Dyadic.from_ratio(r)
    assert len(str(info.value)) < 200


def test_forward_takes_uint8_ids(tiny_gpt: GPT) -> None:
    """Found by the fuzz suite: uint8 ids indexed the embedding as a boolean mask (IndexError)."""
    im = convert(tiny_gpt, [x for x, _ in _batches(1, 1)])
    x = _batches(1, 4)[0][0][:, :8]
    torch.testing.assert_close(im(x.to(torch.uint8)), im(x), rtol=0, atol=0)
    torch.testing.assert_close(tiny_gpt(x.to(torch.uint8))[0], tiny_gpt(x)[0])


def test_dyadic_out_of_range_message_is_short() -> None:
    """Found by the fuzz suite: the out-of-range error printed the whole ratio tensor."""
    from lowbit.integer import Dyadic

    r = torch.full((5000,), 2.0**24, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"5000 of 5000 ratios are outside the dyadic range") as info:
        Dyadic.from_ratio(r)
    assert "tensor(" not in str(info.value)


@pytest.mark.parametrize("value", [True, 127.0, "127"])
def test_convert_config_takes_ints_only(value: object) -> None:
    """Found by the fuzz suite: IntegerConfig(act_qmax=True) / 127.0 were accepted (bool, float)."""
    with pytest.raises(TypeError, match="act_qmax must be an int"):
        IntegerConfig(act_qmax=value)
