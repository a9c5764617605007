"""LSQ step initialisation: the paper's ``2·mean|x|/√7`` and the MSE-best step (``Recipe.lsq_init``)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lowbit.formats import INT4_RANGE
from lowbit.training import QuantLinear, get_recipe
from lowbit.training.hadamard_quant import block_transform
from lowbit.training.lsq import LSQ_INITS, init_step, lsq_init, lsq_init_mse, quant_sse
from lowbit.training.recipes import RECIPES


def _sse_reference(x: torch.Tensor, step: float) -> float:
    """The quantization error written out plainly, in float64 (independent of ``quant_sse``)."""
    x64 = x.double().reshape(-1)
    s = torch.tensor(step, dtype=torch.float32).double()
    codes = torch.round(x.float().reshape(-1) / float(step))
    codes = torch.clamp(codes, INT4_RANGE.lo, INT4_RANGE.hi).double()
    return float(((codes * s - x64) ** 2).sum())


def _brute_force_best(x: torch.Tensor) -> float:
    """The smallest error over 6,000 steps: a fine linear and a fine geometric grid up to the no-clip step."""
    v = x.reshape(-1).float()
    s_full = max(float(v.max()) / INT4_RANGE.hi, -float(v.min()) / -INT4_RANGE.lo)
    linear = [s_full * k / 3000 for k in range(1, 3001)]
    geometric = [s_full * 2.0 ** (-12 * k / 3000) for k in range(3000)]
    return min(_sse_reference(v, s) for s in linear + geometric)


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    outlier = torch.randn(64, 96, generator=gen)
    outlier[:, 5] *= 40.0  # one outlier channel, as in LLM activations
    return {
        "normal": torch.randn(48, 64, generator=gen),
        "uniform": torch.rand(48, 64, generator=gen) * 3 - 1,
        "laplace": torch.distributions.Laplace(0.0, 1.0).sample((48, 64)),
        "student-t3": torch.distributions.StudentT(3.0).sample((48, 64)),
        "outlier-channel": outlier,
        "positive": torch.rand(32, 32, generator=gen) + 0.5,
        "hadamard-normal": block_transform(torch.randn(40, 64, generator=gen), 32),
    }


@pytest.mark.parametrize("name", list(_tensors()))
def test_mse_init_matches_brute_force(name: str) -> None:
    torch.manual_seed(1)  # the torch.distributions samples above
    x = _tensors()[name]
    s = float(lsq_init_mse(x))
    assert s > 0 and math.isfinite(s)
    best = _brute_force_best(x)
    # the search finds the minimum of a 6,000-step brute force (to within its own grid resolution)
    assert _sse_reference(x, s) <= best * (1 + 1e-4) + 1e-12
    assert _sse_reference(x, s) <= _sse_reference(x, float(lsq_init(x)))


def test_quant_sse_is_the_plain_error() -> None:
    x = torch.randn(33, 17, generator=torch.Generator().manual_seed(2))
    for step in (0.01, 0.1, 0.37, 2.0):
        assert quant_sse(x.reshape(-1), step) == pytest.approx(_sse_reference(x, step), rel=1e-6)


def test_mse_init_never_worse_than_paper_init() -> None:
    gen = torch.Generator().manual_seed(3)
    for trial in range(60):
        rows, cols = torch.randint(1, 40, (2,), generator=gen).tolist()
        shape = (rows, 2 * cols)
        scale = float(torch.rand(1, generator=gen)) * 10 ** int(torch.randint(-4, 4, (1,), generator=gen))
        x = torch.randn(shape, generator=gen) * scale
        if trial % 3 == 0:
            x = x**3  # heavier tails
        if trial % 5 == 0:
            x = x.abs() + scale  # one-signed
        mse, paper = float(lsq_init_mse(x)), float(lsq_init(x))
        assert _sse_reference(x, mse) <= _sse_reference(x, paper), (trial, mse, paper)


def test_mse_init_is_smaller_than_paper_on_gaussians() -> None:
    # INT4 on a Gaussian: the MSE-best step is about 0.34σ (clipping at ≈ 2.7σ); the paper's 2·mean|x|/√7
    # is ≈ 0.60σ
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(4))
    assert float(lsq_init_mse(x)) == pytest.approx(0.34, abs=0.02)
    assert float(lsq_init(x)) == pytest.approx(0.60, abs=0.02)


def test_zeros_and_constants() -> None:
    assert float(lsq_init_mse(torch.zeros(8, 8))) == 1.0
    assert float(lsq_init_mse(torch.zeros(0))) == 1.0
    for c in (3.5, 1e-6, 250.0):
        # a constant is represented exactly: code 7 for a positive constant, -8 for a negative one
        s = float(lsq_init_mse(torch.full((5, 7), c)))
        assert _sse_reference(torch.full((5, 7), c), s) == pytest.approx(0.0, abs=1e-12 * c * c)
        s = float(lsq_init_mse(torch.full((5, 7), -c)))
        assert _sse_reference(torch.full((5, 7), -c), s) == pytest.approx(0.0, abs=1e-12 * c * c)
    single = torch.tensor([0.0, 0.0, -2.0])
    assert _sse_reference(single, float(lsq_init_mse(single))) == pytest.approx(0.0, abs=1e-12)


def test_heavy_tails() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4000, generator=gen)
    x[17] = 500.0  # a single huge outlier: the MSE-best step keeps it (its error would dominate), the
    x[99] = -300.0  # paper init (set by the bulk) clips it to 7·s
    s = float(lsq_init_mse(x))
    assert _sse_reference(x, s) < 0.5 * _sse_reference(x, float(lsq_init(x)))
    assert _sse_reference(x, s) <= _brute_force_best(x) * (1 + 1e-4)
    cauchy = torch.distributions.Cauchy(0.0, 1.0).sample((3000,))
    s = float(lsq_init_mse(cauchy))
    assert s > 0 and _sse_reference(cauchy, s) <= _sse_reference(cauchy, float(lsq_init(cauchy)))


def test_deterministic_and_order_free() -> None:
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(6))
    s = lsq_init_mse(x)
    assert s.dtype == torch.float32 and s.shape == ()
    assert torch.equal(s, lsq_init_mse(x.clone()))
    assert float(lsq_init_mse(x.t().contiguous())) == pytest.approx(float(s), rel=1e-5)
    assert float(lsq_init_mse(4 * x)) == pytest.approx(4 * float(s), rel=1e-5)  # scale-equivariant


def test_non_finite_falls_back_to_paper_init() -> None:
    x = torch.randn(10)
    x[3] = float("nan")
    assert torch.equal(lsq_init_mse(x), lsq_init(x))


def test_init_step_and_recipe_field() -> None:
    x = torch.randn(16, 32)
    assert LSQ_INITS == ("paper", "mse")
    assert torch.equal(init_step(x, "paper"), lsq_init(x))
    assert torch.equal(init_step(x, "mse"), lsq_init_mse(x))
    with pytest.raises(ValueError, match="lsq_init|initialisation"):
        init_step(x, "max")
    assert torch.equal(init_step(x, None), lsq_init(x))  # a recipe leaving it open, outside a task
    with pytest.raises(ValueError, match="lsq_init must be None or one of"):
        dataclasses.replace(get_recipe("int4"), lsq_init="max")
    assert get_recipe("int4-paper").lsq_init == "paper" and get_recipe("int4-mse").lsq_init == "mse"
    assert get_recipe("int4").lsq_init is None and get_recipe("int4-sample").lsq_init is None
    assert "int4-paper" in RECIPES


@pytest.mark.parametrize("method", [*LSQ_INITS, None])
def test_layer_initialises_steps_with_the_recipe_init(method: str | None) -> None:
    recipe = dataclasses.replace(get_recipe("int4"), name=f"int4-{method}-test", lsq_init=method)
    q = QuantLinear(64, 16, recipe=recipe)
    x = torch.randn(24, 64, generator=torch.Generator().manual_seed(7))
    q(x)
    block = int(q.hadamard_block)
    if method is None:  # the plain layer, outside a training task: the paper's init
        assert torch.equal(init_step(block_transform(x, block), None), lsq_init(block_transform(x, block)))
    expect_x = init_step(block_transform(x, block), method)
    expect_w = init_step(block_transform(q.weight, block), method)
    assert float(q.x_step.detach()) == pytest.approx(float(expect_x), rel=1e-6)
    assert float(q.w_step.detach()) == pytest.approx(float(expect_w), rel=1e-6)
    with torch.no_grad():
        q.x_step.fill_(-1.0)  # pushed through zero by the optimizer: re-initialised by the same method
    x2 = 2 * x
    q(x2)
    assert float(q.x_step.detach()) == pytest.approx(
        float(init_step(block_transform(x2, block), method)), rel=1e-6
    )
