"""``lowbit bench {gemm,ceiling,train-step,inference,ptq} [options]``: run one module of ``lowbit.bench``.

Each benchmark module (``lowbit/bench/gemm.py``, ``ceiling.py``, ``train_step.py``, ``inference.py``,
``ptq.py``) defines ``add_arguments(parser)`` and ``run(args) -> int``; the options after the benchmark's name
are parsed by it (``lowbit bench gemm --help`` lists them). The modules ship inside the package, so this works
from any install (editable or not).
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

# benchmark name -> module of lowbit.bench
BENCHMARKS = {
    "gemm": "gemm",
    "ceiling": "ceiling",
    "train-step": "train_step",
    "inference": "inference",
    "ptq": "ptq",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, help="options of that benchmark (see its --help)"
    )


def load(name: str) -> ModuleType:
    """The ``lowbit.bench`` module of benchmark ``name``; ValueError names the known benchmarks."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return importlib.import_module(f"lowbit.bench.{BENCHMARKS[name]}")


def run(args: argparse.Namespace) -> int:
    module = load(args.benchmark)
    parser = argparse.ArgumentParser(prog=f"lowbit bench {args.benchmark}", description=module.__doc__)
    module.add_arguments(parser)
    code = module.run(parser.parse_args(args.options))
    return code if isinstance(code, int) else 0  # some benchmarks return their records instead of a code
