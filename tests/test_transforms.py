"""hadamard() against an explicit Sylvester matrix built here with numpy, plus its algebraic properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.transforms import hadamard, hadamard_matrix

F64_TOL = 1e-13  # a few float64 ulps per butterfly stage (at most 10 stages here)


def sylvester(n: int) -> np.ndarray:
    """Normalised Sylvester matrix by Kronecker products: H_2n = H_2 (x) H_n."""
    h = np.ones((1, 1))
    h2 = np.array([[1.0, 1.0], [1.0, -1.0]])
    while h.shape[0] < n:
        h = np.kron(h2, h)
    return h / np.sqrt(n)


def blockwise(x: np.ndarray, block: int) -> np.ndarray:
    """x (..., n) -> each block of the last dim times the Sylvester matrix (block-diagonal H)."""
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    return (xb @ sylvester(block).T).reshape(x.shape)


@pytest.mark.parametrize("block", [1, 2, 4, 8, 16, 32, 64, 256, 1024])
def test_matches_sylvester_matrix_in_float64(block: int, gen) -> None:
    x = torch.randn(3, 1024, generator=gen, dtype=torch.float64)
    out = hadamard(x, block)
    assert out.dtype == torch.float64 and out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), blockwise(x.numpy(), block), rtol=0, atol=F64_TOL)


@pytest.mark.parametrize("n", [1, 2, 4, 32, 128])
def test_hadamard_matrix_is_sylvester_symmetric_orthogonal(n: int) -> None:
    h = hadamard_matrix(n)
    np.testing.assert_allclose(h.numpy(), sylvester(n), rtol=0, atol=1e-15)
    assert torch.equal(h, h.T)
    np.testing.assert_allclose((h @ h).numpy(), np.eye(n), rtol=0, atol=1e-14)
    assert hadamard_matrix(n, torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    ("shape", "block"),
    [((7, 96), 32), ((2, 3, 48), 16), ((64,), 64), ((5, 0, 8), 8), ((1, 24), 8)],
    ids=["rows-odd", "3d", "1d-full", "empty", "block-not-dividing-power-of-two-dim"],
)
def test_shapes_norm_and_self_inverse(shape, block, gen) -> None:
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    y = hadamard(x, block)
    assert y.shape == x.shape
    np.testing.assert_allclose(y.norm().item(), x.norm().item(), rtol=1e-14)
    np.testing.assert_allclose(hadamard(y, block).numpy(), x.numpy(), rtol=0, atol=F64_TOL)
    np.testing.assert_allclose(y.numpy(), blockwise(x.numpy(), block), rtol=0, atol=F64_TOL)


def test_float32_accuracy_and_gemm_invariance(gen) -> None:
    x = torch.randn(16, 256, generator=gen)
    w = torch.randn(24, 256, generator=gen)
    y = hadamard(x, 32)
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.double().numpy(), blockwise(x.double().numpy(), 32), rtol=0, atol=1e-5)
    # (X H)(W H)^T = X W^T: the transform leaves a GEMM over the transformed dim unchanged
    np.testing.assert_allclose((y @ hadamard(w, 32).T).numpy(), (x @ w.T).numpy(), rtol=0, atol=1e-3)


def test_spreads_an_outlier_evenly() -> None:
    x = torch.zeros(1, 64, dtype=torch.float64)
    x[0, 5] = 8.0
    y = hadamard(x, 64)
    assert torch.allclose(y.abs(), torch.full_like(y, 1.0))  # 8 / sqrt(64) in every position


def test_gradient_is_the_transform_itself(gen) -> None:
    x = torch.randn(4, 64, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    (hadamard(x, 16) * g).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), blockwise(g.numpy(), 16), rtol=0, atol=F64_TOL)


@settings(max_examples=40, deadline=None, derandomize=True)  # seeded: the same cases in CI
@given(
    log_block=st.integers(0, 6),
    blocks=st.integers(1, 4),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_orthonormal_and_involutive(log_block: int, blocks: int, rows: int, seed: int) -> None:
    block = 2**log_block
    x = torch.randn(rows, block * blocks, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = hadamard(x, block)
    np.testing.assert_allclose(y.norm(dim=-1).numpy(), x.norm(dim=-1).numpy(), rtol=1e-13)
    np.testing.assert_allclose(hadamard(y, block).numpy(), x.numpy(), rtol=0, atol=F64_TOL)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: hadamard(torch.randn(2, 48), 32), ValueError, "does not divide"),
        (lambda: hadamard(torch.randn(2, 48), 12), ValueError, "power of two"),
        (lambda: hadamard(torch.randn(2, 48)), ValueError, "power of two"),
        (lambda: hadamard(torch.randn(2, 48), 0), ValueError, "power of two"),
        (lambda: hadamard(torch.randn(2, 48), 16.0), TypeError, "block"),
        (lambda: hadamard(torch.ones(2, 8, dtype=torch.int32), 8), TypeError, r"x\.float\(\)"),
        (lambda: hadamard(torch.tensor(1.0), 1), ValueError, "at least 1 dimension"),
        (lambda: hadamard([1.0, 2.0], 2), TypeError, "torch.Tensor"),
        (lambda: hadamard_matrix(6), ValueError, "power of two"),
    ],
    ids=["not-dividing", "not-pow2", "default-not-pow2", "zero", "float-block", "int-input", "scalar", "list",
         "matrix-6"],
)  # fmt: skip
def test_bad_arguments(call, exc, words) -> None:
    with pytest.raises(exc, match=words):
        call()


def test_non_contiguous_input_and_half_dtypes(gen) -> None:
    base = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    x = base.T  # (6, 64), non-contiguous
    before = base.clone()
    np.testing.assert_allclose(
        hadamard(x, 16).numpy(), blockwise(x.contiguous().numpy(), 16), rtol=0, atol=F64_TOL
    )
    assert torch.equal(base, before)  # input untouched
    y = hadamard(x.to(torch.bfloat16), 16)
    assert y.dtype == torch.bfloat16
    np.testing.assert_allclose(y.double().numpy(), blockwise(x.numpy(), 16), rtol=0, atol=0.05)
