"""The ceiling benchmark: its probe library builds and counts its work exactly; shares and ratios add up."""

from __future__ import annotations

import shutil

import pytest

from lowbit.experiments import bench
from lowbit.ops import native

ceiling = bench.load("ceiling")


@pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native available")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_probes_build_and_count_their_work(tmp_path):
    lib = ceiling.build_probe(tmp_path)
    macs = {0: 96, 3: 96, 1: 384, 2: 384, 4: 384, 5: 192, 6: 1536, 7: 768, 8: 384}  # per step of each loop
    for kind in ceiling.available_probes():
        macs_per_step = macs[kind]
        assert lib.probe(kind, 3) == macs_per_step * 64 * 3
        assert 0 < ceiling.probe_rate(lib, kind, 0.002) < float("inf")


def test_report_shares_and_ratios():
    probes = {3: 100.0, 0: 90.0, 1: 300.0, 2: 200.0, 4: 400.0}  # GOP/s per core
    gemms = [
        {"shape": "8x8x8", "method": "fp32", "ms": 2.0, "gops": 180.0},
        {"shape": "8x8x8", "method": "int4", "ms": 0.8, "gops": 450.0},
        {"shape": "8x8x8", "method": "int4:gemm", "ms": 0.7, "gops": 540.0},
        {"shape": "8x8x8", "method": "int8", "ms": 1.0, "gops": 360.0},
        {"shape": "8x8x8", "method": "int8:gemm", "ms": 1.0, "gops": 360.0},
    ]
    table, payload = ceiling.report(probes, gemms, threads=2)
    share = {r["method"]: r["efficiency"] for r in payload["gemms"]}
    assert share == {"fp32": 0.9, "int4": 0.75, "int4:gemm": 0.9, "int8": 0.9, "int8:gemm": 0.9}
    assert payload["gemms"][1]["speedup_vs_fp32"] == 2.5
    assert payload["ceiling_ratio_int4"] == 3.0 and payload["ceiling_ratio_int8"] == 2.0
    assert "| 8x8x8 | int4 | 0.80 | 450 | 75% | 2.50x |" in table


def test_report_uses_the_vnni_loop_and_the_avx512_fma_peak_on_vnni():
    probes = {3: 100.0, 0: 90.0, 1: 300.0, 2: 200.0, 4: 400.0, 5: 200.0, 6: 700.0, 7: 800.0}
    gemms = [
        {"shape": "8x8x8", "method": "fp32", "ms": 2.0, "gops": 360.0},
        {"shape": "8x8x8", "method": "int8", "ms": 0.5, "gops": 1400.0},
    ]
    table, payload = ceiling.report(probes, gemms, threads=2, backend="avx512-vnni")
    share = {r["method"]: r["efficiency"] for r in payload["gemms"]}
    assert share == {"fp32": 0.9, "int8": 1.0}
    assert payload["ceiling_ratio_int8"] == 3.5 and payload["backend"] == "avx512-vnni"
    assert "| bare vpdpbusd |" in table
