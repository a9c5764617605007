"""QuantLinear: SQNR per recipe vs float64, unbiased gradients, LSQ step gradients, integer-only products."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import sqnr_db
from torch import nn

from lowbit.formats import INT4_RANGE
from lowbit.training import QuantLinear
from lowbit.training.hadamard_quant import block_transform
from lowbit.training.lsq import lsq_grad_scale, lsq_quantize
from lowbit.transforms import hadamard_matrix

# Minimum SQNR (dB) vs the float64 product / exact float64 gradients on `_outlier_data` (3 seeds, min taken).
# Origin: measured on this data at commit time (int8 32.8/40.9/32.8, int4 11.8/14.6/14.3, int4-naive
# 9.0/11.0/8.1), floors set ~1-2 dB below; int4 must beat int4-naive by INT4_MARGIN_DB on every product —
# the paper's claim that the Hadamard quantizer and bit splitting are what make 4 bits work.
SQNR_FLOOR_DB = {
    "int8": {"fprop": 30.0, "dgrad": 38.0, "wgrad": 30.0},
    "int4": {"fprop": 10.5, "dgrad": 13.0, "wgrad": 13.0},
    "int4-sample": {"fprop": 10.5, "dgrad": 13.0, "wgrad": 13.0},
    "int4-naive": {"fprop": 7.0, "dgrad": 9.5, "wgrad": 6.5},
}
INT4_MARGIN_DB = 2.0
N, D, C = 256, 128, 96
OUTLIER_COLS = [3, 40, 77]


def _outlier_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen)
    x[:, OUTLIER_COLS] *= 25.0  # outlier feature channels, as in transformer activations
    w = torch.randn(C, D, generator=gen) / D**0.5
    grad_y = torch.randn(N, C, generator=gen)
    grad_y[::17] *= 30.0  # a few tokens with large gradients
    return x, w, grad_y


def _run(recipe: str, x: torch.Tensor, w: torch.Tensor, grad_y: torch.Tensor, seed: int = 0):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    q = QuantLinear.from_linear(lin, recipe, seed=seed)
    xq = x.clone().requires_grad_()
    y = q(xq)
    y.backward(grad_y)
    return q, y.detach(), xq.grad, q.weight.grad


def _sqnrs(recipe: str) -> dict[str, float]:
    worst = {"fprop": float("inf"), "dgrad": float("inf"), "wgrad": float("inf")}
    for seed in range(3):
        x, w, gy = _outlier_data(seed)
        _, y, gx, gw = _run(recipe, x, w, gy, seed)
        x64, w64 = x.double(), w.double()
        got = {
            "fprop": sqnr_db(x64 @ w64.T, y),
            "dgrad": sqnr_db(gy.double() @ w64, gx),
            "wgrad": sqnr_db(gy.double().T @ x64, gw),
        }
        worst = {k: min(worst[k], got[k]) for k in worst}
    return worst


@pytest.mark.parametrize("recipe", list(SQNR_FLOOR_DB), ids=list(SQNR_FLOOR_DB))
def test_sqnr_floor(recipe: str) -> None:
    got = _sqnrs(recipe)
    for product, floor in SQNR_FLOOR_DB[recipe].items():
        assert got[product] >= floor, (recipe, product, got)


def test_int4_beats_naive() -> None:
    hq, naive = _sqnrs("int4"), _sqnrs("int4-naive")
    for product in hq:
        assert hq[product] >= naive[product] + INT4_MARGIN_DB, (product, hq, naive)


def _ste_reference(q: QuantLinear, x: torch.Tensor, grad_y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Float64 straight-through gradients (x, weight, x_step, w_step) given the layer's forward codes."""
    block = int(q.hadamard_block)
    h = torch.block_diag(*[hadamard_matrix(block)] * (x.shape[1] // block))  # (D, D)
    x_int4, x_dq = lsq_quantize(block_transform(x, block), q.x_step)
    w_int4, w_dq = lsq_quantize(block_transform(q.weight, block), q.w_step)
    x_hat, w_hat = x_int4.double() * float(q.x_step.detach()), w_int4.double() * float(q.w_step.detach())
    g64 = grad_y.double()
    grad_xh, grad_wh = g64 @ w_hat, g64.T @ x_hat  # ∂L/∂(XH)^, ∂L/∂(WH)^
    gx_step = (grad_xh * x_dq.double()).sum() * lsq_grad_scale(x.numel())
    gw_step = (grad_wh * w_dq.double()).sum() * lsq_grad_scale(q.weight.numel())
    grad_x = (grad_xh * (x_dq.abs() <= 0.5)) @ h
    grad_w = (grad_wh * (w_dq.abs() <= 0.5)) @ h
    return grad_x, grad_w, gx_step, gw_step


@pytest.mark.parametrize("recipe", ["int4-sample", "int4"], ids=["bernoulli-sampling", "keep-nonzero"])
def test_gradients_unbiased(recipe: str) -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(48, 64, generator=gen)
    x[:, 5] *= 20.0
    grad_y = torch.randn(48, 16, generator=gen) * torch.rand(48, 1, generator=gen) ** 3  # uneven row norms
    torch.manual_seed(0)  # the weight init: the whole test is deterministic (max |z| = 3.7 of 5 here)
    q = QuantLinear(64, 16, bias=False, recipe=recipe)
    # Bernoulli sampling reweights rare rows by 1/p (heavy-tailed draws): with few seeds the sample std misses
    # the rare large terms, so sampling needs more draws for a trustworthy 5-sigma bound than keep-non-zero
    n_seeds = 1000 if recipe == "int4-sample" else 300
    draws: list[list[torch.Tensor]] = [[], [], [], []]
    for s in range(n_seeds):
        q.generator.manual_seed(s)
        q.zero_grad(set_to_none=True)
        xq = x.clone().requires_grad_()
        q(xq).backward(grad_y)
        for lst, g in zip(draws, (xq.grad, q.weight.grad, q.x_step.grad, q.w_step.grad), strict=True):
            lst.append(g.double().clone())
    ref = _ste_reference(q, x, grad_y)
    for name, lst, r in zip(("grad_x", "grad_w", "x_step", "w_step"), draws, ref, strict=True):
        samples = torch.stack(lst)
        mean, se = samples.mean(0), samples.std(0) / n_seeds**0.5
        tol = 5 * se + 1e-5 * r.abs().max()  # 5 sigma + float32 epilogue rounding
        assert ((mean - r).abs() <= tol).all(), (name, float(((mean - r).abs() / tol).max()))
        assert float(samples.std(0).max()) > 0  # really stochastic: the test can fail


def test_lsq_step_gradient_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(32, 64, generator=gen) * 2
    x[0, 0] = 40.0  # clips: exercises the clamp-bound branch of ∂x̂/∂s
    # integer multiples of 1/8 with max exactly 98/8: the bit split is exact (no rounding), so the only
    # approximation left is the straight-through estimator the finite difference also uses
    grad_y = torch.randint(-98, 99, (32, 24), generator=gen).double() / 8
    grad_y[0, 0] = 98 / 8
    q = QuantLinear(64, 24, bias=False, recipe="int4")
    q(x).backward(grad_y.float())
    block = int(q.hadamard_block)

    def surrogate_loss(sx: float, sw: float) -> float:
        # x̂(s) with the rounding residual frozen at the current step: ∂x̂/∂s = round(v) − v or the bound
        def q_hat(t: torch.Tensor, s0: float, s: float) -> torch.Tensor:
            v0 = t / s0
            r0 = torch.round(v0)
            inside = (r0 >= INT4_RANGE.lo) & (r0 <= INT4_RANGE.hi)
            return torch.where(inside, t + s * (r0 - v0), s * r0.clamp(INT4_RANGE.lo, INT4_RANGE.hi))

        xh = block_transform(x, block).double()
        wh = block_transform(q.weight, block).double()
        y = q_hat(xh, float(q.x_step), sx) @ q_hat(wh, float(q.w_step), sw).T
        return float((y * grad_y).sum())

    sx, sw = float(q.x_step.detach()), float(q.w_step.detach())
    eps = 1e-4
    fd_x = (surrogate_loss(sx + eps * sx, sw) - surrogate_loss(sx - eps * sx, sw)) / (2 * eps * sx)
    fd_w = (surrogate_loss(sx, sw + eps * sw) - surrogate_loss(sx, sw - eps * sw)) / (2 * eps * sw)
    assert float(q.x_step.grad) / lsq_grad_scale(x.numel()) == pytest.approx(fd_x, rel=1e-4)
    assert float(q.w_step.grad) / lsq_grad_scale(q.weight.numel()) == pytest.approx(fd_w, rel=1e-4)
