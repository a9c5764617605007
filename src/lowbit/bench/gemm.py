"""GEMM benchmark: torch FP32 / BF16 vs lowbit INT8 / INT4 vs the oneDNN INT8 peers, on the CPU at hand.

Every row computes ``y = x @ w.T + bias`` for float32 activations ``x`` (M, K) and a weight (N, K) into a
preallocated ``y`` (every method writes into the same reused buffer, so none pays page faults). Weights are
prepared once outside the timing, as in real use (lowbit: per-channel codes packed with ``pack_weight``;
peer: ``quantized.linear_prepack``); the activations' quantization and packing is inside every timed call.

* ``fp32``: ``torch.addmm(bias, x, w.T, out=y)`` (MKL).
* ``bf16``: the same in bfloat16 (activations, weight, bias and output already bf16: the path a user of a
  CPU with AVX512-BF16 / AMX-BF16 picks instead; no casts timed).
* ``int4``: ``lowbit.ops.linear``: activations per row to [-7, 7], weight codes in [-7, 7].
* ``int8``: what lowbit's INT8 recipe runs (``lowbit.ptq``'s default ``int8_kernel="w7"``): 8-bit activations
  per row in [-127, 127], 7-bit per-channel weight codes in [-63, 63].
* ``int8-a7``: 7-bit activations in [-63, 63] (``act_bits=7``) with 8-bit weights in [-127, 127].
* ``int8-full``: 8-bit codes on both sides ([-127, 127]).
* ``int8-static``: ``lowbit.ptq``'s static per-tensor INT8 (``linear(..., act_scale=s)``): every row quantized
  with one calibrated scale (here ``absmax(x) / 127``) to [-128, 127], 7-bit weights.
* ``peer-onednn-int8``: ``torch.ops.quantized.linear_dynamic`` with the onednn engine (quantizes x too;
  8-bit per-channel weights, float out).
* ``torch-int-mm``: ``torch._int_mm`` on int8 codes already quantized, int32 out: torch's exact INT8 GEMM
  alone (no quantization, no epilogue — less work than every other row).
The lowbit rows run on one backend (``--backend``, default what ``lowbit.ops.backend()`` picks); on the
``avx2`` ISA the rows differ in kernel (u4 x s4, u8 x s7, u7 x s8, the int16 kernel), on ``avx512-vnni`` they
all run the ``vpdpbusd`` kernel.

Each lowbit row's pieces are also timed alone: quantization + packing of x (``quant_ms``) and the GEMM with
its epilogue on prepacked operands (``gemm_ms``); the full row runs them fused. Methods are interleaved
within each repeat and medians are reported; run on a quiet machine and compare ratios from one run.
Usage: ``python -m lowbit.bench.gemm [--json FILE]`` or ``lowbit bench gemm [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import lowbit.ops as ops
from lowbit.bench import RESULTS_DIR
from lowbit.files import atomic_write_text
from lowbit.formats import INT4_SYMMETRIC, INT8_SYMMETRIC, W7_WEIGHT_RANGE
from lowbit.ops import backends, native_gemm

logger = logging.getLogger(__name__)

TRANSFORMER_SHAPES = [(4096, 768, 768), (4096, 768, 3072), (4096, 3072, 768)]  # tokens x (K -> N)
SQUARE_SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, help="also write the records to this JSON file")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per method (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per method first")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads")
    parser.add_argument("--shapes", choices=["all", "transformer", "square"], default="all")
    parser.add_argument(
        "--backend", default="auto", choices=list(backends.BACKENDS), help="lowbit backend of the lowbit rows"
    )
    parser.add_argument(
        "--no-results-file", action="store_true", help="do not write results/gemm/<cpu>.{json,md}"
    )


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# lowbit rows: (name, weight bits, weight qmax, activation bits, static per-tensor activation scale)
LOWBIT_ROWS = [
    ("int4", 4, INT4_SYMMETRIC.hi, 4, False),
    ("int8", 8, W7_WEIGHT_RANGE.hi, 8, False),
    ("int8-a7", 8, INT8_SYMMETRIC.hi, 7, False),
    ("int8-full", 8, INT8_SYMMETRIC.hi, 8, False),
    ("int8-static", 8, W7_WEIGHT_RANGE.hi, 8, True),
]
DTYPES = ["fp32", "bf16"] + [row[0] for row in LOWBIT_ROWS] + ["peer-onednn-int8", "torch-int-mm"]
TORCH_BACKEND = {
    "fp32": "torch (MKL)",
    "bf16": "torch (oneDNN)",
    "peer-onednn-int8": "torch (oneDNN)",
    "torch-int-mm": "torch (oneDNN)",
}


def code_ranges() -> dict[str, str]:
    """The activation and weight code ranges of each lowbit row (for the table and the JSON records)."""
    out = {}
    for name, _, w_qmax, act_bits, static in LOWBIT_ROWS:
        a_qmax = 2 ** (act_bits - 1) - 1
        a_lo = a_qmax + 1 if static else a_qmax
        out[name] = f"act [-{a_lo}, {a_qmax}]{' static' if static else ''}, weight [-{w_qmax}, {w_qmax}]"
    return out


def _methods(m: int, k: int, n: int, gen: torch.Generator, backend: str) -> dict[str, Callable[[], object]]:
    """One closure per timed method, all writing into the same preallocated output."""
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k**0.5
    bias = torch.randn(n, generator=gen)
    y = torch.empty(m, n)
    wt = w.t()
    xb, wbt, biasb, yb = (
        x.bfloat16(),
        w.bfloat16().t(),
        bias.bfloat16(),
        torch.empty(m, n, dtype=torch.bfloat16),
    )
    methods: dict[str, Callable[[], object]] = {
        "fp32": lambda: torch.addmm(bias, x, wt, out=y),
        "bf16": lambda: torch.addmm(biasb, xb, wbt, out=yb),
    }
    for name, bits, w_qmax, act_bits, static in LOWBIT_ROWS:
        w_bits = w_qmax.bit_length() + 1  # quantize_rows bits giving codes in [-w_qmax, w_qmax]
        w_codes, w_scale = ops.quantize_rows(w, w_bits)  # per output channel
        packed = ops.pack_weight(w_codes, w_scale, bits=bits, backend=backend)
        act_scale = float(x.abs().max()) / (2 ** (act_bits - 1) - 1) if static else None
        methods.update(_lowbit_methods(name, x, packed, bias, act_bits, y, act_scale, backend))
    a8, _ = ops.quantize_rows(x, 8)
    w8t = ops.quantize_rows(w, 8)[0].t()
    acc = torch.empty(m, n, dtype=torch.int32)
    methods["torch-int-mm"] = lambda: torch._int_mm(a8, w8t, out=acc)
    # peer: oneDNN dynamic quantized linear (per-channel int8 weight, activations quantized per call)
    torch.backends.quantized.engine = "onednn"
    _, s8 = ops.quantize_rows(w, 8)
    with warnings.catch_warnings():  # the quantized-tensor API is deprecated but is still the peer to beat
        warnings.simplefilter("ignore", UserWarning)
        qw = torch.quantize_per_channel(w, s8.double(), torch.zeros(n, dtype=torch.long), 0, torch.qint8)
    packed_peer = torch.ops.quantized.linear_prepack(qw, bias)
    methods["peer-onednn-int8"] = lambda: torch.ops.quantized.linear_dynamic(x, packed_peer, True)
    return methods


def _lowbit_methods(
    name, x, packed, bias, act_bits, y, act_scale, backend
) -> dict[str, Callable[[], object]]:
    """``name``: the full ``linear``; on a native ISA also ``name:quant`` / ``name:gemm`` (its pieces)."""
    m, k = x.shape
    n = packed.out_features
    full = {
        name: lambda: ops.linear(
            x, packed, bias, act_bits=act_bits, act_scale=act_scale, out=y, backend=backend
        )
    }
    if not backends.is_native(backend):
        return full
    kind, off, qmax = packed.plan(act_bits, static=act_scale is not None, isa=backend)
    if act_scale is not None:
        qmax = native_gemm.ActQuant(qmax, -qmax - 1, act_scale)
    b_packed = packed.packed_s16 if kind == native_gemm.KIND_S16 else packed.packed
    a_packed, sx = native_gemm.quant_pack_a(x, qmax, off, kind)
    epi = native_gemm.Epilogue(out_f32=y, a_scale=sx, b_scale=packed.scale, bias=bias)
    if b_packed is None:  # int16 panels of another ISA's packing
        b_packed, _ = native_gemm.pack_b(kind, packed.codes)
    return {
        **full,
        f"{name}:quant": lambda: native_gemm.quant_pack_a(x, qmax, off, kind),
        f"{name}:gemm": lambda: native_gemm.gemm(kind, off, a_packed, b_packed, packed.colsum, m, n, k, epi),
    }


def bench_shape(m: int, k: int, n: int, repeats: int, warmup: int, backend: str = "auto") -> list[dict]:
    """Records of every method on one shape; ``backend``: the lowbit rows' backend (resolved here)."""
    backend = backends.resolve(backend)
    gen = torch.Generator().manual_seed(0)
    methods = _methods(m, k, n, gen, backend)
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
    ranges = code_ranges()
    for name in DTYPES:
        rec = {
            "shape": f"{m}x{k}x{n}",
            "dtype": name,
            "backend": TORCH_BACKEND.get(name, backend),
            "ms": round(ms[name], 3),
            "gops": round(gop / (ms[name] / 1e3), 1),
            "speedup_vs_fp32": round(ms["fp32"] / ms[name], 3),
        }
        if name in ranges:
            rec["codes"] = ranges[name]
        if f"{name}:gemm" in ms:
            rec["quant_ms"] = round(ms[f"{name}:quant"], 3)
            rec["gemm_ms"] = round(ms[f"{name}:gemm"], 3)
            rec["gemm_gops"] = round(gop / (ms[f"{name}:gemm"] / 1e3), 1)
        records.append(rec)
    return records


def format_table(records: list[dict]) -> str:
    cols = ["shape MxKxN", "dtype", "backend", "codes", "ms", "GOP/s", "vs FP32", "vs BF16", "quant+pack ms"]
    head = "| " + " | ".join([*cols, "GEMM-only ms", "GEMM-only GOP/s"]) + " |"
    lines = [head, "|" + "---|" * 11]
    bf16_ms = {r["shape"]: r["ms"] for r in records if r["dtype"] == "bf16"}
    for r in records:
        extra = [str(r.get(key, "")) for key in ("quant_ms", "gemm_ms", "gemm_gops")]
        cells = [
            r["shape"],
            r["dtype"],
            r["backend"],
            r.get("codes", ""),
            f"{r['ms']:.2f}",
            f"{r['gops']:.1f}",
        ]
        vs_bf16 = f"{bf16_ms[r['shape']] / r['ms']:.2f}x" if r["shape"] in bf16_ms else ""
        cells += [f"{r['speedup_vs_fp32']:.2f}x", vs_bf16]
        lines.append("| " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


NOTES = """Every method writes into the same preallocated output (fp32: `torch.addmm(bias, x, w.T, out=y)`).
Weights are quantized and packed once outside the timing (lowbit `pack_weight`, peer `linear_prepack`), as in
real use; the activations' quantization and packing is inside every timed call. "int8" is the path lowbit's
INT8 recipe runs (`lowbit.ptq` default `int8_kernel="w7"`: 8-bit activations, 7-bit weights, u8 x s7
`vpmaddubsw`); "int8-a7" = 7-bit activations with 8-bit weights (u7 x s8); "int8-full" = 8-bit codes on both
sides (exact int16 `vpmaddwd` kernel); "int8-static" = the PTQ static per-tensor recipe
(`linear(..., act_scale=)`: one scale for every row, codes in [-128, 127], 7-bit weights). quant+pack /
GEMM-only = the two pieces of a lowbit row timed alone (the full row fuses them: rows are quantized inside the
GEMM's parallel region)."""


def ratio_summary(records: list[dict]) -> str:
    """Per shape: lowbit INT8 / INT4 against FP32, BF16 and the oneDNN peers (ratios of medians, one run)."""
    by = {}
    for r in records:
        by.setdefault(r["shape"], {})[r["dtype"]] = r["ms"]
    lines = [
        "| shape | int8 vs fp32 | int8 vs bf16 | int8 vs peer | int8 vs torch-int-mm | int4 vs fp32 "
        "| int4 vs int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape, ms in by.items():
        cells = [
            ms["fp32"] / ms["int8"],
            ms["bf16"] / ms["int8"],
            ms["peer-onednn-int8"] / ms["int8"],
            ms["torch-int-mm"] / ms["int8"],
            ms["fp32"] / ms["int4"],
            ms["int8"] / ms["int4"],
        ]
        lines.append(f"| {shape} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    return "\n".join(lines)


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in avg)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    backend = backends.resolve(args.backend)
    shapes = {"transformer": TRANSFORMER_SHAPES, "square": SQUARE_SHAPES}.get(
        args.shapes, TRANSFORMER_SHAPES + SQUARE_SHAPES
    )
    load_before = os.getloadavg()
    records: list[dict] = []
    for m, k, n in shapes:
        logger.info("benchmarking %dx%dx%d", m, k, n)
        records += bench_shape(m, k, n, args.repeats, args.warmup, backend)
    table = format_table(records)
    header = (
        f"CPU: {backends.cpu_summary()}; lowbit rows on backend {backend} (auto: {ops.backend()}); "
        f"torch {torch.__version__}, {args.threads} threads, medians of {args.repeats} interleaved repeats "
        f"after {args.warmup} warm-up calls; load average (1/5/15 min) "
        f"{_load(load_before)} before, {_load(os.getloadavg())} after"
    )
    table += "\n\n" + ratio_summary(records)
    print(header + "\n\n" + table)  # the benchmark's report
    payload = json.dumps(records, indent=1)
    if args.json is not None:
        atomic_write_text(args.json, payload)
    if not args.no_results_file:
        out_dir = RESULTS_DIR / "gemm"  # one file pair per CPU: figures of other CPUs stay as measured there
        stem = backends.cpu_slug()
        atomic_write_text(out_dir / f"{stem}.json", payload)
        atomic_write_text(out_dir / f"{stem}.md", f"# GEMM benchmark\n\n{header}\n\n{table}\n\n{NOTES}\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    raise SystemExit(run(cli.parse_args()))
