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


@pytest.mark.parametrize("second", ["int8", "int4", "fp32"])
def test_converting_a_converted_model_raises(second: str) -> None:
    """Issue 14 #13: convert(model, "int8") on an int4 model was a silent no-op (still int4)."""
    model = _mlp()
    convert(model, "int4")
    with pytest.raises(ValueError, match=r"already converted: 2 QuantLinear layers .*recipe 'int4'.*fresh"):
        convert(model, second)
    assert all(m.recipe.name == "int4" for m in model.modules() if isinstance(m, QuantLinear))


def test_int4_state_dict_loads_into_the_plain_model() -> None:
    """Issue 14 #13: the docstring said QuantLinear state dicts load "and back", but strict loading into the
    plain model failed on x_step; fp32_state_dict drops the quantizer state, and the docstring says so."""
    from lowbit.training import fp32_state_dict
    from lowbit.training import layers as layers_module

    torch.manual_seed(0)
    model = _mlp()
    convert(model, "int4")
    model(torch.randn(8, 16))  # initialise the LSQ steps and the block
    plain = _mlp()
    with pytest.raises(RuntimeError, match="x_step"):  # torch's strict loading, as documented
        plain.load_state_dict(model.state_dict())
    for state in (fp32_state_dict(model), fp32_state_dict(model.state_dict())):
        plain = _mlp()
        plain.load_state_dict(state)  # strict
        assert all(torch.equal(plain.state_dict()[k], v) for k, v in state.items())
    again = _mlp()
    convert(again, "int4")
    again.load_state_dict(fp32_state_dict(model))  # into a converted model too: steps re-initialise lazily
    assert float(again[0].x_step.detach()) == 0.0
    assert "fp32_state_dict" in layers_module.__doc__ and "and back" not in layers_module.__doc__


@pytest.mark.parametrize("recipe", ["int4", "int8", "int4-naive"])
def test_meta_model_converts_runs_shapes_and_materializes_clean(recipe: str) -> None:
    """Issue 14 #14: an int4 model converted on the meta device failed in .item(); after to_empty its
    hadamard_block was uninitialised memory ("block must be a power of two, got 140565561679184")."""
    with torch.device("meta"):
        model = _mlp()
    convert(model, recipe)
    y = model(torch.empty(5, 16, device="meta"))
    assert y.shape == (5, 4) and y.is_meta
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        model[0](torch.randn(5, 16))
    model.to_empty(device="cpu")
    model.load_state_dict(_mlp().state_dict(), strict=False)
    if recipe == "int4":
        q = model[0]
        assert float(q.x_step.detach()) == float(q.w_step.detach()) == 0.0 and int(q.steps_done) == 0
        assert int(q.hadamard_block) in (0, *[2**i for i in range(11)])
    out = model(torch.randn(5, 16))
    assert out.shape == (5, 4) and bool(torch.isfinite(out).all())
