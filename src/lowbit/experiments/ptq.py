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
from dataclasses import dataclass
from pathlib import Path

import torch

from lowbit.experiments.checkpoint import atomic_write_text
from lowbit.experiments.guard import UserError, check_output_dir, check_output_file
from lowbit.ptq import ObserverSpec, PTQConfig, WeightOnlyConfig, calibrate, quantize, save_quantized
from lowbit.ptq.config import FP8_COMPUTE
from lowbit.ptq.fidelity import embed_sorted, embedding_cosine, layer_sqnr, plot_sqnr

logger = logging.getLogger(__name__)

DEFAULT_FORMATS = "fp32,fp8-e4m3,fp8-e5m2,int8"
KNOWN_FORMATS = ("fp32", "fp8-e4m3", "fp8-e5m2", "int8", "mxfp8-e4m3", "mxfp4", "int4")
OBSERVERS = ("max", "percentile", "mse")
INT8_OPTIONS = ("w7", "a7", "exact")  # PTQConfig.int8_kernel
GPTQ_OPTIONS = ("gptq", "gptq-seq", "gptq-asym")  # PTQConfig.weight_rounding (at most one)
# FP8 and INT8 entries: a GPTQ variant, "ao" (gptq_act_order=True) and "bc" (bias_correction=True)
RECIPE_OPTIONS = (*GPTQ_OPTIONS, "ao", "bc")
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


@dataclass(frozen=True)
class FormatEntry:
    """One ``--formats`` entry: ``NAME[/WEIGHT_GRAN[/ACT_GRAN]][@OBSERVER][+OPTION...]``, e.g.
    ``int8/channel/token`` or ``int8+exact``."""

    label: str
    name: str
    weight_granularity: str
    activation_granularity: str
    observer: str
    options: tuple[str, ...] = ()


def parse_formats(text: str, args: argparse.Namespace) -> list[FormatEntry]:
    """``"fp32, int8@mse, int8/channel/token"`` -> entries; defaults come from --granularity,
    --act-granularity and --observer. Unknown names, granularities or observers and repeated entries
    raise ``ValueError``.
    """
    labels = [f.strip().lower() for f in text.split(",") if f.strip()]
    if not labels:
        raise ValueError("--formats is empty; e.g. --formats fp32,fp8-e4m3,int8")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--formats repeats an entry: {labels}")
    entries = []
    for label in labels:
        main, *options = label.split("+")
        body, _, observer = main.partition("@")
        name, *grans = body.split("/")
        if name not in KNOWN_FORMATS:
            raise ValueError(f"unknown format {name!r} in {label!r}; known: {', '.join(KNOWN_FORMATS)}")
        if len(grans) > 2:
            raise ValueError(f"{label!r}: use NAME[/WEIGHT_GRAN[/ACT_GRAN]][@OBSERVER]")
        w_gran = grans[0] if grans else args.granularity
        a_gran = grans[1] if len(grans) > 1 else args.act_granularity
        if w_gran not in ("tensor", "channel") or a_gran not in ("tensor", "token"):
            raise ValueError(
                f"{label!r}: weight granularity tensor|channel, activation granularity tensor|token"
            )
        observer = observer or args.observer
        if observer not in OBSERVERS:
            raise ValueError(f"{label!r}: observer must be one of {OBSERVERS}")
        allowed = (INT8_OPTIONS if name == "int8" else ()) + (
            RECIPE_OPTIONS if name in ("int8", "fp8-e4m3", "fp8-e5m2") else ()
        )
        bad = [o for o in options if o not in allowed]
        n_gptq = sum(o in GPTQ_OPTIONS for o in options)
        if (
            bad
            or len(set(options)) != len(options)
            or sum(o in INT8_OPTIONS for o in options) > 1
            or n_gptq > 1
            or ("ao" in options and not n_gptq)
        ):
            raise ValueError(
                f"{label!r}: options {options} not valid for {name}; fp8/int8 take one of "
                f"{', '.join('+' + o for o in GPTQ_OPTIONS)} (+ao: act-order, needs one of them) and +bc, "
                f"int8 also one of {', '.join('+' + o for o in INT8_OPTIONS)}"
            )
        entries.append(FormatEntry(label, name, w_gran, a_gran, observer, tuple(options)))
    return entries


def config_for(entry: FormatEntry, args: argparse.Namespace) -> PTQConfig | WeightOnlyConfig:
    """The PTQ recipe a ``--formats`` entry stands for."""
    if entry.name == "int4":
        return WeightOnlyConfig("int4", "group", group_size=32)
    if entry.name.startswith("mx"):
        return PTQConfig(entry.name, entry.name)
    observer = (
        ObserverSpec("percentile", args.percentile) if entry.observer == "percentile" else entry.observer
    )
    int8_kernel = next((o for o in entry.options if o in INT8_OPTIONS), "auto")
    return PTQConfig(
        entry.name,
        entry.name,
        weight_granularity=entry.weight_granularity,
        activation_granularity=entry.activation_granularity,
        fp8_compute=args.fp8_compute,
        observer=observer,
        int8_kernel=int8_kernel,
        weight_rounding=next((o for o in entry.options if o in GPTQ_OPTIONS), "nearest"),
        gptq_act_order="ao" in entry.options,
        bias_correction="bc" in entry.options,
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


def run(args: argparse.Namespace) -> int:
    """Run the comparison; print the table; write OUT/sqnr.png and the JSON. Returns the exit code."""
    start = time.perf_counter()
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
        calib_texts, eval_texts, eval_labels, train_texts, train_labels = _load_data(args)
        model, tokenizer = _load_model(args.model)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise UserError(str(err)) from None
    out = Path(args.out)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    ref_emb = embed_sorted(model, tokenizer, eval_texts, args.batch_size, args.max_length)
    fp32_seconds = time.perf_counter() - t0
    logger.info("FP32 embeddings of %d texts: %.1f s", len(eval_texts), fp32_seconds)
    head = None
    if eval_labels is not None:
        from lowbit.models.bert import evaluate_head, train_linear_head

        t0 = time.perf_counter()
        train_emb = embed_sorted(model, tokenizer, train_texts, args.batch_size, args.max_length)
        head = train_linear_head(train_emb, train_labels, 2, epochs=200, seed=args.seed)
        logger.info("head trained on %d FP32 embeddings: %.1f s", len(train_texts), time.perf_counter() - t0)

    batches = [
        dict(tokenizer(calib_texts[i : i + args.calib_batch_size], padding=True, truncation=True,
                       max_length=args.max_length, return_tensors="pt"))
        for i in range(0, len(calib_texts), args.calib_batch_size)
    ][: args.calib_batches]  # fmt: skip
    calibration = None  # one pass: every observer rule reads the same statistics (config.observer picks)
    if any(isinstance(c, PTQConfig) and c.needs_calibration for c in configs.values()):
        calibration = calibrate(model, batches)

    fp32_bytes = sum(m.weight.numel() * 4 for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and "encoder" in n.split("."))  # fmt: skip
    records, curves = [], {}
    sqnr_texts = eval_texts[:SQNR_TEXTS]
    for entry in entries:
        fmt = entry.label
        t0 = time.perf_counter()
        if entry.name == "fp32":
            emb, weight_bytes, mean_sqnr = ref_emb, fp32_bytes, math.inf
            seconds = fp32_seconds
        else:
            qmodel = copy.deepcopy(model)
            try:
                summary = quantize(qmodel, configs[fmt], calibration)
            except (ValueError, TypeError) as err:  # e.g. a model whose widths do not fit MX blocks
                logger.error("%s cannot be applied to %s: %s", fmt, args.model, err)
                return 2
            emb = embed_sorted(qmodel, tokenizer, eval_texts, args.batch_size, args.max_length)
            seconds = time.perf_counter() - t0
            weight_bytes = summary.weight_bytes
            in_model, isolated = layer_sqnr(model, qmodel, tokenizer, sqnr_texts, args.max_length)
            curves[fmt] = (in_model, isolated)
            mean_sqnr = sum(in_model.values()) / len(in_model)
            if args.save:
                save_quantized(qmodel, out / f"{fmt.replace('/', '_')}.safetensors")
            del qmodel
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

    what = f"{len(eval_texts)} {'--texts sentences' if args.texts else 'held-out Rotten Tomatoes snippets'}"
    print(
        f"model {args.model}; {what}; default observer {args.observer}; "
        f"calibration {args.calib_batches} batches of {args.calib_batch_size}"
    )
    if head is not None:
        print(f"accuracy: logistic head trained on FP32 embeddings of {len(train_texts)} training snippets")
    print(_table(records))
    if curves:
        png = plot_sqnr(curves, out / "sqnr.png", f"{args.model} PTQ")
        print(f"per-layer SQNR plot: {png}")
    if args.json:
        atomic_write_text(args.json, json.dumps(records, indent=2) + "\n")
        print(f"records: {args.json}")
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return 0
