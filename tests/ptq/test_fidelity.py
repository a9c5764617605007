"""layer_sqnr: per-layer SQNR of a quantized encoder, in the model and in isolation (captured by hooks)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from lowbit import ptq
from lowbit.ptq.fidelity import layer_sqnr, sqnr_db

TEXTS = ["hello world", "a", "post-training quantization", "lowbit"]


def _tokenizer(texts, padding, truncation, max_length, return_tensors):
    """Characters as ids, padded with zeros (the interface ``models.bert.tokenize`` calls)."""
    n = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), n, dtype=torch.long)
    mask = torch.zeros(len(texts), n, dtype=torch.long)
    for i, t in enumerate(texts):
        ids[i, : len(t)] = torch.tensor([ord(c) % 119 + 1 for c in t])
        mask[i, : len(t)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_layer_sqnr_in_model_and_isolated(tiny_bert) -> None:
    batch = _tokenizer(TEXTS, True, True, 128, "pt")
    q = copy.deepcopy(tiny_bert)
    ptq.quantize(q, ptq.PTQConfig("int8", "int8"), ptq.calibrate(tiny_bert, [batch]))
    in_model, isolated = layer_sqnr(tiny_bert, q, _tokenizer, TEXTS)
    names = [n for n, m in q.named_modules() if isinstance(m, ptq.PTQLinear)]
    assert list(in_model) == list(isolated) == names
    keep = batch["attention_mask"].reshape(-1).bool()
    seen: dict[str, tuple] = {}
    name = "encoder.layer.1.output.dense"  # the last layer: upstream errors accumulate in the model
    hooks = [
        tiny_bert.get_submodule(name).register_forward_hook(lambda m, a, y: seen.update(fp=(a[0], y))),
        q.get_submodule(name).register_forward_hook(lambda m, a, y: seen.update(q=y)),
    ]
    with torch.no_grad():
        tiny_bert(**batch), q(**batch)
        (x, ref), q_y = seen["fp"], seen["q"]
        for h in hooks:
            h.remove()
        alone = q.get_submodule(name)(x)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(keep.numel(), -1)[keep]

    assert in_model[name] == sqnr_db(rows(ref), rows(q_y))
    assert isolated[name] == sqnr_db(rows(ref), rows(alone)) and isolated[name] > in_model[name]
    assert all(len(m._forward_hooks) == 0 for model in (tiny_bert, q) for m in model.modules())
