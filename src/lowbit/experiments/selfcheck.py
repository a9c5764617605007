"""``lowbit selfcheck``: a quick check of lowbit's numerics on this machine against independent references.

Each check compares one part of lowbit with a reference computed another way — torch's FP8 casts, a float64
nearest-code search over ``fmt.codes()``, an explicit Sylvester matrix, exact int64 matrix products — and
prints ``PASS``/``FAIL``/``SKIP`` with what it compared. The command exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import lowbit.formats as F
from lowbit.quantizers import pack_int4, quantize, round_to_format, unpack_int4
from lowbit.rounding import round_float
from lowbit.transforms import hadamard


class CheckFailed(Exception):
    """A check found a mismatch."""


class CheckSkipped(Exception):
    """A check cannot run here (the reason is printed)."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: status PASS/FAIL/SKIP, what it compared or why it failed, seconds taken."""

    name: str
    status: str
    detail: str
    seconds: float


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def nearest_code(x: np.ndarray, fmt: F.IntFormat | F.FloatFormat, away: bool = False) -> np.ndarray:
    """Float64 reference rounding by searching the sorted code set: saturate, nearest code, ties to the code
    with an even bit pattern (even index among the non-negative codes) or away from zero."""
    grid = fmt.codes().numpy()
    if isinstance(fmt, F.IntFormat):
        t = np.clip(x, fmt.qmin, fmt.qmax)
        return np.sign(t) * np.floor(np.abs(t) + 0.5) if away else np.round(t)
    pos = grid[grid >= 0]
    mag = np.minimum(np.abs(x), fmt.max)
    hi = np.clip(np.searchsorted(pos, mag), 0, len(pos) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = mag - pos[lo], pos[hi] - mag
    tie = hi if away else np.where(hi % 2 == 0, hi, lo)
    return np.copysign(pos[np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, tie))], x)


def check_fp8(fmt: F.FloatFormat, gen: torch.Generator) -> str:
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    bf16 = every[torch.isfinite(every) & (every.abs() <= fmt.max)]
    rand = (torch.randn(100_000, generator=gen) * fmt.max / 4).clamp(-fmt.max, fmt.max)
    x = torch.cat([bf16, rand])
    want = x.to(fmt.torch_dtype).view(torch.uint8)
    paths = {
        "binade rounding": round_float(x, fmt, "nearest", None).to(fmt.torch_dtype).view(torch.uint8),
        "quantize(scale=1)": quantize(x, fmt, scale=1.0).codes.view(torch.uint8),
    }
    for path, got in paths.items():
        bad = int((got != want).sum())
        _expect(bad == 0, f"{path}: {bad} of {x.numel()} values differ from torch's cast")
    return f"{x.numel()} values ({bf16.numel()} bf16 + 100000 random) bit-identical on {len(paths)} paths"


def check_minifloats(gen: torch.Generator) -> str:
    formats = [F.FP8_E4M3, F.FP8_E5M2, F.FP6_E3M2, F.FP6_E2M3, F.FP4_E2M1, F.INT4, F.INT8]
    total = 0
    for fmt in formats:
        grid = fmt.codes()
        mids = (grid[1:] + grid[:-1]) / 2  # every tie
        x = torch.cat([grid, mids, torch.randn(20_000, generator=gen, dtype=torch.float64) * fmt.max / 3])
        x = torch.cat([x, x * 1.7])  # and beyond the range (saturation)
        for mode, away in (("nearest", False), ("nearest-away", True)):
            got = round_to_format(x, fmt, mode).numpy()
            bad = int((got != nearest_code(x.numpy(), fmt, away)).sum())
            _expect(bad == 0, f"{fmt.name} {mode}: {bad} of {x.numel()} values differ from the reference")
        total += x.numel()
    return f"{total} values x 2 roundings over {len(formats)} formats match a float64 code search"


def check_scaled_quantizers(gen: torch.Generator) -> str:
    x = torch.randn(16, 128, generator=gen, dtype=torch.float64) * torch.logspace(-2, 2, 16).unsqueeze(1)
    x[3] = 0.0
    for fmt in (F.INT4, F.INT8, F.FP8_E4M3, F.FP4_E2M1):
        for gran, groups in (("row", (16, 1, 128)), (("group", 32), (16, 4, 32))):
            q = quantize(x, fmt, gran)
            xg = x.numpy().reshape(groups)
            amax = np.abs(xg).max(axis=-1, keepdims=True)
            scale = np.where(amax == 0, 1.0, (amax / fmt.max).astype(np.float32))
            ref = (nearest_code(xg / scale, fmt) * scale).reshape(x.shape)
            _expect(np.array_equal(q.dequantize(torch.float64).numpy(), ref), f"{fmt.name} {gran} differs")
    for fmt in (F.MXFP4, F.MXFP8_E4M3, F.MXINT8):
        q = quantize(x, fmt)
        xb = x.numpy().reshape(16, 4, 32)
        amax = np.abs(xb).max(axis=-1, keepdims=True)
        exp = np.floor(np.log2(np.where(amax == 0, 1.0, amax))) - fmt.element_emax
        scale = np.where(amax == 0, 1.0, 2.0**exp)
        ref = (nearest_code(xb / scale, fmt.element) * scale).reshape(x.shape)
        _expect(np.array_equal(q.dequantize(torch.float64).numpy(), ref), f"{fmt.name} differs")
    return "int4/int8/fp8/fp4 per-row and per-group-32, mxfp4/mxfp8/mxint8 blocks equal float64 references"


def check_stochastic(gen: torch.Generator) -> str:
    n, value = 100_000, 2.3  # between INT4 codes 2 and 3: P(up) = 0.3
    draws = round_to_format(torch.full((n,), value, dtype=torch.float64), F.INT4, "stochastic", gen)
    sigma = math.sqrt(0.3 * 0.7 / n)
    err = draws.mean().item() - value
    _expect(abs(err) < 5 * sigma, f"mean error {err:.2e} exceeds 5 sigma = {5 * sigma:.2e}")
    again = round_to_format(torch.full((n,), value), F.INT4, "stochastic", torch.Generator().manual_seed(1))
    same = round_to_format(torch.full((n,), value), F.INT4, "stochastic", torch.Generator().manual_seed(1))
    _expect(torch.equal(again, same), "two runs with the same seed differ")
    return f"mean error {err:+.1e} over {n} draws (5 sigma = {5 * sigma:.1e}); reproducible by seed"


def check_pack_int4(gen: torch.Generator) -> str:
    codes = torch.randint(F.INT4_RANGE.lo, F.INT4_RANGE.hi + 1, (33, 64), generator=gen, dtype=torch.int8)
    packed = pack_int4(codes)
    _expect(torch.equal(unpack_int4(packed), codes), "unpack(pack(codes)) != codes")
    low = (packed & 0xF).to(torch.int16)
    _expect(torch.equal(((low ^ 8) - 8).to(torch.int8), codes[:, 0::2]), "element 2j is not the low nibble")
    return "33x64 random INT4 codes round-trip; element 2j in the low nibble"


def check_hadamard(gen: torch.Generator) -> str:
    worst = 0.0
    x = torch.randn(4, 1024, generator=gen, dtype=torch.float64)
    for k in range(11):
        block = 2**k
        h = torch.ones(1, 1, dtype=torch.float64)
        for _ in range(k):  # Sylvester construction, H_2n = [[H, H], [H, -H]]
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        ref = (x.reshape(4, -1, block) @ (h / math.sqrt(block)).T).reshape(x.shape)
        y = hadamard(x, block)
        worst = max(worst, (y - ref).abs().max().item())
        _expect(abs(y.norm().item() / x.norm().item() - 1) < 1e-13, f"block {block}: norm not preserved")
        _expect((hadamard(y, block) - x).abs().max().item() < 1e-12, f"block {block}: not self-inverse")
    _expect(worst < 1e-12, f"max |fast - matrix| = {worst:.1e}")
    return f"blocks 1..1024 match the Sylvester matrix (max error {worst:.1e}), norm-preserving, self-inverse"


def check_int_gemm(gen: torch.Generator) -> str:
    ops = importlib.import_module("lowbit.ops")
    if not hasattr(ops, "int_matmul"):
        raise CheckSkipped("lowbit.ops has no int_matmul")
    backends = ["reference"] + ([] if ops.why_not_native() else ["native"])
    shapes = [(1, 1, 1), (7, 33, 5), (64, 96, 48), (3, 130, 17), (65, 256, 31)]  # (M, K, N), ragged sizes
    count = 0
    for bits, (lo, hi) in ((8, F.INT8_RANGE), (4, F.INT4_RANGE)):
        for m, k, n in shapes:
            a = torch.randint(lo, hi + 1, (m, k), generator=gen, dtype=torch.int8)
            b = torch.randint(lo, hi + 1, (n, k), generator=gen, dtype=torch.int8)
            exact = (a.long() @ b.long().T).to(torch.int32)
            operands = {"nt": (a, b), "nn": (a, b.T.contiguous()), "tn": (a.T.contiguous(), b.T.contiguous())}
            for (layout, (lhs, rhs)), backend in itertools.product(operands.items(), backends):
                got = ops.int_matmul(lhs, rhs, bits=bits, layout=layout, backend=backend)
                _expect(
                    torch.equal(got, exact), f"{backend} bits={bits} {layout} {m}x{k}x{n} != int64 product"
                )
                count += 1
    native = "native and reference" if "native" in backends else f"reference only ({ops.why_not_native()})"
    return f"{count} products (int8/int4, nt/nn/tn, ragged shapes) exact on {native}"


def check_fused_row_quantizer(gen: torch.Generator) -> str:
    ops = importlib.import_module("lowbit.ops")
    if not hasattr(ops, "quantize_rows"):
        raise CheckSkipped("lowbit.ops has no quantize_rows")
    backends = ["reference"] + ([] if ops.why_not_native() else ["native"])
    x = torch.randn(37, 300, generator=gen) * torch.logspace(-3, 3, 37).unsqueeze(1)
    x[5] = 0.0  # an all-zero row: scale 1
    ties = torch.tensor([0.5, 1.5, 2.5, -2.5])  # ties after scaling
    x[7, :4] = ties * x[7].abs().max() / F.INT8_SYMMETRIC.hi
    for bits, backend in itertools.product((8, 7, 4), backends):
        codes, scale = ops.quantize_rows(x, bits, backend=backend)
        want = quantize(x, F.int_format(bits, narrow=True), "row")
        _expect(torch.equal(scale, want.scale[:, 0]), f"{backend} bits={bits}: scales differ")
        _expect(torch.equal(codes, want.codes), f"{backend} bits={bits}: codes differ")
    return f"ops.quantize_rows == quantize(x, int_format(b, narrow=True), 'row') for b in 8/7/4 on {backends}"


CHECKS: tuple[tuple[str, Callable[[torch.Generator], str]], ...] = (
    ("FP8 E4M3 rounding vs torch.float8_e4m3fn", lambda g: check_fp8(F.FP8_E4M3, g)),
    ("FP8 E5M2 rounding vs torch.float8_e5m2", lambda g: check_fp8(F.FP8_E5M2, g)),
    ("minifloat/int rounding vs float64 code search", check_minifloats),
    ("row/group/MX quantizers vs float64 reference", check_scaled_quantizers),
    ("stochastic rounding unbiased and seeded", check_stochastic),
    ("INT4 packing round trip", check_pack_int4),
    ("Hadamard vs explicit Sylvester matrix", check_hadamard),
    ("integer GEMM vs exact int64 products", check_int_gemm),
    ("fused row quantizer (ops) vs quantize()", check_fused_row_quantizer),
)


def run_checks(seed: int = 0) -> list[CheckResult]:
    """Run every check with a generator seeded from ``seed``; a failing check does not stop the others."""
    results = []
    for i, (name, check) in enumerate(CHECKS):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        start = time.perf_counter()
        try:
            status, detail = "PASS", check(gen)
        except CheckSkipped as skip:
            status, detail = "SKIP", str(skip)
        except CheckFailed as failure:
            status, detail = "FAIL", str(failure)
        except Exception as error:  # an error inside lowbit is a failed check, reported with its type
            status, detail = "FAIL", f"{type(error).__name__}: {error}"
        results.append(CheckResult(name, status, detail, time.perf_counter() - start))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test inputs (default 0)")


def run(args: argparse.Namespace) -> int:
    results = run_checks(args.seed)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.status}  {r.name.ljust(width)}  {r.seconds:5.2f}s  {r.detail}")
    failed = sum(r.status == "FAIL" for r in results)
    skipped = sum(r.status == "SKIP" for r in results)
    print(f"selfcheck: {len(results) - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0
