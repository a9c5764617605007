"""The benchmarks behind ``lowbit bench``: each module times lowbit against torch FP32 (and the peers a user
of the CPU at hand would pick: torch BF16, oneDNN INT8, ``torch._int_mm``) in one run, names the CPU and the
backend, and writes its tables under ``./results/``. Part of the installed package, so ``lowbit bench`` works
after a plain ``pip install``; also runnable as ``python -m lowbit.bench.<module>``.

Modules: :mod:`~lowbit.bench.gemm`, :mod:`~lowbit.bench.ceiling`, :mod:`~lowbit.bench.train_step`,
:mod:`~lowbit.bench.inference`, :mod:`~lowbit.bench.ptq`. The top layer of the package (it may import
``lowbit.experiments``); nothing in the library imports it.
"""

from pathlib import Path

#: Where every benchmark writes, relative to the working directory (like every lowbit output).
RESULTS_DIR = Path("results")
