"""Contract tests of the lowbit:: torch.library ops: shapes/dtypes, opcheck, fake tensors, torch.compile."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import BACKENDS
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit.ops  # noqa: F401 - registers the ops


def _codes(gen, shape, bits=4):
    return torch.randint(-8, 8, shape, generator=gen, dtype=torch.int8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(gen, backend):
    a, b = _codes(gen, (7, 20)), _codes(gen, (5, 20))
    sa, sb, bias = torch.rand(7, generator=gen), torch.rand(5, generator=gen), torch.randn(5, generator=gen)
    torch.library.opcheck(torch.ops.lowbit.int_matmul.default, (a, b, 4, "nt", backend))
    torch.library.opcheck(torch.ops.lowbit.int_matmul.default, (a, b.t().contiguous(), 8, "nn", backend))
    out32 = torch.empty(7, 5, dtype=torch.int32)
    torch.library.opcheck(torch.ops.lowbit.int_matmul_out.default, (a, b, 4, "nt", backend, out32))
    torch.library.opcheck(torch.ops.lowbit.int_matmul_scaled.default, (a, b, sa, sb, bias, 4, "nt", backend))
    torch.library.opcheck(
        torch.ops.lowbit.int_matmul_scaled_out.default,
        (a, b, sa, sb, None, 8, "nt", backend, torch.empty(7, 5)),
    )
    torch.library.opcheck(
        torch.ops.lowbit.quantize_rows.default, (torch.randn(6, 9, generator=gen), 8, backend)
    )


def test_fake_shapes():
    with FakeTensorMode():
        a = torch.empty(9, 32, dtype=torch.int8)
        b = torch.empty(32, 11, dtype=torch.int8)
        out = torch.ops.lowbit.int_matmul(a, b, 8, "nn", "auto")
        assert out.shape == (9, 11) and out.dtype == torch.int32
        packed = torch.empty(9, 16, dtype=torch.uint8)
        out = torch.ops.lowbit.int_matmul(packed, torch.empty(3, 16, dtype=torch.uint8), 4, "nt", "auto")
        assert out.shape == (9, 3)
        codes, scale = torch.ops.lowbit.quantize_rows(torch.empty(4, 6), 8, "auto")
        assert codes.dtype == torch.int8 and scale.shape == (4,)


def test_torch_compile(gen):
    def f(x, w, sw):
        codes, sx = torch.ops.lowbit.quantize_rows(x, 8, "auto")
        return torch.ops.lowbit.int_matmul_scaled(codes, w, sx, sw, None, 8, "nt", "auto")

    x, w = (
        torch.randn(8, 16, generator=gen),
        torch.randint(-127, 128, (4, 16), generator=gen, dtype=torch.int8),
    )
    sw = torch.rand(4, generator=gen)
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x, w, sw), f(x, w, sw))
