"""Optimizer parameter groups for models holding ``QuantLinear`` layers.

The LSQ step sizes (``x_step``/``w_step``) are not weights: they get no weight decay and a *relative*
learning rate. Adam divides each gradient by its running RMS, which cancels LSQ's gradient scale
``1/√(numel·7)``: an Adam update moves a parameter by up to its learning rate whatever its size. At the
model's rate a step size (one scalar for a whole tensor, often ~0.01) is pushed through zero (lr 3e-3,
training from scratch) or never moves at all (lr 5e-5, fine-tuning). So each step size gets its own group
whose learning rate is ``recipe.lsq_lr × |s|`` (× the model's schedule factor): every update changes a step
by at most about ``lsq_lr`` of itself, independently of the model's learning rate (the released code also
gives the step sizes a learning rate of their own, ``--clip_lr``).

Use: ``opt = AdamW(param_groups(model, lr, wd), lr=lr)`` and ``sync_step_lrs(opt, factor)`` before every
``opt.step()`` (``factor``: the schedule's multiplier of the base learning rate at this step). Without the
sync the step groups keep learning rate 0 (the step sizes stay at their initialisation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lowbit.training.layers import QuantLinear

STEP_NAMES = ("x_step", "w_step")
#: The key marking a step-size group; its value is the relative rate ``lsq_lr``.
LSQ_LR_KEY = "lsq_lr"


def step_size_parameters(model: nn.Module) -> dict[int, tuple[nn.Parameter, float]]:
    """``id(param) -> (param, lsq_lr)`` for every LSQ step size of the ``QuantLinear`` layers."""
    found: dict[int, tuple[nn.Parameter, float]] = {}
    for module in model.modules():
        if isinstance(module, QuantLinear) and module.recipe.kind == "int4":
            for name in STEP_NAMES:
                p = getattr(module, name)
                found[id(p)] = (p, module.recipe.lsq_lr)
    return found


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Groups for ``torch.optim.AdamW(groups, lr=lr)``: matrices (``dim >= 2``) with ``weight_decay``; biases,
    norm gains and other vectors without; then one group per LSQ step size, without decay, learning rate 0
    until :func:`sync_step_lrs` sets it. Only parameters with ``requires_grad``."""
    steps = step_size_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in steps]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    for p, rate in steps.values():
        if p.requires_grad:
            groups.append({"params": [p], "weight_decay": 0.0, "lr": 0.0, LSQ_LR_KEY: rate})
    return groups


def sync_step_lrs(optimizer: torch.optim.Optimizer, factor: float = 1.0) -> None:
    """Set every step-size group's learning rate to ``lsq_lr × |s| × factor`` (0 for an unset or non-finite
    step). Call before each ``optimizer.step()``."""
    for group in optimizer.param_groups:
        if LSQ_LR_KEY in group:
            s = abs(float(group["params"][0].detach()))
            group["lr"] = group[LSQ_LR_KEY] * s * factor if math.isfinite(s) else 0.0
