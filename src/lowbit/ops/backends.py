"""Which integer-GEMM backend runs, chosen at run time from the CPU, the OS and a one-off measurement.

Backends (every one gives identical integers; the tests check each against exact int64 arithmetic):

* ``amx`` — AMX-INT8 tiles. Not shipped yet: no kernel was written because the CPUs lowbit was developed on
  lacked AMX (a kernel that was never run is not shipped); reported as unavailable with that reason.
* ``avx512-vnni`` — native ``vpdpbusd`` kernels (``csrc/gemm_vnni.c``): u8 x s8 -> int32, exact for every
  int8 code.
* ``avx2`` — native ``vpmaddubsw`` / ``vpmaddwd`` kernels (``csrc/gemm_kernels.c``), for AVX2-only CPUs.
* ``onednn`` — torch's own exact ``torch._int_mm`` (int32 out) inside lowbit's quantization and epilogue: fast
  where oneDNN has VNNI/AMX kernels, a slow reference kernel elsewhere; a yardstick and a fallback.
* ``reference`` — pure PyTorch, the test oracle.

``backend="auto"`` resolves to the fastest usable one: the best native ISA the CPU has, unless ``onednn`` is
also fast on this CPU (it has VNNI or AMX) and measured faster, once per process, on a 512x768x768 linear.
A ``backend=`` argument or the :func:`use_backend` context manager picks one explicitly (no environment
variable); an explicit backend that cannot run raises ``RuntimeError`` naming why.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lowbit.formats import INT8_SYMMETRIC
from lowbit.ops import native

NATIVE_ISAS = ("avx512-vnni", "avx2")  # best first
CONCRETE = ("amx", "avx512-vnni", "avx2", "onednn", "reference")
BACKENDS = ("auto", "native", *CONCRETE)

_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("lowbit_backend", default=None)


@functools.lru_cache(maxsize=1)
def cpu() -> tuple[str, frozenset[str]]:
    """(model name, flags) of this CPU from /proc/cpuinfo, else ``platform.processor()`` and no flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU", frozenset()
    name, flags = "unknown CPU", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown CPU":
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return name, flags


def cpu_summary() -> str:
    """One line naming the CPU and the flags that decide the backends, e.g. for benchmark tables."""
    name, flags = cpu()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    have = [f for f in wanted if f in flags]
    return f"{name} [{' '.join(have) or 'no SIMD flags read'}]"


def cpu_slug() -> str:
    """A file-name-safe name of this CPU and its best integer ISA (results files are named per CPU)."""
    name, flags = cpu()
    isa = (
        "amx"
        if "amx_int8" in flags
        else "avx512-vnni"
        if "avx512_vnni" in flags
        else ("avx2" if "avx2" in flags else "generic")
    )
    words = "".join(c if c.isalnum() else "-" for c in name.lower()).split("-")
    return "-".join(w for w in words if w and w not in ("processor", "r", "tm", "cpu")) + "_" + isa


def _why_not(name: str) -> str:
    """Empty when backend ``name`` can run here, else the reason it cannot."""
    _, flags = cpu()
    if name == "amx":
        lacks = "" if {"amx_int8", "amx_tile"} <= flags else "; this CPU also lacks amx_int8"
        return (
            "no AMX kernel is shipped in this version (none could be run on the development CPUs, which lack "
            f"AMX){lacks}"
        )
    if name in NATIVE_ISAS:
        reason = native.why_not_native()
        if reason:
            return reason
        if name == "avx512-vnni" and not native.lib().lowbit_cpu_has_avx512vnni():
            return "this CPU lacks AVX-512 VNNI (avx512f/bw/vl + avx512_vnni)"
        return ""
    if name in ("onednn", "reference"):
        return ""
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def available(name: str) -> bool:
    """Whether backend ``name`` (a concrete one) can run on this machine."""
    return not _why_not(name)


def _onednn_is_fast() -> bool:
    """oneDNN's int8 kernels need VNNI or AMX; without them ``torch._int_mm`` is a slow reference loop."""
    _, flags = cpu()
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.lru_cache(maxsize=1)
def _auto() -> tuple[str, dict[str, str]]:
    """The backend ``auto`` runs and, for every other one, why not (measured once per process)."""
    reasons = {n: _why_not(n) for n in CONCRETE}
    best = next((n for n in NATIVE_ISAS if not reasons[n]), None)
    if best is None:
        chosen = "onednn" if _onednn_is_fast() else "reference"
    elif _onednn_is_fast():
        t_native, t_onednn = _time_pair(best, "onednn")
        # lowbit's own kernel unless oneDNN is clearly faster: a one-off timing on a busy machine is noisy
        chosen = best if t_native <= ONEDNN_MARGIN * t_onednn else "onednn"
        loser = "onednn" if chosen == best else best
        reasons[loser] = (
            f"slower on this CPU: {min(t_native, t_onednn) * 1e3:.2f} ms ({chosen}) vs "
            f"{max(t_native, t_onednn) * 1e3:.2f} ms for a 512x768x768 fused linear (measured once a process)"
        )
    else:
        chosen = best
        reasons["onednn"] = "torch._int_mm has no fast kernel on a CPU without VNNI/AMX"
    for name in CONCRETE:
        if name != chosen and not reasons[name]:
            reasons[name] = f"usable, but {chosen} is preferred on this CPU"
    reasons.pop(chosen)
    return chosen, reasons


ONEDNN_MARGIN = 1.25  # onednn replaces a native ISA only when that ISA takes 1.25x its time or more


def _time_pair(first: str, second: str, rounds: int = 6) -> tuple[float, float]:
    """Best time (seconds) of one fused 512 x 768 -> 768 linear on each of two backends, interleaved."""
    from lowbit.ops.linear import linear, pack_weight  # imported here: lowbit.ops.linear imports this module

    gen = torch.Generator().manual_seed(0)
    w = torch.randint(INT8_SYMMETRIC.lo, INT8_SYMMETRIC.hi + 1, (768, 768), generator=gen, dtype=torch.int8)
    x = torch.randn(512, 768, generator=gen)
    out = torch.empty(512, 768)
    packed = {name: pack_weight(w, 0.01, bits=8, backend=name) for name in (first, second)}
    best = {first: float("inf"), second: float("inf")}
    for _ in range(rounds):
        for name in (first, second):
            t0 = time.perf_counter()
            linear(x, packed[name], out=out, backend=name)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best[first], best[second]


@dataclass(frozen=True)
class BackendReport:
    """What ``backend="auto"`` runs on this machine and why each other backend is not used."""

    chosen: str
    reasons: dict[str, str] = field(default_factory=dict)
    cpu: str = ""

    def __str__(self) -> str:
        others = "; ".join(f"{n}: {r}" for n, r in self.reasons.items())
        return f"{self.chosen} on {self.cpu} (not chosen — {others})"


def report() -> BackendReport:
    """The backend ``auto`` resolves to (honouring :func:`use_backend`) and why not each other one."""
    override = _OVERRIDE.get()
    if override is not None:
        reasons = {n: "use_backend() selected another backend" for n in CONCRETE if n != override}
        return BackendReport(override, reasons, cpu_summary())
    chosen, reasons = _auto()
    return BackendReport(chosen, dict(reasons), cpu_summary())


def resolve(name: object) -> str:
    """The concrete backend for a ``backend=`` argument; errors name the problem and the fix."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        override = _OVERRIDE.get()
        return override if override is not None else _auto()[0]
    if name == "native":
        for isa in NATIVE_ISAS:
            if available(isa):
                return isa
        raise RuntimeError(f"backend='native' requested but {native.why_not_native()}; use backend='auto'")
    reason = _why_not(name)
    if reason:
        raise RuntimeError(f"backend={name!r} requested but {reason}; use backend='auto'")
    return name


def is_native(name: str) -> bool:
    """Whether a concrete backend runs lowbit's own compiled kernels."""
    return name in NATIVE_ISAS


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run every ``backend="auto"`` call inside the block on backend ``name`` (this thread / task only).

    ``name`` is resolved first, so an unusable backend raises here; yields the concrete name.
    """
    concrete = resolve(name) if name != "auto" else _auto()[0]
    token = _OVERRIDE.set(concrete)
    try:
        yield concrete
    finally:
        _OVERRIDE.reset(token)
