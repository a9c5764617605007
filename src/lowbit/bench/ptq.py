"""PTQ linear layers vs FP32 at all-MiniLM-L6-v2 shapes: FP8 (emulated / torch._scaled_mm) and INT8 kernels.

Times, interleaved round-robin in one process so that load from other jobs hits every variant alike:

* ``fp32``           — ``F.linear`` on the FP32 weight (the reference);
* ``scaled_mm gemm`` — the bare ``torch._scaled_mm`` on float8 operands (the CPU's "real FP8 product");
* ``upcast gemm``    — the bare emulated product: float8 -> float32 upcasts + one float32 GEMM;
* ``fp8 emul`` / ``fp8 smm`` — ``FP8Linear`` end to end (static scale: cast, product, scales, bias);
* ``fp8 bf16dot`` — ``FP8Linear`` with ``fp8_compute="bf16_dot"``: FP8 x FP8 on ``vdpbf16ps`` (CPUs with
  AVX512-BF16 only); ``bf16`` — torch's bf16 ``F.linear`` (bf16 in and out), the path a BF16 user takes;
* ``int8 exact`` / ``int8 w7`` / ``int8 a7`` — ``Int8Linear`` end to end with a static per-tensor activation
  scale (``ops.linear(..., act_scale=)`` on a weight packed once) for each ``int8_kernel``: full-range codes
  (exact int16 kernel), 7-bit weight codes, 7-bit activation codes (both u8 x s8);
* ``int8 w7 tok`` / ``int8 a7 tok`` — the same with dynamic per-token activations (``ops.linear`` on a
  weight packed once);
* ``w4 g32`` / ``w8 fp8`` — weight-only layers (``EmulatedLinear``): INT4 codes with a scale per 32 inputs, or
  FP8 E4M3 codes per channel, decoded to float32 each call, FP32 activations and GEMM;
* ``mxfp8`` / ``mxfp4`` — MX weights and activations (``EmulatedLinear``): activations rounded per 32-value
  block each call, weight decoded, FP32 GEMM.

Run ``python -m lowbit.bench.ptq [--tokens 2048] [--reps 15] [--threads N] [--json FILE]``; prints medians and
speed relative to fp32 (above 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import lowbit.formats as fmts
from lowbit.files import atomic_write_text
from lowbit.ops import backends, native_bf16
from lowbit.ptq.modules import LayerSpec, build_layer
from lowbit.ptq.weights import encode_weight

SHAPES = ((384, 384), (384, 1536), (1536, 384))  # (K, N): attention projections, FFN in, FFN out
HOPELESS = 30  # a variant slower than this many times fp32 in its first call is not repeated


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=2048, help="rows M (tokens in a batch)")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--json", help="also write the medians and ratios to this JSON file")


def _int8(k: int, n: int, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, kernel: str, gran: str):
    wfmt = fmts.INT7 if kernel == "w7" else fmts.INT8
    afmt = fmts.INT7 if kernel == "a7" else fmts.INT8
    s_x = float(x.abs().max()) / afmt.max if gran == "tensor" else None
    spec = LayerSpec("int8", k, n, "int8", "tensor", None, "int8", gran, None, True, kernel)
    return build_layer(spec, encode_weight(w, wfmt), b, s_x)


def _variants(m: int, k: int, n: int) -> dict[str, Callable[[], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * 0.05
    b = torch.randn(n, generator=g)
    s_x = float(x.abs().max()) / 448
    bufs = encode_weight(w, fmts.FP8_E4M3)
    layers = {
        c: build_layer(
            LayerSpec("fp8", k, n, "fp8-e4m3", "tensor", None, "fp8-e4m3", "tensor", c), bufs, b, s_x
        )
        for c in ("emulated", "scaled_mm", "bf16_dot")
    }
    x8 = (x / s_x).to(torch.float8_e4m3fn)
    w8 = bufs["w_codes"]
    one = torch.tensor(1.0)
    variants = {
        "fp32": lambda: F.linear(x, w, b),
        "scaled_mm gemm": lambda: torch._scaled_mm(
            x8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32
        ),
        "upcast gemm": lambda: x8.float() @ w8.float().t(),
        "fp8 emul": lambda: layers["emulated"](x),
        "fp8 smm": lambda: layers["scaled_mm"](x),
    }
    if native_bf16.has_bf16_dot():  # FP8 x FP8 on vdpbf16ps (AVX512-BF16)
        variants["fp8 bf16dot"] = lambda: layers["bf16_dot"](x)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    variants["bf16"] = lambda: F.linear(xb, wb, bb)  # torch's bf16 linear (what an AMX / BF16 user runs)
    for kernel in ("exact", "w7", "a7"):
        layer = _int8(k, n, w, b, x, kernel, "tensor")
        variants[f"int8 {kernel}"] = lambda layer=layer: layer(x)
    for kernel in ("w7", "a7"):
        layer = _int8(k, n, w, b, x, kernel, "token")
        variants[f"int8 {kernel} tok"] = lambda layer=layer: layer(x)
    for name, fmt, gran, group in (
        ("w4 g32", fmts.INT4, "group", 32),
        ("w8 fp8", fmts.FP8_E4M3, "channel", None),
    ):
        spec = LayerSpec("emulated", k, n, fmt.name, gran, group)
        layer = build_layer(spec, encode_weight(w, fmt, gran, group), b)
        variants[name] = lambda layer=layer: layer(x)
    for fmt in (fmts.MXFP8_E4M3, fmts.MXFP4):
        spec = LayerSpec("emulated", k, n, fmt.name, "tensor", None, fmt.name, "block")
        layer = build_layer(spec, encode_weight(w, fmt), b)
        variants[fmt.name.split("-")[0]] = lambda layer=layer: layer(x)
    return variants


@torch.no_grad()
def measure(m: int, k: int, n: int, reps: int) -> dict[str, float]:
    """Median seconds per variant, repetitions interleaved across variants."""
    variants = _variants(m, k, n)
    once = {}
    for name, fn in variants.items():  # warm-up, timed once
        t0 = time.perf_counter()
        fn()
        once[name] = time.perf_counter() - t0
    # a hopeless peer (e.g. torch._scaled_mm where the CPU has no FP8 kernel: seconds per call) is timed once
    # and skipped, with its one timing reported
    hopeless = {name: t for name, t in once.items() if t > HOPELESS * max(once["fp32"], 1e-3)}
    for name in hopeless:
        print(f"note: {name} took {1e3 * hopeless[name]:.0f} ms once (> {HOPELESS}x fp32); not repeated")
        variants.pop(name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()} | hopeless


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    import lowbit.ops as ops

    threads = torch.get_num_threads()
    header = f"torch {torch.__version__}, {threads} threads, M={args.tokens}, {args.reps} reps"
    print(header)
    print(f"CPU: {backends.cpu_summary()}")
    print(f"lowbit.ops backend: {ops.backend()}")
    names = list(_variants(2, 32, 32))
    print(f"{'K x N':<11}" + "".join(f"{name:>16}" for name in names))
    records = []
    for k, n in SHAPES:
        med = measure(args.tokens, k, n, args.reps)
        ref = med["fp32"]
        print(f"{k}x{n:<7}" + "".join(f"{1e3 * t:>9.2f} ms   " for t in med.values()))
        print(f"{'':<11}" + "".join(f"{f'({ref / t:.2f}x)':>16}" for t in med.values()))
        records.append({"K": k, "N": n, "M": args.tokens, "median_ms": {a: 1e3 * t for a, t in med.items()},
                        "speed_vs_fp32": {a: ref / t for a, t in med.items()}})  # fmt: skip
    print("(Nx) = speed relative to fp32: above 1 is faster than FP32")
    if args.json:
        meta = {"header": header, "backend": ops.backend().chosen, "cpu": str(ops.backend().cpu),
                "threads": torch.get_num_threads()}
        atomic_write_text(args.json, json.dumps({"meta": meta, "shapes": records}, indent=2) + "\n")
        print(f"records: {args.json}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
