"""GEMM benchmark: torch FP32 matmul vs lowbit INT8 / INT4 vs the oneDNN dynamic-quantized linear peer.

Every row computes ``y = x @ w.T`` for float32 activations ``x`` (M, K) and a weight (N, K) prepared once
(lowbit: quantized codes packed with ``pack_weight``; peer: ``quantized.linear_prepack``). Timed per call:

* ``fp32``: ``torch.addmm(bias, x, w.T, out=y)`` (MKL).
* ``int4``: ``lowbit.ops.linear`` — per-row quantization of x to [-7, 7] and packing, u4 x s4 integer GEMM
  with int16 accumulation, dequantization epilogue into ``y``; weight codes in [-8, 7].
* ``int8``: the same with 8-bit codes on both sides ([-127, 127] activations, [-127, 127] weight): the exact
  int16 kernel.
* ``int8-a7``: 7-bit activations ([-63, 63]) with 8-bit weights: the u7 x s8 kernel.
* ``peer-onednn-int8``: ``torch.ops.quantized.linear_dynamic`` with the onednn engine (quantizes x too).

Quantization + packing of x and the GEMM alone are also timed separately (``quant_ms``, ``gemm_ms``). Methods
are interleaved within each repeat and medians are reported; run on a quiet machine and compare ratios.
Usage: ``python benchmarks/gemm.py [--json FILE]`` or ``lowbit bench gemm [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import lowbit.ops as ops
from lowbit.ops import native_gemm

logger = logging.getLogger(__name__)

TRANSFORMER_SHAPES = [(4096, 768, 768), (4096, 768, 3072), (4096, 3072, 768)]  # tokens x (K -> N)
SQUARE_SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096)]
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, help="also write the records to this JSON file")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per method (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per method first")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads")
    parser.add_argument("--shapes", choices=["all", "transformer", "square"], default="all")
    parser.add_argument("--no-results-file", action="store_true", help="do not write results/gemm.{json,md}")


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _methods(m: int, k: int, n: int, gen: torch.Generator) -> dict[str, Callable[[], object]]:
    """One closure per timed method, all writing into preallocated outputs."""
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k**0.5
    bias = torch.randn(n, generator=gen)
    y = torch.empty(m, n)
    w_int4, s4 = ops.quantize_rows(w, 4)  # per-output-channel codes in [-7, 7]
    w_int8, s8 = ops.quantize_rows(w, 8)  # [-127, 127]
    p4 = ops.pack_weight(w_int4, s4, bits=4)
    p8 = ops.pack_weight(w_int8, s8, bits=8)
    wt = w.t()
    methods: dict[str, Callable[[], object]] = {
        "fp32": lambda: torch.addmm(bias, x, wt, out=y),
        "int4": lambda: ops.linear(x, p4, bias, out=y),
        "int8": lambda: ops.linear(x, p8, bias, out=y),
        "int8-a7": lambda: ops.linear(x, p8, bias, act_bits=7, out=y),
    }
    # the pieces of the int4 / int8 rows, timed alone
    kind4, off4, q4 = p4.plan(4)
    a4, sx4 = native_gemm.quant_pack_a(x, q4, off4)
    methods["int4:quant"] = lambda: native_gemm.quant_pack_a(x, q4, off4)
    methods["int4:gemm"] = lambda: native_gemm.gemm(
        kind4,
        off4,
        a4,
        p4.packed,
        p4.colsum,
        m,
        n,
        k,
        native_gemm.Epilogue(out_f32=y, a_scale=sx4, b_scale=p4.scale, bias=bias),
    )
    kind8, off8, q8 = p8.plan(8)
    a8, sx8 = native_gemm.quant_pack_a(x, q8, off8, kind8)
    methods["int8:quant"] = lambda: native_gemm.quant_pack_a(x, q8, off8, kind8)
    methods["int8:gemm"] = lambda: native_gemm.gemm(
        kind8,
        off8,
        a8,
        p8.packed_s16,
        None,
        m,
        n,
        k,
        native_gemm.Epilogue(out_f32=y, a_scale=sx8, b_scale=p8.scale, bias=bias),
    )
    kind7, off7, q7 = p8.plan(7)
    a7, sx7 = native_gemm.quant_pack_a(x, q7, off7)
    methods["int8-a7:quant"] = lambda: native_gemm.quant_pack_a(x, q7, off7)
    methods["int8-a7:gemm"] = lambda: native_gemm.gemm(
        kind7,
        off7,
        a7,
        p8.packed,
        p8.colsum,
        m,
        n,
        k,
        native_gemm.Epilogue(out_f32=y, a_scale=sx7, b_scale=p8.scale, bias=bias),
    )
    # peer: oneDNN dynamic quantized linear (per-channel int8 weight, activations quantized per call)
    torch.backends.quantized.engine = "onednn"
    with warnings.catch_warnings():  # the quantized-tensor API is deprecated but is still the peer to beat
        warnings.simplefilter("ignore", UserWarning)
        qw = torch.quantize_per_channel(w, s8.double(), torch.zeros(n, dtype=torch.long), 0, torch.qint8)
    packed_peer = torch.ops.quantized.linear_prepack(qw, bias)
    methods["peer-onednn-int8"] = lambda: torch.ops.quantized.linear_dynamic(x, packed_peer, True)
    return methods


def bench_shape(m: int, k: int, n: int, repeats: int, warmup: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    methods = _methods(m, k, n, gen)
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):  # interleaved: each repeat times every method once
        for name, fn in methods.items():
            times[name].append(_time(fn))
    ms = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
    gop = 2.0 * m * k * n / 1e9
    records = []
    for name in ("fp32", "int4", "int8", "int8-a7", "peer-onednn-int8"):
        rec = {
            "shape": f"{m}x{k}x{n}",
            "dtype": name,
            "ms": round(ms[name], 3),
            "gops": round(gop / (ms[name] / 1e3), 1),
            "speedup_vs_fp32": round(ms["fp32"] / ms[name], 3),
        }
        if f"{name}:gemm" in ms:
            rec["quant_ms"] = round(ms[f"{name}:quant"], 3)
            rec["gemm_ms"] = round(ms[f"{name}:gemm"], 3)
            rec["gemm_gops"] = round(gop / (ms[f"{name}:gemm"] / 1e3), 1)
        records.append(rec)
    return records


def format_table(records: list[dict]) -> str:
    head = "| shape MxKxN | dtype | ms | GOP/s | vs FP32 | quant+pack ms | GEMM-only ms | GEMM-only GOP/s |"
    lines = [head, "|" + "---|" * 8]
    for r in records:
        extra = [str(r.get(key, "")) for key in ("quant_ms", "gemm_ms", "gemm_gops")]
        cells = [r["shape"], r["dtype"], f"{r['ms']:.2f}", f"{r['gops']:.1f}", f"{r['speedup_vs_fp32']:.2f}x"]
        lines.append("| " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not native_gemm.native.available():
        logger.error("native kernels unavailable: %s", ops.why_not_native())
        return 1
    torch.set_num_threads(args.threads)
    shapes = {"transformer": TRANSFORMER_SHAPES, "square": SQUARE_SHAPES}.get(
        args.shapes, TRANSFORMER_SHAPES + SQUARE_SHAPES
    )
    records: list[dict] = []
    for m, k, n in shapes:
        logger.info("benchmarking %dx%dx%d", m, k, n)
        records += bench_shape(m, k, n, args.repeats, args.warmup)
    table = format_table(records)
    header = (
        f"torch {torch.__version__}, {args.threads} threads, medians of {args.repeats} interleaved repeats "
        f"after {args.warmup} warm-up calls; lowbit backend: {ops.backend()}"
    )
    print(header + "\n\n" + table)  # noqa: T201 - the benchmark's report
    payload = json.dumps(records, indent=1)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(payload)
    if not args.no_results_file:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "gemm.json").write_text(payload)
        (RESULTS_DIR / "gemm.md").write_text(f"# GEMM benchmark\n\n{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    raise SystemExit(run(cli.parse_args()))
