"""How close each GEMM runs to its instruction ceiling on this CPU: torch FP32 (MKL) vs lowbit INT4 / INT8.

The speedup targets of the GEMM engine (INT4 >= 3x, INT8 >= 2x FP32) are about the ratios of the instruction
peaks of the micro-kernel loops, so whether a shape meets them depends on how efficiently each side runs. This
script measures both in one run:

1. the peak of each micro-kernel's inner loop with its operands in L1 (``isa_probe.c``, compiled here with the
   system C compiler), on one core: the bare FMA rate (the ceiling of any FP32 GEMM), a textbook 6 x 16 sgemm
   loop, lowbit's u4 x s4 loop (``vpmaddubsw`` + ``vpaddw``, int16 accumulation) and u8 x s7 loop
   (``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd``), and the bare ``vpmaddubsw`` rate;
2. the transformer shapes of ``lowbit.bench.gemm`` (same methods, same interleaved medians);
3. each GEMM's share of its ceiling = its GOP/s over (threads x the one-core peak of its loop; for FP32 the
   bare FMA rate, since MKL's kernel is not public), and the ceiling ratios the targets amount to.

The ceilings are one-core rates times the thread count: on this (virtual, shared-host) machine the all-core
rates of the integer loops vary by +-20 % from run to run, the one-core rates by a few percent.

Usage: ``python -m lowbit.bench.ceiling`` or ``lowbit bench ceiling [--repeats N]``; writes
``results/gemm_ceiling/<cpu>.{md,json}`` unless ``--no-results-file``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.resources
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowbit.bench import RESULTS_DIR
from lowbit.files import atomic_write_text
from lowbit.ops import backends, native

PROBES = {  # probe kind -> (name, what it is)
    3: ("fp32 FMA peak", "12 independent vfmadd231ps, no loads: the ceiling of any FP32 GEMM"),
    0: ("fp32 6x16 loop", "a textbook sgemm loop: 2 B loads, 6 vbroadcastss, 12 vfmadd231ps per k"),
    1: ("int4 u4 x s4 loop", "lowbit's INT4 loop: 6 vpbroadcastd, 12 vpmaddubsw + 12 vpaddw per 4 k"),
    2: (
        "int8 u8 x s7 loop",
        "lowbit's INT8 loop: 6 vpbroadcastd, 12 x (vpmaddubsw, vpmaddwd, vpaddd) per 4 k",
    ),
    4: ("bare vpmaddubsw", "12 independent, no loads, no accumulation: the ceiling of any u8 x s8 GEMM"),
    5: ("fp32 AVX-512 FMA peak", "12 independent vfmadd231ps zmm, no loads (AVX-512 CPUs)"),
    6: (
        "lowbit VNNI loop",
        "lowbit's avx512-vnni loop: 4 zmm B loads, 6 vpbroadcastd, 24 vpdpbusd per 4 k",
    ),
    8: (
        "bare vdpbf16ps",
        "12 independent zmm vdpbf16ps, no loads: the ceiling of a BF16 (and FP8-on-BF16) GEMM",
    ),
    7: ("bare vpdpbusd", "12 independent zmm vpdpbusd, no loads: the ceiling of any VNNI GEMM"),
}
AVX512_PROBES = (5, 6, 7)
BF16_PROBES = (8,)
METHODS = ("fp32", "int4", "int4:gemm", "int8", "int8:gemm")


def available_probes() -> list[int]:
    """The probe kinds this CPU can run (the AVX-512 ones need avx512f + avx512_vnni)."""
    flags = backends.cpu()[1]
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags
    vnni = backends.available("avx512-vnni")  # kind 6 runs the shipped kernel
    bf16 = avx512 and "avx512_bf16" in flags
    return [
        k
        for k in PROBES
        if (avx512 or k not in AVX512_PROBES) and (vnni or k != 6) and (bf16 or k not in BF16_PROBES)
    ]


def peak_of(method: str, probes: dict[int, float], backend: str) -> int:
    """The probe whose rate is ``method``'s ceiling: the best FP32 FMA peak for fp32; lowbit's loop of the
    backend the integer rows ran on otherwise."""
    if method == "fp32":
        return 5 if 5 in probes and probes[5] > probes[3] else 3
    if backend == "avx512-vnni":
        return 6
    return 1 if method.startswith("int4") else 2


logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per GEMM method (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch / OpenMP threads of the GEMMs (the probes run on one core)",
    )
    parser.add_argument("--probe-seconds", type=float, default=0.3, help="run time of each probe measurement")
    parser.add_argument("--no-results-file", action="store_true", help="do not write results/gemm_ceiling/*")
    parser.add_argument(
        "--backend", default="auto", choices=list(backends.BACKENDS), help="lowbit rows' backend"
    )


def build_probe(workdir: Path) -> _Probes:
    """Compile isa_probe.c into workdir; RuntimeError names the missing compiler or the compiler's error."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"C compiler {cc!r} not found; install gcc or set CC")
    out = workdir / "isa_probe.so"
    probe_source = workdir / "isa_probe.c"  # shipped inside the package (package data)
    probe_source.write_bytes(importlib.resources.files("lowbit.bench").joinpath("isa_probe.c").read_bytes())
    cmd = [
        cc,
        "-O2",
        "-mavx2",
        "-mfma",
        "-shared",
        "-fPIC",
        str(probe_source),
        "-o",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"building isa_probe.c failed: {done.stderr.strip()}")
    lib = ctypes.CDLL(str(out))
    lib.probe.argtypes = [ctypes.c_int, ctypes.c_long]
    lib.probe.restype = ctypes.c_double
    return _Probes(lib)


class _Probes:
    """The isa_probe.c loops, plus kind 6: the shipped VNNI micro-kernel (``lowbit_vnni_probe`` in lowbit's
    native library), so that its ceiling is the loop lowbit really runs."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def probe(self, kind: int, reps: int) -> float:
        if kind == 6:
            return native.lib().lowbit_vnni_probe(reps)
        return self.lib.probe(kind, reps)


def probe_rate(lib, kind: int, seconds: float) -> float:
    """Multiply-accumulates per second of one probe loop on one core, over a run of about ``seconds``."""
    reps = 1000
    while True:
        t0 = time.perf_counter()
        lib.probe(kind, reps)
        took = time.perf_counter() - t0
        if took > seconds / 4:
            break
        reps *= 4
    reps = max(1, int(reps * seconds / took))
    t0 = time.perf_counter()
    macs = lib.probe(kind, reps)
    return macs / (time.perf_counter() - t0)


def measure_probes(lib: _Probes, seconds: float, runs: int = 5) -> dict[int, list[float]]:
    """GOP/s (2 ops per MAC) of every probe on one core, `runs` times each."""
    return {
        kind: [2 * probe_rate(lib, kind, seconds) / 1e9 for _ in range(runs)] for kind in available_probes()
    }


def measure_gemms(repeats: int, backend: str) -> list[dict]:
    """The gemm.py methods on the transformer shapes: GOP/s of fp32, int4 and int8, full and GEMM-only."""
    from lowbit.bench import gemm

    records = []
    names = list(METHODS)
    for m, k, n in gemm.TRANSFORMER_SHAPES:
        methods = gemm._methods(m, k, n, torch.Generator().manual_seed(0), backend)
        for name in names:
            methods[name]()
            methods[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(repeats):
            for name in names:
                times[name].append(gemm._time(methods[name]))
        gop = 2.0 * m * k * n / 1e9
        for name in names:
            ms = 1e3 * statistics.median(times[name])
            records.append(
                {"shape": f"{m}x{k}x{n}", "method": name, "ms": round(ms, 3), "gops": gop / ms * 1e3}
            )
    return records


def report(
    probes: dict[int, float], gemms: list[dict], threads: int, backend: str = "avx2"
) -> tuple[str, dict]:
    """Tables of the one-core ceilings and of each GEMM's share of `threads` x its ceiling."""
    lines = [
        "| probe (operands in L1) | what it runs | GOP/s per core | vs FP32 FMA peak |",
        "|---|---|---|---|",
    ]
    base = probes[peak_of("fp32", probes, backend)]
    for kind, (name, what) in PROBES.items():
        if kind in probes:
            lines.append(f"| {name} | {what} | {probes[kind]:.0f} | {probes[kind] / base:.2f}x |")
    lines += [
        "",
        "| shape MxKxN | method | ms | GOP/s | share of its ceiling | vs FP32 |",
        "|---|---|---|---|---|---|",
    ]
    fp32_ms = {r["shape"]: r["ms"] for r in gemms if r["method"] == "fp32"}
    for r in gemms:
        kind = peak_of(r["method"], probes, backend)
        r["ceiling"] = PROBES[kind][0]
        r["backend"] = "torch (MKL)" if r["method"] == "fp32" else backend
        r["efficiency"] = round(r["gops"] / (threads * probes[kind]), 3)
        r["speedup_vs_fp32"] = round(fp32_ms[r["shape"]] / r["ms"], 3)
        r["gops"] = round(r["gops"], 1)
        lines.append(
            f"| {r['shape']} | {r['method']} | {r['ms']:.2f} | {r['gops']:.0f} | "
            f"{100 * r['efficiency']:.0f}% | {r['speedup_vs_fp32']:.2f}x |"
        )
    ceil4 = probes[peak_of("int4", probes, backend)] / base
    ceil8 = probes[peak_of("int8", probes, backend)] / base
    lines += [
        "",
        f"Ceiling ratios (per core): lowbit's INT4 loop / FP32 FMA peak = {ceil4:.2f}x, INT8 loop / FP32 "
        f"FMA peak = {ceil8:.2f}x. A lowbit product is k x FP32 exactly when (its share of its ceiling) / "
        "(FP32's share of its own) = k / (ceiling ratio); lowbit's share includes quantizing the "
        "activations, which FP32 does not pay. fp32 = MKL via torch.addmm; int4/int8 = lowbit.ops.linear "
        "(quantization fused), :gemm = its GEMM alone on prepacked codes.",
    ]
    payload = {
        "cpu": backends.cpu_summary(),
        "backend": backend,
        "probes": {PROBES[k][0]: v for k, v in probes.items()},
        "gemms": gemms,
        "ceiling_ratio_int4": round(ceil4, 3),
        "ceiling_ratio_int8": round(ceil8, 3),
    }
    return "\n".join(lines), payload


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            lib = build_probe(Path(tmp))
        except RuntimeError as err:
            logger.error("%s", err)
            return 1
        load = os.getloadavg()
        logger.info("probing instruction peaks on one core")
        before = measure_probes(lib, args.probe_seconds)
        logger.info("timing the transformer shapes")
        backend = backends.resolve(args.backend)
        gemms = measure_gemms(args.repeats, backend)
        after = measure_probes(lib, args.probe_seconds)
    # this machine's speed drifts within minutes: each ceiling is the median of the runs before and after
    probes = {kind: statistics.median(before[kind] + after[kind]) for kind in before}
    table, payload = report(probes, gemms, args.threads, backend)
    header = (
        f"CPU: {backends.cpu_summary()}; lowbit backend {backend}; "
        f"torch {torch.__version__}, {args.threads} threads; ceilings: one core, median of 5 runs before and "
        f"5 after the GEMMs; a GEMM's share = its GOP/s / ({args.threads} x its ceiling); GEMM medians of "
        f"{args.repeats} interleaved repeats; load average "
        f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(header + "\n\n" + table)  # the benchmark's report
    if not args.no_results_file:
        out_dir = RESULTS_DIR / "gemm_ceiling"  # one file pair per CPU
        atomic_write_text(out_dir / f"{backends.cpu_slug()}.json", json.dumps(payload, indent=1))
        atomic_write_text(
            out_dir / f"{backends.cpu_slug()}.md",
            f"# GEMM efficiency vs instruction ceilings\n\n{header}\n\n{table}\n",
        )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(run(cli.parse_args()))
