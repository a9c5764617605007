"""Optimizer groups for quantized models: LSQ step sizes without decay at their own learning rate."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import lowbit
from lowbit.training import QuantLinear, get_recipe
from lowbit.training.hadamard_quant import block_transform
from lowbit.training.lsq import lsq_init
from lowbit.training.optim import LSQ_LR_KEY, param_groups, step_size_parameters, sync_step_lrs


def _model(recipe: str | None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 32), nn.Linear(32, 4))
    if recipe is not None:
        lowbit.convert(model, recipe)
    return model


def test_float_model_keeps_two_groups() -> None:
    model = _model(None)
    groups = param_groups(model, 1e-3, 0.1)
    assert len(groups) == 2
    assert [p.dim() for p in groups[0]["params"]] == [2, 2, 2] and groups[0]["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_int4_steps_in_groups_of_their_own() -> None:
    model = _model("int4")
    groups = param_groups(model, 1e-3, 0.1)
    steps = step_size_parameters(model)
    assert len(steps) == 4  # two converted layers (the head stays float) x (x_step, w_step)
    assert len(groups) == 2 + 4
    for group in groups[2:]:
        assert len(group["params"]) == 1 and id(group["params"][0]) in steps
        assert group["weight_decay"] == 0.0 and group["lr"] == 0.0  # frozen until sync_step_lrs
        assert group[LSQ_LR_KEY] == get_recipe("int4").lsq_lr
    # every trainable parameter in exactly one group
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted({id(p) for p in model.parameters()})
    assert all(p.dim() >= 2 for p in groups[0]["params"])


def test_step_update_is_relative_to_the_step() -> None:
    model = _model("int4")
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 0.1), lr=1e-2)
    model(torch.randn(64, 32)).square().mean().backward()  # initialises the steps, then gives them gradients
    before = {i: float(p.detach()) for i, (p, _) in step_size_parameters(model).items()}
    assert len(set(before.values())) == 4 and min(before.values()) > 0
    sync_step_lrs(opt, factor=0.5)
    opt.step()
    rate = get_recipe("int4").lsq_lr
    for i, (p, _) in step_size_parameters(model).items():
        change = abs(float(p.detach()) - before[i])
        assert change == pytest.approx(rate * 0.5 * before[i], rel=1e-3)  # Adam's first update: |Δ| = lr


def test_rate_per_recipe_and_validation() -> None:
    slow = dataclasses.replace(get_recipe("int4"), name="int4-slow", lsq_lr=0.5)
    model = nn.Sequential(QuantLinear(32, 16, recipe=slow), QuantLinear(16, 8, recipe="int4"))
    rates = sorted(g.get(LSQ_LR_KEY, -1) for g in param_groups(model, 1.0, 0.0))
    assert rates == [-1, -1, get_recipe("int4").lsq_lr, get_recipe("int4").lsq_lr, 0.5, 0.5]
    with pytest.raises(ValueError, match="lsq_lr"):
        dataclasses.replace(get_recipe("int4"), lsq_lr=-1.0)


@pytest.mark.parametrize("bad", [-0.05, 0.0, float("nan")])
def test_non_positive_step_is_reinitialised(bad: float) -> None:
    q = QuantLinear(32, 8, recipe="int4")
    x = torch.randn(16, 32)
    q(x)
    with torch.no_grad():
        q.x_step.fill_(bad)  # as if the optimizer had pushed it through zero
        q.w_step.fill_(bad)
    x2 = 3 * torch.randn(16, 32)
    q(x2)
    assert float(q.x_step.detach()) == pytest.approx(
        float(lsq_init(block_transform(x2, int(q.hadamard_block)))), rel=1e-6
    )
    assert float(q.w_step.detach()) == pytest.approx(
        float(lsq_init(block_transform(q.weight, int(q.hadamard_block)))), rel=1e-6
    )
