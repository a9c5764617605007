"""Build the native integer kernels (AVX2, OpenMP) as part of ``pip install``.

The library is plain C with a tiny CPython module init so it installs like any extension; Python reaches the
kernels through ctypes (``lowbit.ops.native``), which keeps it independent of torch's C++ ABI.
"""

from pathlib import Path

from setuptools import Extension, setup

# Every C file under csrc/ is one translation unit of the same shared library.
SOURCES = sorted(str(p) for p in Path("src/lowbit/ops/csrc").glob("*.c"))

native = Extension(
    "lowbit.ops._native",
    sources=SOURCES,
    extra_compile_args=["-O3", "-std=gnu11", "-fopenmp", "-fno-strict-aliasing"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[native])
