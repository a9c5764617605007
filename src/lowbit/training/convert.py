"""``convert(model, recipe, skip=...)``: replace a model's ``nn.Linear`` layers by ``QuantLinear`` in place.

The training workflow's handler of ``lowbit.convert(model, recipe)`` (a :class:`Recipe` or a registered
recipe name); ``lowbit.training.convert`` is the same function with the recipe's options as parameters.

Which layers stay in full precision (the paper keeps the final classifier in floating point):

1. every Linear whose qualified name matches one of ``skip`` (exact names or ``fnmatch`` globs, e.g.
   ``"encoder.layer.0.*"``);
2. with ``keep_head=True`` (default), every Linear whose name has a component in :data:`HEAD_NAMES`
   (``lm_head``, ``classifier``, ``head``, ``cls``, ``score``, ``qa_outputs``, ...), e.g. ``lm_head`` or
   ``classifier.out_proj``; if no Linear is named so, the *last* Linear in registration order
   (``model.named_modules()``) is taken as the head — the output layer of an ``nn.Sequential``, the pooler
   of a bare ``BertModel``.

Only exact ``torch.nn.Linear`` instances are converted (not subclasses, not GPT-2's ``Conv1D``). The
``fp32`` recipe converts nothing. Each converted layer's generator is seeded from ``seed`` and its name.
"""

from __future__ import annotations

import fnmatch
import zlib
from collections.abc import Iterable

import torch
from torch import nn

from lowbit.conversion import ConversionSummary, register
from lowbit.modules import swap_modules
from lowbit.training.layers import _LAZY_KEYS, QuantLinear
from lowbit.training.recipes import Recipe, get_recipe

HEAD_NAMES = frozenset(
    {"lm_head", "classifier", "head", "heads", "cls", "score", "qa_outputs", "output_head"}
)


def _layer_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _head_names(linears: list[str]) -> set[str]:
    named = {n for n in linears if HEAD_NAMES.intersection(n.split("."))}
    if named or not linears:
        return named
    return {linears[-1]}


def _check_model(model: nn.Module, rec: Recipe) -> None:
    if type(model) is nn.Linear:
        raise ValueError("model is a bare nn.Linear: use QuantLinear.from_linear(model, recipe) instead")
    done = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if done:
        name, layer = done[0]
        raise ValueError(
            f"model is already converted: {len(done)} QuantLinear layers (e.g. {name or 'model'!r}, recipe "
            f"{layer.recipe.name!r}); convert starts from nn.Linear layers. To switch to {rec.name!r}, load "
            "the weights into a fresh FP32 model (lowbit.training.fp32_state_dict(model.state_dict())) and "
            "convert that"
        )


def convert(
    model: nn.Module,
    recipe: str | Recipe,
    skip: Iterable[str] = (),
    *,
    keep_head: bool = True,
    seed: int = 0,
) -> ConversionSummary:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a ``QuantLinear`` running ``recipe``.

    The new layers share the old weight/bias Parameters. Returns a :class:`~lowbit.ConversionSummary`
    (``lowbit.convert(model, recipe, skip=..., keep_head=..., seed=...)`` is the same call). Raises
    ``TypeError`` for a model that is not an ``nn.Module`` and ``ValueError`` for an unknown recipe name,
    a model that is a bare ``nn.Linear`` (it cannot be replaced in place; wrap it or use ``QuantLinear``) or
    a model that already holds ``QuantLinear`` layers (no re-conversion: convert a fresh FP32 model, loaded
    with :func:`fp32_state_dict`). A model on the meta device converts too (its layers run on meta inputs).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rec = get_recipe(recipe)
    _check_model(model, rec)
    patterns = [skip] if isinstance(skip, str) else list(skip)
    summary = ConversionSummary(rec.name, workflow="training", config=rec, model=model)
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    heads = _head_names([n for n, _ in linears]) if keep_head else set()
    for name, lin in linears:
        reason = None
        if any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns):
            reason = "matches skip"
        elif name in heads:
            reason = "output head (kept in full precision)"
        elif not rec.converts:
            reason = "fp32 recipe"
        summary.add(name, lin, kept=reason)
    chosen = set(summary.converted)
    swap_modules(
        model,
        lambda name, _module: name in chosen,
        lambda name, lin: QuantLinear.from_linear(lin, rec, seed=_layer_seed(seed, name)),
    )
    return summary


@register(str, "training", label="str (a recipe name)")
@register(Recipe, "training")  # decorators apply bottom-up: Recipe is listed first
def _convert(
    model: nn.Module,
    config: str | Recipe,
    calibration: object = None,
    *,
    skip: Iterable[str] = (),
    keep_head: bool = True,
    seed: int = 0,
) -> ConversionSummary:
    """``lowbit.convert``'s handler of training recipes: :func:`convert` (nothing to calibrate)."""
    if calibration is not None:
        raise TypeError(
            "a training recipe takes no calibration; its options are keywords: "
            "lowbit.convert(model, recipe, skip=[...], keep_head=..., seed=...)"
        )
    return convert(model, config, skip, keep_head=keep_head, seed=seed)


def fp32_state_dict(state: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A converted model's state dict (or the model) without the INT4 quantizer state (``x_step``,
    ``w_step``, ``hadamard_block``, ``steps_done`` of each :class:`QuantLinear`): it loads strictly into the
    plain FP32 model (and, since those keys are rebuilt lazily, into a converted one too)."""
    if isinstance(state, nn.Module):
        drop = {
            f"{n}.{k}" if n else k
            for n, m in state.named_modules()
            if isinstance(m, QuantLinear)
            for k in _LAZY_KEYS
        }
        return {k: v for k, v in state.state_dict().items() if k not in drop}
    if not isinstance(state, dict):
        raise TypeError(f"state must be an nn.Module or a state dict, got {type(state).__name__}")
    return {k: v for k, v in state.items() if k.rpartition(".")[2] not in _LAZY_KEYS}
