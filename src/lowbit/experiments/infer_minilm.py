"""``lowbit infer --task minilm-rt``: all-MiniLM-L6-v2 integer-only vs FP32 on Rotten Tomatoes.

Calibrates on training snippets, converts with ``lowbit.convert(model, IntegerConfig(), batches)``, and
reports the mean sentence-embedding cosine (integer vs FP32) on held-out snippets, the accuracy of a
logistic-regression head trained on FP32 embeddings of the training split and applied unchanged to both,
weight bytes, latency and the dtype-trace verification.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BATCH = 32  # texts per forward


def _embed(fn, tokenizer, texts: list[str]) -> tuple[torch.Tensor, float]:
    """L2-normalised mean-pooled embeddings (N, C) and the total forward time in ms."""
    from lowbit.models.bert import tokenize

    chunks, ms = [], 0.0
    for start in range(0, len(texts), BATCH):
        batch = tokenize(tokenizer, texts[start : start + BATCH])
        t0 = time.perf_counter()
        pooled = fn(batch)
        ms += (time.perf_counter() - t0) * 1e3
        chunks.append(F.normalize(pooled, dim=-1))
    return torch.cat(chunks), ms


def run_minilm(args: argparse.Namespace) -> dict[str, object]:
    """The minilm-rt figures."""
    import lowbit
    from lowbit.data.rotten_tomatoes import load_rotten_tomatoes
    from lowbit.integer import DtypeTrace, IntegerConfig
    from lowbit.models.bert import evaluate_head, load_minilm, mean_pool, tokenize, train_linear_head

    model, tok = load_minilm()
    data = load_rotten_tomatoes()
    n = args.max_texts
    train_texts, train_labels = data.train_texts[:n], data.train_labels[:n]
    test_texts, test_labels = data.test_texts[:n], data.test_labels[:n]
    calib = [tokenize(tok, train_texts[i * BATCH : (i + 1) * BATCH]) for i in range(args.calib_batches)]
    im = lowbit.convert(model, IntegerConfig(), calib).model  # an IntegerBert

    def fp32(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])

    def integer(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return im(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    train_fp32, _ = _embed(fp32, tok, train_texts)
    test_fp32, fp32_ms = _embed(fp32, tok, test_texts)
    test_int, int_ms = _embed(integer, tok, test_texts)
    head = train_linear_head(train_fp32, train_labels, data.n_classes, seed=args.seed)
    sample = tokenize(tok, test_texts[:2])
    trace = DtypeTrace()
    im(sample["input_ids"], sample["attention_mask"], sample.get("token_type_ids"), trace)
    return {
        "task": "minilm-rt",
        "embedding_cosine": float((test_fp32 * test_int).sum(-1).mean()),
        "embedding_cosine_min": float((test_fp32 * test_int).sum(-1).min()),
        "fp32_accuracy": evaluate_head(head, test_fp32, test_labels),
        "integer_accuracy": evaluate_head(head, test_int, test_labels),
        "fp32_weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "integer_weight_bytes": im.weight_bytes(),
        "integer_only_verified": bool(trace.records) and not trace.non_integer(),
        "traced_tensors": len(trace.records),
        "fp32_ms": fp32_ms,
        "integer_ms": int_ms,
        "test_texts": len(test_texts),
        "threads": torch.get_num_threads(),
    }
