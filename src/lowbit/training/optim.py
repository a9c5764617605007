"""Optimizer parameter groups for models holding ``QuantLinear`` layers.

The LSQ step sizes (``x_step``/``w_step``) are not weights: they get no weight decay and their own learning
rate, ``lr × recipe.lsq_lr_scale``. Adam divides each gradient by its running RMS, which cancels LSQ's
gradient scale ``1/√(numel·7)``; at the model's learning rate a step size (one scalar for a whole tensor)
would move by up to ``lr`` per update, far more than the weights it quantizes relative to its size.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lowbit.training.layers import QuantLinear

STEP_NAMES = ("x_step", "w_step")


def step_size_parameters(model: nn.Module) -> dict[int, tuple[nn.Parameter, float]]:
    """``id(param) -> (param, lsq_lr_scale)`` for every LSQ step size of the ``QuantLinear`` layers."""
    found: dict[int, tuple[nn.Parameter, float]] = {}
    for module in model.modules():
        if isinstance(module, QuantLinear) and module.recipe.kind == "int4":
            for name in STEP_NAMES:
                p = getattr(module, name)
                found[id(p)] = (p, module.recipe.lsq_lr_scale)
    return found


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Groups for ``torch.optim.AdamW(groups, lr=lr)``: matrices (``dim >= 2``) with ``weight_decay``; biases,
    norm gains and other vectors without; LSQ step sizes without decay at ``lr × lsq_lr_scale`` (one group
    per distinct scale, left out when the model has none). Only parameters with ``requires_grad``."""
    steps = step_size_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in steps]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    by_scale: dict[float, list[nn.Parameter]] = {}
    for p, scale in steps.values():
        if p.requires_grad:
            by_scale.setdefault(scale, []).append(p)
    for scale, ps in by_scale.items():
        groups.append({"params": ps, "weight_decay": 0.0, "lr": lr * scale, "lsq_lr_scale": scale})
    return groups
