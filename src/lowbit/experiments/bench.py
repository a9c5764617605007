"""``lowbit bench {gemm,ceiling,train-step,inference,ptq} [options]``: run one module from benchmarks/.

Each benchmark module (``benchmarks/gemm.py``, ``ceiling.py``, ``train_step.py``, ``inference.py``,
``ptq.py``) defines ``add_arguments(parser)`` and ``run(args) -> int``; the options after the benchmark's name
are parsed by it (``lowbit bench gemm --help`` lists them).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import lowbit

# benchmark name -> file under benchmarks/
BENCHMARKS = {
    "gemm": "gemm.py",
    "ceiling": "ceiling.py",
    "train-step": "train_step.py",
    "inference": "inference.py",
    "ptq": "ptq.py",
}


def benchmarks_dir() -> Path:
    """The repository's benchmarks/ folder (the package is installed editable from src/lowbit)."""
    return Path(lowbit.__file__).resolve().parents[2] / "benchmarks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, help="options of that benchmark (see its --help)"
    )


def load(name: str) -> ModuleType:
    """Import benchmarks/<file>.py for ``name``; FileNotFoundError names the path when it is absent."""
    path = benchmarks_dir() / BENCHMARKS[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark {name!r} needs {path}, which does not exist (benchmarks/ ships with the source "
            "checkout: install lowbit editable from the repository)"
        )
    spec = importlib.util.spec_from_file_location(f"lowbit_benchmarks_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace) -> int:
    module = load(args.benchmark)
    parser = argparse.ArgumentParser(prog=f"lowbit bench {args.benchmark}", description=module.__doc__)
    module.add_arguments(parser)
    code = module.run(parser.parse_args(args.options))
    return code if isinstance(code, int) else 0  # some benchmarks return their records instead of a code
