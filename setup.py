"""Build the native integer kernels (AVX2, OpenMP) as part of ``pip install``.

The library is plain C with a tiny CPython module init so it installs like any extension; Python reaches the
kernels through ctypes (``lowbit.ops.native``), which keeps it independent of torch's C++ ABI.
"""

from pathlib import Path

from setuptools import Extension, setup

CSRC = Path("src/lowbit/ops/csrc")
# Every C file under csrc/ is one translation unit of the same shared library.
SOURCES = sorted(str(p) for p in CSRC.glob("*.c"))
# Headers shared by those files: an edit to one rebuilds every source (setuptools compares timestamps only
# with `depends`); MANIFEST.in ships them in the sdist.
HEADERS = sorted(str(p) for p in CSRC.glob("*.h"))

native = Extension(
    "lowbit.ops._native",
    sources=SOURCES,
    depends=HEADERS,
    extra_compile_args=["-O3", "-std=gnu11", "-fopenmp", "-fno-strict-aliasing"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[native])
