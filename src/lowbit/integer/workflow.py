"""The integer-only workflow's handler of ``lowbit.convert``: an :class:`IntegerConfig` converts lowbit's
Integer-Transformer GPT (:func:`~lowbit.integer.convert.convert`) or a Hugging Face ``BertModel``
(:func:`~lowbit.integer.bert.convert_bert`) into a new integer graph. Registered when ``lowbit.integer`` is
imported; kept apart from both converters so that neither imports the other's module back."""

from __future__ import annotations

from torch import nn

from lowbit.conversion import ConversionSummary, register
from lowbit.integer.bert import convert_bert
from lowbit.integer.convert import IntegerConfig, convert
from lowbit.models.gpt import GPT


@register(IntegerConfig, "integer")
def _convert(model: nn.Module, config: IntegerConfig, calibration: object = None) -> ConversionSummary:
    """``lowbit.convert``'s handler of :class:`IntegerConfig`: lowbit's Integer-Transformer GPT through
    :func:`convert`, a Hugging Face ``BertModel`` (``embeddings`` + ``encoder``) through ``convert_bert``;
    ``calibration``: the FP32 batches. The summary's ``model`` is the new integer graph."""
    if calibration is None:
        raise ValueError(
            "IntegerConfig calibrates activation ranges on FP32 runs: pass calibration=batches (token-id "
            "tensors for lowbit's GPT, tokenizer outputs for a BertModel)"
        )
    if isinstance(model, GPT):
        graph, scope = convert(model, calibration, config), None
    elif isinstance(model, nn.Module) and all(hasattr(model, a) for a in ("embeddings", "encoder")):
        graph, scope = convert_bert(model, calibration, config), "encoder"
    else:
        raise TypeError(
            "IntegerConfig converts lowbit's Integer-Transformer GPT (lowbit.models.gpt.GPT) or a Hugging "
            f"Face BertModel, got {type(model).__name__}"
        )
    recipe = f"integer act_qmax={config.act_qmax} weight_qmax={config.weight_qmax}"
    summary = ConversionSummary(recipe, workflow="integer", config=config, model=graph)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            inside = scope is None or scope in name.split(".")
            summary.add(
                name, module, None if inside else "not part of the integer graph (outputs mean-pooled)"
            )
    return summary
