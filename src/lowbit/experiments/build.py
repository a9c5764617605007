"""What a run is built with: its recipe (checked, resolved, applied), AdamW with warmup + cosine, and the
module generators a checkpoint saves."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from lowbit.experiments.config import TrainConfig, derive_seed
from lowbit.experiments.tasks.base import Task

REFERENCE_RECIPE = "fp32"


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then cosine decay to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases or norms); LSQ step sizes without decay in groups
    of their own, whose relative learning rate ``train_step`` sets (``lowbit.training.optim``)."""
    from lowbit.training.optim import param_groups

    groups = param_groups(model, config.lr, config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` a submodule holds as an attribute (e.g. a quantizer's stochastic rounding),
    keyed ``"module.path:attribute"``, so checkpoints can save and restore their states."""
    found: dict[str, torch.Generator] = {}
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{module_name}:{attr}"] = value
    return found


def resolve_recipe(config: TrainConfig, task: Task | None = None) -> Any:
    """The recipe a run converts with: ``config.recipe`` (a name), with ``config.lsq_init`` and
    ``config.lsq_lr`` applied when given and the recipe has LSQ steps (kind "int4"; others ignore them); a
    recipe that leaves its step initialisation open (``lsq_init`` None) gets ``task.lsq_init`` ("paper" when
    no task is given)."""
    from lowbit.training.recipes import get_recipe

    recipe = get_recipe(config.recipe)
    if recipe.kind != "int4":
        return recipe
    changes = {k: getattr(config, k) for k in ("lsq_init", "lsq_lr") if getattr(config, k) is not None}
    if recipe.lsq_init is None and "lsq_init" not in changes:
        changes["lsq_init"] = task.lsq_init if task is not None else "paper"
    return dataclasses.replace(recipe, **changes)


def apply_recipe(model: nn.Module, recipe: Any, seed: int, skip: tuple[str, ...] = ()) -> Any:
    """Convert ``model`` in place with ``lowbit.convert`` (head kept in FP32 by its default); its summary.

    ``fp32`` is the reference: the plain torch model, left as built. The converted layers' own generators
    (stochastic rounding, row sampling) are seeded by ``convert`` from the run's ``"quant"`` seed stream and
    each layer's name, independently of init and data order.
    """
    if recipe == REFERENCE_RECIPE or getattr(recipe, "name", None) == REFERENCE_RECIPE:
        return "fp32 reference: model left unconverted"
    import lowbit

    return lowbit.convert(model, recipe, skip=skip, seed=derive_seed(seed, "quant"))


def check_recipe(recipe: str) -> None:
    """ValueError naming the known recipes when ``recipe`` is not one (before any data is loaded)."""
    if recipe == REFERENCE_RECIPE:
        return
    from lowbit.training.recipes import get_recipe

    get_recipe(recipe)


def recipe_settings(recipe: Any) -> Any:
    """What metrics.json records of the recipe: its name, and for kind int4 the LSQ settings it ran with."""
    if isinstance(recipe, str):
        return {"name": recipe}
    out = {"name": recipe.name, "kind": recipe.kind}
    if recipe.kind == "int4":
        out.update(lsq_init=recipe.lsq_init, lsq_lr=recipe.lsq_lr, hadamard_block=recipe.hadamard_block)
    return out
