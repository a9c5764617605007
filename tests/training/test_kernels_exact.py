"""Fused native training kernels vs the PyTorch path: identical integers and floats (atol=0, rtol=0)."""

from __future__ import annotations

import importlib

import pytest
import torch

from lowbit.training._kernels import hq_grad_x_, hq_quantize, native_reason
from lowbit.training.hadamard_quant import block_transform
from lowbit.training.lsq import clip_mask, lsq_init, lsq_quantize

pytestmark = pytest.mark.skipif(
    bool(native_reason()), reason=f"native kernels unavailable: {native_reason()}"
)

SHAPES = [
    (7, 96, 32),  # several blocks per row, odd row count
    (5, 64, 1),  # block 1: no transform, quantize only
    (3, 2048, 1024),  # the largest searched block
    (1, 8, 8),  # one block, one row
    (33, 48, 16),  # more rows than threads x unroll
    (300, 256, 64),  # above the kernels' fork threshold (rows x d > 65536): the OpenMP path
    (6, 12, 4),  # block 4: the scalar FWHT (AVX2 needs a block of 8 or more)
    (3, 16, 2),  # block 2: scalar
    (9, 20, 2),  # block 2: two registers of four blocks, then a scalar tail of two blocks
    (5, 36, 4),  # block 4: four registers of two blocks, then one scalar block
    (4, 13, 1),  # block 1: one register, then five scalar values
    (300, 264, 2),  # block 2 in the OpenMP path (the FFN-down block the search picks after a GELU)
    # blocks >= 16 run their stages two at a time (h, h/2), the first pass scaling x as it loads: an odd
    # (128 = 64,32 + 16,8), an even (256 = 128,64 + 32,16 + 8) and a single-pair (16, 32) stage count
    (5, 384, 128),
    (4, 768, 256),
    (3, 1024, 512),
    (6, 64, 16),
]


def _input(rows: int, d: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(rows, d, generator=gen) * torch.rand(rows, 1, generator=gen) * 4  # a scale per row
    x[0, 0] = 300.0  # planted outlier: clips after the transform
    x[-1, -1] = 0.0
    return x


@pytest.mark.parametrize("rows, d, block", SHAPES, ids=[f"{r}x{d}-g{b}" for r, d, b in SHAPES])
def test_hq_quantize_bit_exact(rows: int, d: int, block: int, gen: torch.Generator) -> None:
    x = _input(rows, d, gen)
    step = lsq_init(block_transform(x, block)) / 3  # a small step: many entries clip
    codes_ref, dq_ref = lsq_quantize(block_transform(x, block), step)
    codes, dq = hq_quantize(x, block, float(step))
    assert torch.equal(codes, codes_ref) and torch.equal(dq, dq_ref)
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7
    assert rows == 1 or (dq.abs() > 0.5).any()  # clipping exercised (one row: all entries equal here)


def test_hq_quantize_ties_round_half_even() -> None:
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, 7.5, -8.5, 6.5]])
    codes, dq = hq_quantize(x, 1, 1.0)
    assert codes.tolist() == [[0, 2, 2, 0, -2, 7, -8, 6]]
    ref_codes, ref_dq = lsq_quantize(x, torch.tensor(1.0))
    assert torch.equal(codes, ref_codes) and torch.equal(dq, ref_dq)


@pytest.mark.parametrize("rows, d, block", SHAPES, ids=[f"{r}x{d}-g{b}" for r, d, b in SHAPES])
def test_hq_grad_bit_exact(rows: int, d: int, block: int, gen: torch.Generator) -> None:
    x = _input(rows, d, gen)
    step = lsq_init(block_transform(x, block)) / 3  # many entries clip: the mask matters
    _, dq = lsq_quantize(block_transform(x, block), step)
    grad = torch.randn(rows, d, generator=gen)
    ref = block_transform(grad * clip_mask(dq), block)
    # the kernel's sum: float32 products, added in double (exact products would differ by ~1e-7 per term,
    # which over 79200 terms with cancellation exceeds rel 1e-6)
    ref_sum = float((grad * dq).double().sum())
    out = grad.clone()
    total = hq_grad_x_(out, x, float(step), block)  # dq recomputed from x
    assert torch.equal(out, ref)
    assert total == pytest.approx(ref_sum, rel=1e-6, abs=1e-6)


def test_kernel_argument_errors() -> None:
    with pytest.raises(ValueError, match="block"):
        hq_quantize(torch.zeros(2, 24), 16, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        hq_quantize(torch.zeros(8, 4).t(), 2, 1.0)
    with pytest.raises(ValueError, match="shape"):
        hq_grad_x_(torch.zeros(2, 8), torch.zeros(2, 4), 1.0, 4)


# ragged, a single element, more rows than columns, and 16899 elements: two work chunks of the AVX2 kernel
# (16384 each), the second starting mid-row and ending in a scalar tail of 3
SPLIT_SHAPES = [(33, 70), (1, 1), (4096, 3), (129, 131)]


@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=[f"{r}x{c}" for r, c in SPLIT_SHAPES])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_split_merged_native_bit_exact(
    shape: tuple[int, int], rounding: str, gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    bs = importlib.import_module(
        "lowbit.training.bit_split"
    )  # the package re-exports a function of that name

    g = torch.randn(shape, generator=gen) * 3
    g.view(-1)[0] = -50.0  # sets the scale: the most negative code is -98
    native, unit = bs.bit_split_merged(g, rounding=rounding, generator=torch.Generator().manual_seed(9))
    monkeypatch.setattr(bs, "native_reason", lambda: "disabled for the reference")
    ref, unit_ref = bs.bit_split_merged(g, rounding=rounding, generator=torch.Generator().manual_seed(9))
    assert unit == unit_ref and torch.equal(native, ref) and int(native.view(-1)[0]) == -98


def test_absmax_rejects_non_finite() -> None:
    from lowbit.training._kernels import absmax

    assert absmax(torch.tensor([1.0, -3.5, 2.0])) == 3.5
    with pytest.raises(ValueError, match="non-finite"):
        absmax(torch.tensor([1.0, float("inf")]))


@pytest.mark.parametrize("where", [5, 16384 + 40, 40000 - 3], ids=["lane", "second-chunk", "scalar-tail"])
def test_absmax_native_lanes_chunks_and_tail(where: int, gen: torch.Generator) -> None:
    from lowbit.training._kernels import absmax

    g = torch.randn(40000, generator=gen)  # 40000 = 2 full chunks + a ragged one ending in a scalar tail
    g[where] = -1e4  # the maximum, planted in an AVX2 lane, a later chunk or the tail
    assert absmax(g) == float(g.abs().max()) == 1e4
    g[where] = float("nan")
    g[(where + 17) % 40000] = float("-inf")
    with pytest.raises(ValueError, match="holds 2 non-finite"):
        absmax(g)


def test_kernel_backend_reports_native() -> None:
    from lowbit.training import kernel_backend

    assert kernel_backend() == "native"


def test_native_kernels_same_with_two_threads(gen: torch.Generator) -> None:
    from lowbit.training._kernels import split_merged_native

    x = _input(300, 256, gen)  # above the fork threshold: two OpenMP threads split the rows
    grad = torch.randn(300, 256, generator=gen)
    g = torch.randn(129, 131, generator=gen)
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        codes, dq = hq_quantize(x, 64, 0.05)
        out = grad.clone()
        total = hq_grad_x_(out, x, 0.05, 64)
        runs.append((codes, dq, out, total, split_merged_native(g, 7.0, 123, True)))
    (c1, d1, o1, t1, s1), (c2, d2, o2, t2, s2) = runs
    assert torch.equal(c1, c2) and torch.equal(d1, d2) and torch.equal(o1, o2) and torch.equal(s1, s2)
    assert t1 == t2  # per-chunk double sums added in chunk order: independent of the thread count


# 16x16 tiles only; ragged < 16; one row / column; empty; 128x128 blocks with ragged tiles and bytes on both
# edges; above the fork threshold (two threads in the 2-thread test below)
TRANSPOSE_SHAPES = [(64, 48), (17, 33), (1, 100), (100, 1), (0, 5), (300, 270), (600, 520)]


@pytest.mark.parametrize("shape", TRANSPOSE_SHAPES, ids=[f"{r}x{c}" for r, c in TRANSPOSE_SHAPES])
def test_transpose_i8_matches_torch(shape: tuple[int, int], gen: torch.Generator) -> None:
    from lowbit.training._kernels import transpose_i8

    codes = torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert torch.equal(transpose_i8(codes), codes.t().contiguous())


def test_backward_layouts_give_the_same_products(gen: torch.Generator) -> None:
    """The int4 backward's "nt" products on transposed copies equal the "nn"/"tn" products bit for bit."""
    from lowbit.ops import int_matmul_scaled
    from lowbit.training._kernels import transpose_i8

    n, c, d = 70, 48, 40  # ragged against the 6x16 micro-tile
    merged = torch.randint(-98, 99, (n, c), dtype=torch.int8, generator=gen)
    w_int4 = torch.randint(-8, 8, (c, d), dtype=torch.int8, generator=gen)
    x_int4 = torch.randint(-8, 8, (n, d), dtype=torch.int8, generator=gen)
    unit, sw, sx = torch.tensor(0.37), torch.tensor(0.011), torch.tensor(1.7)
    nn_ = int_matmul_scaled(merged, w_int4, unit, sw, bits=8, layout="nn")
    nt_ = int_matmul_scaled(merged, transpose_i8(w_int4), unit, sw, bits=8, layout="nt")
    tn_ = int_matmul_scaled(merged, x_int4, unit, sx, bits=8, layout="tn")
    nt2 = int_matmul_scaled(transpose_i8(merged), transpose_i8(x_int4), unit, sx, bits=8, layout="nt")
    assert torch.equal(nn_, nt_) and torch.equal(tn_, nt2)


def test_int4_layer_native_equals_torch_path(gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """One QuantLinear (int4) forward + backward: native kernels vs the pure-torch path, same seeds."""
    from torch import nn

    from lowbit.training import QuantLinear, functional

    # the module (the package re-exports a function of the same name)
    bs = importlib.import_module("lowbit.training.bit_split")

    lin = nn.Linear(96, 80)
    x = torch.randn(3, 50, 96, generator=gen) * 2
    x[0, 0, 5] = 60.0  # an outlier that clips
    grad_y = torch.randn(3, 50, 80, generator=gen)
    runs = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(functional, "native_reason", lambda: "disabled for the reference")
            monkeypatch.setattr(bs, "native_reason", lambda: "disabled for the reference")
        q = QuantLinear.from_linear(nn.Linear(96, 80), "int4", seed=3)
        q.load_state_dict(lin.state_dict(), strict=False)
        xr = x.clone().requires_grad_()
        y = q(xr)
        y.backward(grad_y)
        runs.append((y, xr.grad, q.weight.grad, q.bias.grad, q.x_step.grad, q.w_step.grad))
    for got, ref in zip(runs[0][:4], runs[1][:4], strict=True):
        assert torch.equal(got, ref)
    for got, ref in zip(runs[0][4:], runs[1][4:], strict=True):  # double vs float32 step-gradient sums
        assert float(got) == pytest.approx(float(ref), rel=1e-5, abs=1e-7)
