"""lowbit.convert: one verb for the three workflows, dispatching on the config's type (issue 13).

Each config type reaches its workflow and gives bit-identical results to the workflow's own entry point;
a wrong config type is named; the summary says what was converted, what was kept and why, and holds the
converted model.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
from torch import nn

import lowbit
from lowbit import conversion, integer, ptq, training
from lowbit.conversion import ConversionSummary
from lowbit.integer import IntegerConfig, IntegerGPT
from lowbit.models.gpt import GPT, GPTConfig
from lowbit.ptq import PTQConfig, WeightOnlyConfig
from lowbit.training import Recipe, get_recipe


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


class Encoder(nn.Module):
    """An ``encoder`` of linears (PTQ's default selection) and a ``classifier`` (training's head rule)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.pooler = nn.Linear(32, 32)
        self.classifier = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(self.encoder(x))))


def _inputs(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 6, 32, generator=g) for _ in range(n)]


@pytest.mark.parametrize("recipe", ["int4", "int8", "int4-naive", get_recipe("int4-mse")])
def test_training_recipe_same_as_training_convert(recipe: str | Recipe) -> None:
    a, b = Encoder(), Encoder()
    summary = lowbit.convert(a, recipe, skip=["encoder.2"], seed=7)
    old = training.convert(b, recipe, ["encoder.2"], seed=7)
    assert isinstance(summary, ConversionSummary) and summary == old and str(summary) == str(old)
    assert summary.workflow == "training" and summary.model is a and summary.config == get_recipe(recipe)
    assert summary.converted == ["encoder.0", "pooler"]
    assert summary.kept == {"encoder.2": "matches skip", "classifier": "output head (kept in full precision)"}
    x = _inputs(1)[0].requires_grad_()
    xb = x.detach().clone().requires_grad_()
    ya, yb = a(x), b(xb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.equal(_bits(ya), _bits(yb)) and torch.equal(_bits(x.grad), _bits(xb.grad))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(_bits(pa.grad), _bits(pb.grad))


def test_training_options_and_no_calibration() -> None:
    summary = lowbit.convert(Encoder(), "int8", keep_head=False)
    assert summary.converted == ["encoder.0", "encoder.2", "pooler", "classifier"] and summary.kept == {}
    fp32 = lowbit.convert(Encoder(), "fp32")
    assert fp32.converted == [] and set(fp32.kept.values()) == {
        "fp32 recipe",
        "output head (kept in full precision)",
    }
    with pytest.raises(TypeError, match="takes no calibration.*skip="):
        lowbit.convert(Encoder(), "int4", ["encoder.0"])
    with pytest.raises(ValueError, match="unknown recipe 'int3'"):
        lowbit.convert(Encoder(), "int3")


def _ptq_pair(config: object, calibrate: bool) -> tuple[nn.Module, ConversionSummary, nn.Module, object]:
    a, b = Encoder(), Encoder()
    cal = ptq.calibrate(a, _inputs()) if calibrate else None
    summary = lowbit.convert(a, config, cal)
    old = ptq.quantize(b, config, ptq.calibrate(b, _inputs()) if calibrate else None)
    return a, summary, b, old


@pytest.mark.parametrize(
    ("config", "calibrate"),
    [
        (PTQConfig("fp8-e4m3", "fp8-e4m3"), True),
        (PTQConfig("int8", "int8", weight_granularity="channel", activation_granularity="token"), False),
        (PTQConfig("int8", "int8", weight_rounding="gptq", bias_correction=True), True),
        (PTQConfig("fp8-e4m3", "fp8-e4m3", weight_rounding="gptq-seq"), True),
        (PTQConfig("mxfp4", "mxfp4"), False),
        (WeightOnlyConfig("int4", "group", group_size=16), False),
    ],
    ids=lambda v: v.describe() if hasattr(v, "describe") else str(v),
)
def test_ptq_config_same_as_ptq_quantize(config: object, calibrate: bool) -> None:
    a, summary, b, old = _ptq_pair(config, calibrate)
    assert summary.workflow == "ptq" and summary.model is a and summary.config is config
    assert summary.details.table() == old.table() and summary.recipe == old.recipe == config.describe()
    assert summary.converted == [r.name for r in old.layers] == ["encoder.0", "encoder.2"]
    kept = "not selected by the config's modules (kept in FP32)"
    assert summary.kept == {"pooler": kept, "classifier": kept}
    assert summary.converted_params == 32 * 64 + 64 + 64 * 32 + 32
    assert summary.kept_params == 32 * 32 + 32 + 32 * 3 + 3
    assert str(summary).endswith(old.table())
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    for x in _inputs(2):
        assert torch.equal(_bits(a(x)), _bits(b(x)))


def test_ptq_exclude_reason_and_quantize_still_returns_ptq_summary() -> None:
    model = Encoder()
    config = PTQConfig("fp8-e4m3", "fp8-e4m3", modules=("encoder.*",), exclude=("encoder.2",))
    summary = lowbit.convert(model, config, ptq.calibrate(model, _inputs()))
    assert (
        summary.converted == ["encoder.0"] and summary.kept["encoder.2"] == "matches exclude (kept in FP32)"
    )
    assert isinstance(summary.details, ptq.PTQSummary)
    assert isinstance(ptq.quantize(Encoder(), WeightOnlyConfig("int8")), ptq.PTQSummary)
    with pytest.raises(ValueError, match="already holds quantized layers"):
        lowbit.convert(model, WeightOnlyConfig("int8"))
    with pytest.raises(ValueError, match="calibrate"):
        lowbit.convert(Encoder(), PTQConfig("int8", "int8"))


@pytest.fixture(scope="module")
def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.integer_transformer(40, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


def _ids(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 40, (4, 16), generator=g) for _ in range(n)]


@pytest.mark.parametrize("config", [IntegerConfig(), IntegerConfig(act_qmax=100, weight_qmax=64)])
def test_integer_config_same_as_integer_convert(tiny_gpt: GPT, config: IntegerConfig) -> None:
    before = copy.deepcopy(tiny_gpt.state_dict())
    summary = lowbit.convert(tiny_gpt, config, calibration=_ids(2, 1))
    old = integer.convert(tiny_gpt, _ids(2, 1), config)
    assert summary.workflow == "integer" and summary.config is config
    assert isinstance(summary.model, IntegerGPT) and summary.model is not tiny_gpt
    state = tiny_gpt.state_dict()  # a new module: the FP32 model is left as it was
    assert all(torch.equal(state[k], before[k]) for k in before) and isinstance(tiny_gpt.lm_head, nn.Linear)
    linears = [n for n, m in tiny_gpt.named_modules() if isinstance(m, nn.Linear)]
    assert summary.converted == linears and "lm_head" in linears and summary.kept == {}
    assert summary.recipe == f"integer act_qmax={config.act_qmax} weight_qmax={config.weight_qmax}"
    for idx in _ids(2, 5):
        assert torch.equal(_bits(summary.model(idx)), _bits(old(idx)))


def test_integer_config_bert_same_as_convert_bert() -> None:
    transformers = pytest.importorskip("transformers")
    from lowbit.integer.bert import IntegerBert, convert_bert

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=32, attn_implementation="eager",
    )  # fmt: skip
    bert = transformers.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(1, 100, (2, 8), generator=g), "attention_mask": torch.ones(2, 8)}]
    summary = lowbit.convert(bert, IntegerConfig(), batches)
    old = convert_bert(bert, batches)
    assert isinstance(summary.model, IntegerBert)
    assert summary.kept == {"pooler.dense": "not part of the integer graph (outputs mean-pooled)"}
    assert len(summary.converted) == 2 * 6 and all(n.startswith("encoder.") for n in summary.converted)
    b = batches[0]
    assert torch.equal(_bits(summary.model(**b)), _bits(old(**b)))


def test_integer_config_errors(tiny_gpt: GPT) -> None:
    with pytest.raises(ValueError, match="pass calibration=batches"):
        lowbit.convert(tiny_gpt, IntegerConfig())
    with pytest.raises(
        TypeError, match="Integer-Transformer GPT .* or a Hugging Face BertModel, got Encoder"
    ):
        lowbit.convert(Encoder(), IntegerConfig(), calibration=_inputs())
    assert integer.ConvertConfig is IntegerConfig  # the old name


@pytest.mark.parametrize("config", [3, None, {"weight": "fp8"}, integer.IntegerGPT])
def test_wrong_config_type_names_the_accepted_types(config: object) -> None:
    accepted = (
        "(training: Recipe, str (a recipe name); ptq: PTQConfig, WeightOnlyConfig; integer: IntegerConfig)"
    )
    with pytest.raises(TypeError, match="lowbit.convert takes a config of one of these types") as info:
        lowbit.convert(Encoder(), config)
    assert str(info.value).endswith(f"{accepted}, got {type(config).__name__}"), str(info.value)
    with pytest.raises(TypeError, match=re.escape("known configs: PTQConfig, WeightOnlyConfig")):
        ptq.quantize(Encoder(), config if config is not None else 3)


def test_one_registry_and_top_level_names() -> None:
    assert lowbit.convert is conversion.convert and lowbit.ConversionSummary is ConversionSummary
    assert training.ConversionSummary is ConversionSummary
    assert (
        conversion.workflow_of(get_recipe("int4")) == "training"
        and conversion.workflow_of("int4") == "training"
    )
    assert conversion.workflow_of(PTQConfig()) == conversion.workflow_of(WeightOnlyConfig()) == "ptq"
    assert conversion.workflow_of(IntegerConfig()) == "integer" and conversion.workflow_of(1.0) is None
    assert sorted(conversion.config_types("ptq")) == ["PTQConfig", "WeightOnlyConfig"]


@pytest.mark.parametrize(
    "config",
    [
        get_recipe("int4"),
        training.OperandSpec(4, "bit-split"),
        training.ProductSpec(training.OperandSpec(0, "none"), training.OperandSpec(0, "none")),
        PTQConfig(),
        WeightOnlyConfig(),
        IntegerConfig(),
    ],  # fmt: skip
    ids=lambda c: type(c).__name__,
)
def test_configs_are_frozen_and_document_every_field(config: object) -> None:
    field = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field, getattr(config, field))
    doc = type(config).__doc__
    assert "Attributes:" in doc
    attributes = doc.split("Attributes:", 1)[1]
    for f in dataclasses.fields(config):
        assert re.search(rf"^\s+(\w+ / )*{f.name}( / \w+)*: ", attributes, re.M), f"{f.name} undocumented"
