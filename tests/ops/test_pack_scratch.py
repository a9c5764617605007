"""Per-thread scratch panels of one-off products: reused across calls and threads without mixing results."""

from __future__ import annotations

import threading

import pytest
import torch

import lowbit.ops as ops
from lowbit.ops import native, native_gemm

needs_native = pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native")


def _exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.to(torch.int64) @ b.to(torch.int64).T).to(torch.int32)


@needs_native
def test_scratch_reused_and_products_stay_exact():
    """Large, small, then large again (every kind): each product exact while the buffers are shared."""
    gen = torch.Generator().manual_seed(11)
    cases = [  # (m, k, n, a range, b range, bits) -> kinds 0, 1, 2, 3
        (97, 300, 45, 127, 63, 8),
        (5, 7, 3, 7, 7, 4),
        (61, 129, 33, 127, 127, 8),
        (70, 200, 19, 127, 7, 8),
    ]
    for m, k, n, ra, rb, bits in cases + cases[::-1]:
        a = torch.randint(-ra, ra + 1, (m, k), generator=gen, dtype=torch.int8)
        b = torch.randint(-rb, rb + 1, (n, k), generator=gen, dtype=torch.int8)
        assert torch.equal(ops.int_matmul(a, b, bits=bits, backend="native"), _exact(a, b))
    pool = native_gemm._SCRATCH.pool
    assert {"a", "b"} <= set(pool)  # (other users, e.g. the FP8 layers, add slots of their own)
    first = pool["a"].data_ptr()
    a = torch.randint(-127, 128, (3, 5), generator=gen, dtype=torch.int8)
    b = torch.randint(-63, 64, (2, 5), generator=gen, dtype=torch.int8)
    ops.int_matmul(a, b, bits=8, backend="native")
    assert pool["a"].data_ptr() == first  # a smaller product reuses the buffer


@needs_native
def test_threads_keep_their_own_scratch():
    """Products running in several Python threads at once (the GEMM releases the GIL) stay exact."""
    errors: list[str] = []

    def work(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for _ in range(6):
            m, k, n = (int(v) for v in torch.randint(1, 160, (3,), generator=gen))
            a = torch.randint(-127, 128, (m, k), generator=gen, dtype=torch.int8)
            b = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
            if not torch.equal(ops.int_matmul(a, b, bits=8, backend="native"), _exact(a, b)):
                errors.append(f"seed {seed} shape {(m, k, n)}")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
