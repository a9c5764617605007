"""convert(): nn.Sequential, lowbit's GPT, a tiny Hugging Face BertModel; head rule, skip globs, summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.models.gpt import GPT, GPTConfig
from lowbit.training import QuantLinear, convert


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))


def test_sequential_last_linear_is_the_head() -> None:
    model = _mlp()
    summary = convert(model, "int4")
    assert summary.converted == ["0", "2"] and list(summary.kept) == ["4"]
    assert isinstance(model[0], QuantLinear) and type(model[4]) is nn.Linear
    assert summary.converted_params == 16 * 32 + 32 + 32 * 32 + 32 and summary.kept_params == 32 * 4 + 4
    text = str(summary)
    assert "2 Linear layers converted" in text and "kept 4: output head" in text


def test_fp32_skip_and_keep_head_false() -> None:
    model = _mlp()
    summary = convert(model, "fp32")
    assert summary.converted == [] and not any(isinstance(m, QuantLinear) for m in model.modules())
    summary = convert(_mlp(), "int8", skip=["2"], keep_head=False)
    assert summary.converted == ["0", "4"] and summary.kept == {"2": "matches skip"}
    with pytest.raises(ValueError, match="known recipes"):
        convert(_mlp(), "int2")
    with pytest.raises(TypeError):
        convert("model", "int4")  # type: ignore[arg-type]


def test_gpt_converts_all_but_lm_head_and_trains() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    summary = convert(model, "int4", skip=["blocks.1.*"])
    assert "lm_head" in summary.kept and all(not k.startswith("blocks.0") for k in summary.kept)
    assert len(summary.converted) + len(summary.kept) == n_linear
    assert all(name.startswith("blocks.0") for name in summary.converted)
    idx = torch.randint(0, 50, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        _, loss = model(idx, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.5  # memorises the batch through INT4 layers


def test_hugging_face_bert() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 64, (2, 10))
    ref = model(input_ids=ids).logits
    summary = convert(model, "int8")
    assert list(summary.kept) == ["classifier"]
    assert len(summary.converted) == 2 * 6 + 1  # q, k, v, attn-out, ffn-in, ffn-out per layer + pooler
    out = model(input_ids=ids).logits
    assert torch.allclose(out, ref, atol=0.05)  # INT8 keeps the logits close
    out.sum().backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    bare = transformers.BertModel(cfg)
    assert list(convert(bare, "int4").kept) == ["pooler.dense"]  # no head name: the last Linear is kept
