"""``lowbit ptq``: post-training quantization of a BERT-family encoder, FP8 vs INT8 fidelity on real text.

For each format: deep-copy the FP32 encoder, quantize its encoder linears (calibrated on training snippets),
embed the held-out snippets and compare with the FP32 embeddings (computed once per run):

* mean sentence-embedding cosine similarity to FP32 (mean-pooled, L2-normalised, as sentence-transformers);
* accuracy of a logistic-regression head trained on the FP32 model's frozen embeddings of the training
  split and applied unchanged to each quantized model's embeddings (``--texts``: no labels, accuracy null);
* per-layer output SQNR on a batch of held-out snippets, plotted to ``OUT/sqnr.png``.

Formats: ``fp32``, ``fp8-e4m3``, ``fp8-e5m2``, ``int8`` (weights and activations, static calibrated scales),
``mxfp8-e4m3``, ``mxfp4`` (MX weights and activations, dynamic block scales), ``int4`` (weight-only, groups of
32). An entry may carry its own granularities, observer and options:
``NAME[/WEIGHT_GRAN[/ACT_GRAN]][@OBSERVER][+OPTION...]``, e.g. ``int8/channel/token``, ``int8@mse``
(one calibration pass serves every observer), ``int8+exact``. INT8 options pick the code ranges and so the
integer kernel: ``+w7`` (7-bit weight codes, fast u8 x s8), ``+a7`` (7-bit activation codes, fast) or
``+exact`` (full int8 range on both sides, the paper's INT8, exact int16 kernel); without one, per-channel
weights get ``w7`` and a per-tensor weight ``exact`` (``PTQConfig.int8_kernel="auto"``). FP8 and INT8 entries
also take ``+gptq`` (GPTQ error-compensating weight rounding, same grid and scales), ``+gptq-seq`` /
``+gptq-asym`` (sequential GPTQ on the quantized model's own inputs; ``-asym`` rounds toward the FP32 layer
output, :mod:`lowbit.ptq.sequential`), ``+ao`` (GPTQ act-order) and ``+bc`` (bias correction on the
calibration snippets), e.g. ``fp8-e4m3/channel+gptq+bc``, ``fp8-e4m3/channel/token+gptq-asym``.
``--json`` writes ``[{format, embedding_cosine, accuracy, weight_bytes, ...}]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import torch

import lowbit
from lowbit.experiments.guard import UserError, check_output_dir, check_output_file
from lowbit.experiments.ptq_formats import (
    DEFAULT_FORMATS,
    KNOWN_FORMATS,
    OBSERVERS,
    FormatEntry,
    config_for,
    parse_formats,
)
from lowbit.files import atomic_write_text
from lowbit.ptq import PTQConfig, WeightOnlyConfig, calibrate, save_quantized
from lowbit.ptq.config import FP8_COMPUTE
from lowbit.ptq.fidelity import embed_sorted, embedding_cosine, layer_sqnr, plot_sqnr

logger = logging.getLogger(__name__)

SQNR_TEXTS = 32  # held-out snippets in the per-layer SQNR batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lowbit ptq`` flags."""
    parser.add_argument(
        "--model", default="minilm", help="'minilm' or a local Hugging Face BERT-family folder"
    )
    parser.add_argument(
        "--formats",
        default=DEFAULT_FORMATS,
        help=f"comma list of {', '.join(KNOWN_FORMATS)}, each optionally NAME/WGRAN/AGRAN@OBSERVER+OPTION "
        "(e.g. int8/channel/token, int8@mse, int8+exact)",
    )
    parser.add_argument("--calib-batches", type=int, default=8, help="calibration batches (default 8)")
    parser.add_argument("--calib-batch-size", type=int, default=32, help="snippets per calibration batch")
    parser.add_argument(
        "--observer",
        default="max",
        choices=OBSERVERS,
        help="activation calibration rule (default max, the paper)",
    )
    parser.add_argument("--percentile", type=float, default=99.99, help="for --observer percentile")
    parser.add_argument(
        "--granularity",
        default="tensor",
        choices=("tensor", "channel"),
        help="weight scales (default tensor)",
    )
    parser.add_argument(
        "--act-granularity",
        default="tensor",
        choices=("tensor", "token"),
        help="activation scales: static per tensor (default) or dynamic per token",
    )
    parser.add_argument(
        "--fp8-compute",
        default="auto",
        choices=FP8_COMPUTE,
        help="FP8 products: auto (bf16_dot where the CPU has AVX512-BF16, else emulated), bf16_dot, "
        "emulated, scaled_mm",
    )
    parser.add_argument("--texts", help="a UTF-8 file of sentences, one per line, for the embedding cosine")
    parser.add_argument(
        "--max-test", type=int, default=1200, help="held-out snippets embedded (default 1200)"
    )
    parser.add_argument(
        "--max-train", type=int, default=3000, help="training snippets for the head (default 3000)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="data split and head seed")
    parser.add_argument("--json", help="write the result records to this JSON file")
    parser.add_argument("--out", default="results/ptq", help="folder for sqnr.png (default results/ptq)")
    parser.add_argument(
        "--save", action="store_true", help="also save each quantized model to OUT/*.safetensors"
    )


def _read_texts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--texts file not found: {p}")
    raw = p.read_bytes()
    if b"\x00" in raw[:65536]:
        raise ValueError(
            f"--texts file {p} is binary (it holds NUL bytes); pass a UTF-8 text file, one sentence a line"
        )
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--texts file {p} is not UTF-8 text ({err.reason} at byte {err.start}); pass a UTF-8 text file, "
            "e.g. converted with iconv -f latin1 -t utf-8"
        ) from None
    texts = [line.strip() for line in content.splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"--texts file {p} holds no non-empty lines")
    return texts


def _load_data(
    args: argparse.Namespace,
) -> tuple[list[str], list[str], torch.Tensor | None, list[str], object]:
    """(calibration texts, eval texts, eval labels or None, head training texts, training labels)."""
    if args.texts:
        texts = _read_texts(args.texts)
        logger.info("--texts: %d sentences; calibration uses the first ones too (no other data)", len(texts))
        return texts, texts, None, [], None
    from lowbit.data.rotten_tomatoes import load_rotten_tomatoes

    data = load_rotten_tomatoes(seed=args.seed)
    n_test = min(args.max_test, len(data.test_texts))
    n_train = min(args.max_train, len(data.train_texts))
    # calibration snippets come from the *end* of the training split (the head's part is its start; they
    # overlap only when --max-train reaches them); the held-out split is never seen before evaluation
    n_calib = args.calib_batches * args.calib_batch_size
    calib = data.train_texts[-n_calib:]
    return (
        calib,
        data.test_texts[:n_test],
        data.test_labels[:n_test],
        data.train_texts[:n_train],
        data.train_labels[:n_train],
    )


def _load_model(name: str) -> tuple[torch.nn.Module, object]:
    from lowbit.models.bert import load_minilm

    return load_minilm(None if name == "minilm" else name)


def _table(records: list[dict]) -> str:
    w = max(24, *(len(r["format"]) for r in records))
    head = (
        f"{'format':<{w}} {'emb cosine':>10} {'min cos':>8} {'accuracy':>8} {'Δacc':>6} "
        f"{'weight bytes':>12} {'ratio':>6} {'SQNR dB':>8} {'seconds':>7}"
    )
    lines = [head, "-" * len(head)]
    ref_acc = next((r["accuracy"] for r in records if r["recipe"] == "FP32"), None)
    for r in records:
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        delta = "" if r["accuracy"] is None or ref_acc is None else f"{r['accuracy'] - ref_acc:+.2f}"
        sq = r.get("mean_layer_sqnr_db")
        sq_txt = "inf" if sq is None or math.isinf(sq) else f"{sq:.1f}"
        lines.append(
            f"{r['format']:<{w}} {r['embedding_cosine']:>10.6f} {r['min_cosine']:>8.5f} {acc:>8} {delta:>6} "
            f"{r['weight_bytes']:>12,} {r['weight_ratio']:>6.3f} {sq_txt:>8} {r['seconds']:>7.1f}"
        )
    return "\n".join(lines)


def _setup(
    args: argparse.Namespace,
) -> tuple[list[FormatEntry], dict[str, PTQConfig | WeightOnlyConfig], tuple, torch.nn.Module, object]:
    """Check the flags and output paths, then load data and model (before any work): (entries, configs by
    label, ``_load_data``'s tuple, model, tokenizer); a user's error becomes ``UserError``."""
    try:
        entries = parse_formats(args.formats, args)
        configs = {e.label: config_for(e, args) for e in entries if e.name != "fp32"}
        if args.calib_batches < 1 or args.max_test < 1:
            raise ValueError("--calib-batches and --max-test must be >= 1")
        for name in ("calib_batch_size", "max_train", "batch_size", "max_length"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if not 0 < args.percentile <= 100:
            raise ValueError(f"--percentile must be in (0, 100], got {args.percentile}")
        if args.json:  # output paths are checked before any work
            check_output_file(args.json, "--json")
        if configs or args.save:
            check_output_dir(args.out, "--out")
        data = _load_data(args)
        model, tokenizer = _load_model(args.model)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise UserError(str(err)) from None
    return entries, configs, data, model, tokenizer


def _reference(
    args: argparse.Namespace, model: torch.nn.Module, tokenizer: object, data: tuple
) -> tuple[torch.Tensor, float, object | None]:
    """The FP32 side of every comparison: (embeddings of the eval texts, their seconds, the accuracy head
    trained on FP32 embeddings of the training texts, or None without labels)."""
    _, eval_texts, eval_labels, train_texts, train_labels = data
    t0 = time.perf_counter()
    ref_emb = embed_sorted(model, tokenizer, eval_texts, args.batch_size, args.max_length)
    fp32_seconds = time.perf_counter() - t0
    logger.info("FP32 embeddings of %d texts: %.1f s", len(eval_texts), fp32_seconds)
    head = None
    if eval_labels is not None:
        from lowbit.models.bert import train_linear_head

        t0 = time.perf_counter()
        train_emb = embed_sorted(model, tokenizer, train_texts, args.batch_size, args.max_length)
        head = train_linear_head(train_emb, train_labels, 2, epochs=200, seed=args.seed)
        logger.info("head trained on %d FP32 embeddings: %.1f s", len(train_texts), time.perf_counter() - t0)
    return ref_emb, fp32_seconds, head


def _calibrate(
    args: argparse.Namespace,
    model: torch.nn.Module,
    tokenizer: object,
    calib_texts: list[str],
    configs: dict[str, PTQConfig | WeightOnlyConfig],
) -> object | None:
    """One calibration pass over the calibration batches when a format needs one (else None)."""
    batches = [
        dict(tokenizer(calib_texts[i : i + args.calib_batch_size], padding=True, truncation=True,
                       max_length=args.max_length, return_tensors="pt"))
        for i in range(0, len(calib_texts), args.calib_batch_size)
    ][: args.calib_batches]  # fmt: skip
    calibration = None  # one pass: every observer rule reads the same statistics (config.observer picks)
    if any(isinstance(c, PTQConfig) and c.needs_calibration for c in configs.values()):
        calibration = calibrate(model, batches)
    return calibration


def _quantized(
    args: argparse.Namespace,
    entry: FormatEntry,
    config: PTQConfig | WeightOnlyConfig,
    model: torch.nn.Module,
    tokenizer: object,
    calibration: object | None,
    eval_texts: list[str],
) -> tuple[torch.Tensor, int, tuple, float] | None:
    """Quantize a copy of ``model`` as ``entry`` says and embed the eval texts with it: (embeddings, weight
    bytes, per-layer SQNR curves, seconds); None (logged) when the format cannot be applied to the model."""
    fmt = entry.label
    t0 = time.perf_counter()
    qmodel = copy.deepcopy(model)
    try:
        summary = lowbit.convert(qmodel, config, calibration).details  # PTQ's own report: bytes
    except (ValueError, TypeError) as err:  # e.g. a model whose widths do not fit MX blocks
        logger.error("%s cannot be applied to %s: %s", fmt, args.model, err)
        return None
    emb = embed_sorted(qmodel, tokenizer, eval_texts, args.batch_size, args.max_length)
    seconds = time.perf_counter() - t0
    in_model, isolated = layer_sqnr(model, qmodel, tokenizer, eval_texts[:SQNR_TEXTS], args.max_length)
    if args.save:
        save_quantized(qmodel, Path(args.out) / f"{fmt.replace('/', '_')}.safetensors")
    return emb, summary.weight_bytes, (in_model, isolated), seconds


def _report(
    args: argparse.Namespace, data: tuple, head: object | None, records: list[dict], curves: dict
) -> None:
    """Print the run's description and table; write the SQNR plot and the --json records."""
    _, eval_texts, _, train_texts, _ = data
    what = f"{len(eval_texts)} {'--texts sentences' if args.texts else 'held-out Rotten Tomatoes snippets'}"
    print(
        f"model {args.model}; {what}; default observer {args.observer}; "
        f"calibration {args.calib_batches} batches of {args.calib_batch_size}"
    )
    if head is not None:
        print(f"accuracy: logistic head trained on FP32 embeddings of {len(train_texts)} training snippets")
    print(_table(records))
    if curves:
        png = plot_sqnr(curves, Path(args.out) / "sqnr.png", f"{args.model} PTQ")
        print(f"per-layer SQNR plot: {png}")
    if args.json:
        atomic_write_text(args.json, json.dumps(records, indent=2) + "\n")
        print(f"records: {args.json}")


def run(args: argparse.Namespace) -> int:
    """Run the comparison; print the table; write OUT/sqnr.png and the JSON. Returns the exit code."""
    start = time.perf_counter()
    entries, configs, data, model, tokenizer = _setup(args)
    from lowbit.models.bert import evaluate_head

    eval_texts, eval_labels = data[1], data[2]
    torch.manual_seed(args.seed)
    ref_emb, fp32_seconds, head = _reference(args, model, tokenizer, data)
    calibration = _calibrate(args, model, tokenizer, data[0], configs)
    fp32_bytes = sum(m.weight.numel() * 4 for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and "encoder" in n.split("."))  # fmt: skip
    records, curves = [], {}
    for entry in entries:
        fmt = entry.label
        if entry.name == "fp32":
            emb, weight_bytes, mean_sqnr, seconds = ref_emb, fp32_bytes, math.inf, fp32_seconds
        else:
            measured = _quantized(args, entry, configs[fmt], model, tokenizer, calibration, eval_texts)
            if measured is None:
                return 2
            emb, weight_bytes, curves[fmt], seconds = measured
            mean_sqnr = sum(curves[fmt][0].values()) / len(curves[fmt][0])
        cos = embedding_cosine(ref_emb, emb)
        acc = None if head is None else evaluate_head(head, emb, eval_labels)
        records.append(
            {
                "format": fmt,
                "embedding_cosine": float(cos.mean()),
                "accuracy": acc,
                "weight_bytes": int(weight_bytes),
                "min_cosine": float(cos.min()),
                "weight_bytes_fp32": int(fp32_bytes),
                "weight_ratio": weight_bytes / fp32_bytes,
                "mean_layer_sqnr_db": None if math.isinf(mean_sqnr) else mean_sqnr,
                "recipe": "FP32" if entry.name == "fp32" else configs[fmt].describe(),
                "observer": None if entry.name == "fp32" else entry.observer,
                "seconds": seconds,
            }
        )
        logger.info("%s: cosine %.6f, accuracy %s", fmt, records[-1]["embedding_cosine"], acc)
    _report(args, data, head, records, curves)
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return 0
