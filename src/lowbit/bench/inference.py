"""Integer-only inference vs FP32 vs torch dynamic INT8 (``quantize_dynamic``) on the Integer-Transformer GPT.

One process: trains (or loads ``--checkpoint``) the FP32 GPT exactly as ``lowbit infer`` does, converts it to
lowbit's integer-only graph and to ``torch.ao.quantization.quantize_dynamic`` (int8 ``nn.Linear``s, the path
a user would pick instead), then times one forward of a batch × sequence = ``--tokens`` (default 4096) batch,
the three variants interleaved round-robin so that load from other jobs hits each alike, and reports the
held-out loss of each. Prints a table with speed ratios; ``--json FILE`` writes the figures (and
``--results FILE``, default ``results/inference/{gpt,minilm}_<cpu>.json``, keeps the last run on this CPU).

``--profile`` adds a per-op time table of one integer forward (fused GEMMs by shape, attention, norms, the
rest) and of one FP32 forward (torch profiler, top ops). ``--task minilm-rt`` times all-MiniLM-L6-v2 FP32 vs
integer-only on ``--minilm-batches`` batches of 32 Rotten Tomatoes test snippets instead (fidelity: ``lowbit
infer --task minilm-rt``). The JSON records the 1-minute load average before and after the timing.

Run ``python -m lowbit.bench.inference [--train-steps 300] [--reps 5] [--threads 1]`` or
``lowbit bench inference ...``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch

import lowbit
from lowbit.bench import RESULTS_DIR
from lowbit.experiments import infer
from lowbit.files import atomic_write_text
from lowbit.ops import backends

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (plus the model/training flags of ``lowbit infer``)."""
    infer.add_arguments(parser)
    parser.add_argument("--tokens", type=int, default=4096, help="batch x sequence tokens per forward")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per variant")
    parser.add_argument(
        "--results",
        default=None,
        help="also keep the run's figures here (default: results/inference/{gpt,minilm}_<cpu>.json)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="per-op times of the integer and FP32 forwards"
    )
    parser.add_argument("--minilm-batches", type=int, default=4, help="minilm-rt: timed batches of 32 texts")


def results_path(args: argparse.Namespace, model: str) -> Path:
    """``--results``, or this CPU's file ``results/inference/<model>_<cpu>.json`` (one per model and CPU)."""
    return (
        Path(args.results)
        if args.results
        else RESULTS_DIR / "inference" / f"{model}_{backends.cpu_slug()}.json"
    )


def measure(variants: dict[str, object], x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median ms of one forward per variant, interleaved round-robin after a warm-up."""
    with torch.no_grad():
        for fn in variants.values():
            fn(x)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(reps):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def profile_integer(im: object, x: torch.Tensor, reps: int = 3) -> dict[str, float]:
    """Mean ms per integer forward spent in each kind of op (timers around the graph's kernel calls)."""
    from lowbit.integer import fast, graph

    acc: dict[str, float] = collections.defaultdict(float)
    saved = []

    def timed(owner: object, attr: str, label) -> None:
        fn = getattr(owner, attr)
        saved.append((owner, attr, fn))

        def wrapper(*a: object, **k: object) -> object:
            t0 = time.perf_counter()
            out = fn(*a, **k)
            acc[label(*a) if callable(label) else label] += time.perf_counter() - t0
            return out

        setattr(owner, attr, wrapper)

    timed(fast.PackedLinear, "__call__", lambda self, x, **_: f"fused GEMM+requant N={self.n} K={self.k}")
    labels = {
        "attention_fused": "attention (fused)",
        "norm_rows": "L1 LayerNorm",
        "requant_channels": "requantize (embeddings)",
        "int_matmul": "lm_head GEMM",
    }
    for attr, label in labels.items():
        timed(graph, attr, label)
    try:
        im(x)
        acc.clear()
        t0 = time.perf_counter()
        for _ in range(reps):
            im(x)
        total = (time.perf_counter() - t0) / reps * 1e3
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
    table = {k: v / reps * 1e3 for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
    table["rest (embedding gather, Python, output dequantization)"] = total - sum(table.values())
    table["total"] = total
    return table


def profile_fp32(model: torch.nn.Module, x: torch.Tensor, top: int = 8) -> dict[str, float]:
    """ms of one FP32 forward per aten op (self time, torch profiler), the ``top`` largest plus the rest."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    table = {e.key: e.self_cpu_time_total / 1e3 for e in rows[:top]}
    table["other ops"] = sum(e.self_cpu_time_total for e in rows[top:]) / 1e3
    table["total"] = sum(table.values())
    return table


def onnxruntime_int8(model: torch.nn.Module, example: dict[str, torch.Tensor]):
    """ONNX Runtime's dynamically quantized INT8 copy of the model (what a CPU deployment would run instead):
    (callable batch -> last hidden state, note), or (None, why not) when the optional ``onnxruntime`` /
    ``onnx`` packages are missing (``pip install -e .[bench]``) or the export fails."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        return None, f"skipped ({err.name} not installed: pip install -e .[bench])"
    import tempfile

    names = ("input_ids", "attention_mask", "token_type_ids")

    class Hidden(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, i, a, t):
            return self.m(input_ids=i, attention_mask=a, token_type_ids=t).last_hidden_state

    tmp = Path(tempfile.mkdtemp(prefix="lowbit-ort-"))
    axes = {n: {0: "batch", 1: "tokens"} for n in (*names, "hidden")}
    try:
        # a copy: the TorchScript exporter leaves the model it traced changed (its outputs moved: cosine 0.92)
        inputs = tuple(example[n] for n in names)
        torch.onnx.export(Hidden(copy.deepcopy(model)), inputs, str(tmp / "fp32.onnx"),
                          input_names=list(names), output_names=["hidden"], dynamic_axes=axes, dynamo=False,
                          opset_version=17)  # fmt: skip
        quantize_dynamic(str(tmp / "fp32.onnx"), str(tmp / "int8.onnx"), weight_type=QuantType.QInt8)
    except Exception as err:  # an exporter failure is a note in a benchmark, not a crash
        return None, f"skipped (export failed: {type(err).__name__}: {err})"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(tmp / "int8.onnx"), opts, providers=["CPUExecutionProvider"])

    def run(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {n: b[n].numpy() for n in names})[0])

    threads = opts.intra_op_num_threads
    return run, f"onnxruntime {ort.__version__} quantize_dynamic (QInt8 weights), {threads} threads"


def _minilm_variants(
    model: torch.nn.Module, im: object, example: dict[str, torch.Tensor]
) -> tuple[dict[str, object], str]:
    """The MiniLM variants (batch -> sentence embeddings): FP32, bf16 autocast, lowbit integer-only and,
    when it can be built, ONNX Runtime INT8; and the ONNX Runtime note."""
    from lowbit.models.bert import mean_pool

    def fp32(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_pool(model(**b).last_hidden_state, b["attention_mask"])

    def bf16(b: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return mean_pool(model(**b).last_hidden_state.float(), b["attention_mask"])

    def integer(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return im(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))

    variants = {"fp32": fp32, "bf16-autocast": bf16, "lowbit-integer": integer}
    ort_fn, ort_note = onnxruntime_int8(model, example)
    if ort_fn is not None:
        variants["onnxruntime-int8"] = lambda b: mean_pool(ort_fn(b), b["attention_mask"])
    return variants, ort_note


def _time_minilm(
    variants: dict[str, object], batches: list[dict[str, torch.Tensor]], reps: int
) -> tuple[dict[str, float], dict[str, list[torch.Tensor]]]:
    """Median ms per batch of each variant (interleaved after a warm-up) and each non-FP32 variant's mean
    cosine to the FP32 embeddings, per timed batch."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    cos: dict[str, list[torch.Tensor]] = {name: [] for name in variants if name != "fp32"}
    with torch.no_grad():
        for fn in variants.values():
            fn(batches[0])
        for _ in range(reps):
            for b in batches:
                for name, fn in variants.items():
                    t0 = time.perf_counter()
                    out = fn(b)
                    times[name].append((time.perf_counter() - t0) * 1e3)
                    if name == "fp32":
                        ref = out
                    else:
                        cos[name].append(torch.nn.functional.cosine_similarity(ref, out, dim=-1).mean())
    return {k: statistics.median(v) for k, v in times.items()}, cos


def run_minilm(args: argparse.Namespace) -> int:
    """MiniLM latency: FP32 vs integer-only on batches of 32 test snippets, interleaved; median ms/batch."""
    from lowbit.data.rotten_tomatoes import load_rotten_tomatoes
    from lowbit.integer import IntegerConfig
    from lowbit.models.bert import load_minilm, tokenize

    model, tok = load_minilm()
    data = load_rotten_tomatoes()
    calib = [tokenize(tok, data.train_texts[i * 32 : (i + 1) * 32]) for i in range(args.calib_batches)]
    im = lowbit.convert(model, IntegerConfig(), calib).model  # an IntegerBert
    batches = [tokenize(tok, data.test_texts[i * 32 : (i + 1) * 32]) for i in range(args.minilm_batches)]
    variants, ort_note = _minilm_variants(model, im, batches[0])
    print(f"onnxruntime: {ort_note}")
    load_before = os.getloadavg()[0]
    ms, cos = _time_minilm(variants, batches, args.reps)
    result = {
        "task": "minilm-rt",
        "threads": torch.get_num_threads(),
        "batch": 32,
        "tokens_per_batch": [int(b["input_ids"].numel()) for b in batches],
        "ms_per_batch": ms,
        "speedup_vs_fp32": ms["fp32"] / ms["lowbit-integer"],
        "speedups_vs_fp32": {k: ms["fp32"] / v for k, v in ms.items()},
        "mean_cosine_timed_batches": float(torch.stack(cos["lowbit-integer"]).mean()),
        "mean_cosine_vs_fp32": {k: float(torch.stack(v).mean()) for k, v in cos.items()},
        "cpu": backends.cpu_summary(),
        "backend": str(backends.report()),
        "onnxruntime": ort_note,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }
    print(f"CPU: {result['cpu']}; lowbit backend {backends.report().chosen}")
    print(
        f"MiniLM, {result['threads']} threads, batches of 32 snippets (tokens {result['tokens_per_batch']})"
    )
    for name, v in ms.items():
        cosine = result["mean_cosine_vs_fp32"].get(name, 1.0)
        print(f"{name:<22}{v:>10.1f} ms/batch {ms['fp32'] / v:>6.2f}x fp32   cosine {cosine:.4f}")
    text = json.dumps(result, indent=2) + "\n"
    for path in filter(None, (args.json, results_path(args, "minilm"))):
        atomic_write_text(path, text)
    return 0


def _gpt_variants(model: torch.nn.Module, dyn: torch.nn.Module, im: object) -> dict[str, object]:
    """The GPT variants (tokens -> logits): FP32, bf16 autocast, torch dynamic INT8, lowbit integer-only."""

    def bf16(t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(t)

    return {
        "fp32": lambda t: model(t),
        "bf16-autocast": bf16,
        "torch-dynamic-int8": lambda t: dyn(t),
        "lowbit-integer": im,
    }


def _held_out_losses(
    model: torch.nn.Module, dyn: torch.nn.Module, im: object, batches: list
) -> dict[str, float]:
    """The held-out loss of each GPT variant on ``batches``."""
    from lowbit.integer import integer_lm_loss
    from lowbit.models.gpt import evaluate_lm_loss

    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_loss = evaluate_lm_loss(model, batches)
        return {
            "fp32": evaluate_lm_loss(model, batches),
            "bf16-autocast": bf16_loss,
            "torch-dynamic-int8": evaluate_lm_loss(dyn, batches),
            "lowbit-integer": integer_lm_loss(im, batches),
        }


def _print_gpt(result: dict, variants: dict[str, object], x: torch.Tensor) -> None:
    """The GPT table: ms per forward, speed vs FP32 and held-out loss of each variant, and the load."""
    ms, losses = result["ms"], result["held_out_loss"]
    load_before, load_after = result["load_avg_1min"]
    print(f"CPU: {result['cpu']}; lowbit backend {backends.report().chosen}")
    print(
        f"torch {torch.__version__}, {result['threads']} threads, batch x seq = {x.shape[0]} x {x.shape[1]}"
    )
    print(f"{'variant':<22}{'ms/forward':>12}{'vs fp32':>10}{'held-out loss':>16}")
    for name in variants:
        print(f"{name:<22}{ms[name]:>12.1f}{ms['fp32'] / ms[name]:>9.2f}x{losses[name]:>16.4f}")
    print(f"lowbit-integer vs torch-dynamic-int8: {result['integer_vs_dynamic']:.2f}x")
    print(f"load average (1 min) before / after timing: {load_before:.2f} / {load_after:.2f}")


def _profile(result: dict, im: object, model: torch.nn.Module, x: torch.Tensor) -> None:
    """``--profile``: per-op ms of one integer and one FP32 forward, into ``result`` and printed."""
    with torch.no_grad():
        result["profile_ms"] = {"lowbit-integer": profile_integer(im, x), "fp32": profile_fp32(model, x)}
    for name, table in result["profile_ms"].items():
        print(f"per-op ms, {name}:")
        for op, v in table.items():
            print(f"  {op:<58}{v:>9.1f}")


def run(args: argparse.Namespace) -> int:
    """Train/load, convert, time and evaluate the three variants; print the table."""
    from lowbit.integer import IntegerConfig

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.task == "minilm-rt":
        return run_minilm(args)
    if args.tokens % args.seq_len:
        raise ValueError(f"--tokens {args.tokens} must be a multiple of --seq-len {args.seq_len}")
    model, _, train, val = infer.prepare_gpt(args)
    calib = infer.calibration(train, args)
    config = IntegerConfig(act_qmax=args.act_qmax, weight_qmax=args.weight_qmax)
    im = lowbit.convert(model, config, calib).model  # a new IntegerGPT; the FP32 model is left as it was
    dyn = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    batches = infer.held_out(val, args)
    from lowbit.data.text import sequential_batches

    x = next(iter(sequential_batches(val, args.seq_len, args.tokens // args.seq_len, 1)))[0]  # (B, T)
    variants = _gpt_variants(model, dyn, im)
    load_before = os.getloadavg()[0]
    ms = measure(variants, x, args.reps)
    load_after = os.getloadavg()[0]
    losses = _held_out_losses(model, dyn, im, batches)
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    result = {
        "tokens": x.numel(),
        "shape": list(x.shape),
        "threads": torch.get_num_threads(),
        "model": {"layers": args.layers, "dim": args.dim, "heads": args.heads, "seq_len": args.seq_len},
        "convert": {"act_qmax": args.act_qmax, "weight_qmax": args.weight_qmax},
        "ms": ms,
        "held_out_loss": losses,
        "speedup_vs_fp32": {k: ms["fp32"] / v for k, v in ms.items()},
        "integer_vs_dynamic": ms["torch-dynamic-int8"] / ms["lowbit-integer"],
        "integer_vs_bf16": ms["bf16-autocast"] / ms["lowbit-integer"],
        "cpu": backends.cpu_summary(),
        "backend": str(backends.report()),
        "weight_bytes": {"fp32": fp32_bytes, "lowbit-integer": im.weight_bytes()},
        "load_avg_1min": [load_before, load_after],
    }
    _print_gpt(result, variants, x)
    if args.profile:
        _profile(result, im, model, x)
    text = json.dumps(result, indent=2) + "\n"
    for path in filter(None, (args.json, results_path(args, "gpt"))):
        atomic_write_text(path, text)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
