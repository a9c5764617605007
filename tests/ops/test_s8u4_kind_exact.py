"""Kind 3 (8-bit codes x 4-bit codes, int16 accumulation widened every 32 k): bit-exact against int64."""

from __future__ import annotations

import pytest
import torch

import lowbit.ops as ops
from lowbit.ops import native, reference

needs_native = pytest.mark.skipif(not native.available(), reason=native.why_not_native() or "native")
from tests.helpers import BACKENDS  # noqa: E402


def exact_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    acc = a.long() @ b.long().t()
    assert acc.abs().max() < 2**31 if acc.numel() else True
    return acc.to(torch.int32)


def as_layout(a_mk, b_nk, layout):
    if layout == "nt":
        return a_mk, b_nk
    if layout == "nn":
        return a_mk, b_nk.t().contiguous()
    return a_mk.t().contiguous(), b_nk.t().contiguous()


@needs_native
def test_plan_picks_kind3_for_4bit_b():
    from lowbit.ops import native_gemm as ng

    assert ng.plan(8, (-128, 127), (-8, 7)) == (ng.KIND_S8U4, 8)
    assert ng.plan(8, (-105, 105), (-7, 7)) == (ng.KIND_S8U4, 8)
    assert ng.plan(8, (-8, 7), (-8, 7)) == (ng.KIND_INT4, 8)  # both 4-bit: the int4 kernel
    assert ng.plan(8, (-128, 127), (-9, 7))[0] == ng.KIND_U8S8  # b one past 4 bits: unchanged
    assert ng.plan(8, (-128, 127), (-8, 8))[0] == ng.KIND_U8S8


SHAPES = [
    (1, 1, 1),
    (7, 5, 3),
    (13, 37, 31),
    (6, 16, 32),  # exactly one widening chunk
    (5, 17, 33),  # one past the chunk
    (11, 19, 65),
    (100, 70, 515),
    (33, 200, 1030),  # several K slices (1024 per slice)
    (9, 40, 2049),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nt", "nn", "tn"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_exact_and_scaled(gen, backend, layout, shape):
    m, n, k = shape
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    x, y = as_layout(a, b, layout)
    assert torch.equal(ops.int_matmul(x, y, bits=8, layout=layout, backend=backend), exact_nt(a, b))
    sa, sb = torch.rand(m, generator=gen) + 0.5, torch.rand(n, generator=gen) + 0.5
    bias = torch.randn(n, generator=gen)
    got = ops.int_matmul_scaled(x, y, sa, sb, bias, bits=8, layout=layout, backend=backend)
    assert torch.equal(got, reference.int_matmul_scaled(x, y, sa, sb, bias, layout))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("va", [-128, 127, -127])
@pytest.mark.parametrize("vb", [-8, 7])
@pytest.mark.parametrize("k", [32, 33, 1031])
def test_extreme_codes(backend, va, vb, k):
    """-128 x 7 is the largest int16 chunk sum (b + 8 = 15): 8 steps * 2 * 128 * 15 = 30720 < 32767."""
    a = torch.full((9, k), va, dtype=torch.int8)
    b = torch.full((35, k), vb, dtype=torch.int8)
    assert torch.equal(ops.int_matmul(a, b, bits=8, backend=backend), exact_nt(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_extremes_exact(gen, backend):
    k = 777
    a = torch.tensor([-128, 127, 0], dtype=torch.int8)[torch.randint(0, 3, (20, k), generator=gen)]
    b = torch.tensor([-8, 7], dtype=torch.int8)[torch.randint(0, 2, (23, k), generator=gen)]
    for layout in ("nt", "nn", "tn"):
        x, y = as_layout(a, b, layout)
        assert torch.equal(ops.int_matmul(x, y, bits=8, layout=layout, backend=backend), exact_nt(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_at_max_k(backend):
    k = ops.MAX_K[8]
    a = torch.full((2, k), -128, dtype=torch.int8)
    b = torch.full((3, k), 7, dtype=torch.int8)
    want = torch.full((2, 3), -128 * 7 * k, dtype=torch.int32)
    assert torch.equal(ops.int_matmul(a, b, bits=8, backend=backend), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_views(gen, backend):
    wide_a = torch.randint(-128, 128, (11, 90), generator=gen, dtype=torch.int8)
    wide_b = torch.randint(-8, 8, (21, 90), generator=gen, dtype=torch.int8)
    a, b = wide_a[:, ::2], wide_b[:, 1::2]
    assert torch.equal(ops.int_matmul(a, b, bits=8, backend=backend), exact_nt(a, b))
