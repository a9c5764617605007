"""PTQ linear layers vs FP32 at all-MiniLM-L6-v2 shapes: is there a usable real FP8 product on this CPU?

Times, interleaved round-robin in one process so that load from other jobs hits every variant alike:

* ``fp32``           — ``F.linear`` on the FP32 weight (the reference);
* ``scaled_mm gemm`` — the bare ``torch._scaled_mm`` on float8 operands (the CPU's "real FP8 product");
* ``upcast gemm``    — the bare emulated product: float8 -> float32 upcasts + one float32 GEMM;
* ``fp8 layer emul`` / ``fp8 layer smm`` — ``FP8Linear`` end to end (activation cast, product, scales, bias);
* ``int8 layer``     — ``Int8Linear`` end to end on lowbit's integer engine.

Run ``python benchmarks/ptq.py [--tokens 2048] [--reps 15] [--threads N]``; prints medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import lowbit.formats as fmts
from lowbit.ptq.modules import LayerSpec, build_layer
from lowbit.ptq.weights import encode_weight

SHAPES = ((384, 384), (384, 1536), (1536, 384))  # (K, N): attention projections, FFN in, FFN out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=2048, help="rows M (tokens in a batch)")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")


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
        for c in ("emulated", "scaled_mm")
    }
    int8 = build_layer(
        LayerSpec("int8", k, n, "int8", "tensor", None, "int8", "tensor"),
        encode_weight(w, fmts.INT8),
        b,
        float(x.abs().max()) / 127,
    )
    x8 = (x / s_x).to(torch.float8_e4m3fn)
    w8 = bufs["w_codes"]
    one = torch.tensor(1.0)
    return {
        "fp32": lambda: F.linear(x, w, b),
        "scaled_mm gemm": lambda: torch._scaled_mm(
            x8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32
        ),
        "upcast gemm": lambda: x8.float() @ w8.float().t(),
        "fp8 layer emul": lambda: layers["emulated"](x),
        "fp8 layer smm": lambda: layers["scaled_mm"](x),
        "int8 layer": lambda: int8(x),
    }


@torch.no_grad()
def measure(m: int, k: int, n: int, reps: int) -> dict[str, float]:
    """Median seconds per variant, repetitions interleaved across variants."""
    variants = _variants(m, k, n)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, M={args.tokens}, {args.reps} reps")
    print(f"{'K x N':<12}" + "".join(f"{name:>22}" for name in _variants(2, 32, 32)))
    for k, n in SHAPES:
        med = measure(args.tokens, k, n, args.reps)
        ref = med["fp32"]
        cells = "".join(f"{1e3 * t:>10.2f} ms ({ref / t:4.2f}x)" for t in med.values())
        print(f"{k}x{n:<8}{cells}")
    print("(Nx) = speed relative to fp32: above 1 is faster than FP32")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
