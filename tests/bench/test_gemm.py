"""The GEMM benchmark's record format, on a tiny shape (the real run is ``lowbit bench gemm``)."""

from __future__ import annotations

import pytest
from tests.helpers import BACKENDS

import lowbit.ops as ops
from lowbit.experiments import bench
from lowbit.ops import native


@pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native available")
def test_records_and_table():
    gemm = bench.load("gemm")
    records = gemm.bench_shape(12, 40, 20, repeats=1, warmup=0)
    dtypes = ["fp32", "bf16", "int4", "int8", "int8-a7", "int8-full", "int8-static", "peer-onednn-int8",
              "torch-int-mm"]
    assert [r["dtype"] for r in records] == dtypes
    assert records[3]["codes"] == "act [-127, 127], weight [-63, 63]"  # the INT8 recipe's ranges
    assert records[6]["codes"] == "act [-128, 127] static, weight [-63, 63]"
    chosen = ops.backend().chosen
    for r in records:
        assert r["shape"] == "12x40x20"
        assert {"ms", "gops", "speedup_vs_fp32", "backend"} <= set(r) and r["ms"] > 0
        assert r["backend"] == chosen if r["dtype"].startswith("int") else r["backend"].startswith("torch")
    assert f"| 12x40x20 | int4 | {chosen} |" in gemm.format_table(records)
    assert "| 12x40x20 |" in gemm.ratio_summary(records)


@pytest.mark.parametrize("backend", BACKENDS)
def test_records_on_each_backend(backend):
    records = bench.load("gemm").bench_shape(8, 24, 16, repeats=1, warmup=0, backend=backend)
    assert {r["backend"] for r in records if r["dtype"] == "int8"} == {backend}


def test_unknown_benchmark_is_named():
    with pytest.raises(ValueError, match="unknown benchmark 'nope'; known: ceiling, gemm"):
        bench.load("nope")


def test_benchmarks_ship_inside_the_package():
    """lowbit bench works from a plain install: every benchmark is a module of lowbit.bench, and the ceiling
    probe's C source is package data."""
    import importlib.resources

    for name in bench.BENCHMARKS:
        module = bench.load(name)
        assert module.__name__.startswith("lowbit.bench.") and callable(module.run)
    assert importlib.resources.files("lowbit.bench").joinpath("isa_probe.c").is_file()


def test_train_step_benchmark_runs_from_the_cli_registry(tmp_path):
    """`lowbit bench train-step` loads the module, parses its options and writes the JSON it names."""
    import argparse
    import json

    module = bench.load("train-step")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    out = tmp_path / "ts.json"
    argv = [
        "--tokens",
        "512",
        "--hidden",
        "64",
        "--ffn",
        "128",
        "--layers",
        "1",
        "--heads",
        "4",
        "--repeats",
        "1",
    ]
    args = parser.parse_args(
        [*argv, "--threads", "1", "--system-malloc", "--no-results-file", "--json", str(out)]
    )
    assert module.run(args) == 0
    result = json.loads(out.read_text())
    assert set(result["train_step_s"]) == {"fp32", "bf16-autocast", "int4"}
    assert result["train_step_speedup"] > 0
    assert {(r["measurement"], r["variant"]) for r in result["records"]} == {
        (m, v) for m in ("train-step", "linear") for v in ("fp32", "bf16-autocast", "int4")
    }
    assert all(r["seconds"] > 0 and r["backend"] for r in result["records"])
    assert result["malloc"].startswith("glibc default")  # --system-malloc: this test process keeps its malloc
