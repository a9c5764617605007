"""``lowbit.convert(model, config, calibration=None)``: one verb for every workflow, chosen by the config.

* a training ``Recipe`` or a recipe name (workflow "training"): every ``nn.Linear`` but the output head
  becomes a ``training.QuantLinear``, in place; options ``skip=``, ``keep_head=``, ``seed=``.
* ``ptq.PTQConfig`` / ``ptq.WeightOnlyConfig`` ("ptq"): the selected ``nn.Linear`` layers become PTQ
  layers, in place; ``calibration=lowbit.ptq.calibrate(model, batches)`` where the config needs it.
* ``integer.IntegerConfig`` ("integer"): a new integer-only graph (``IntegerGPT`` for lowbit's Integer-
  Transformer GPT, ``IntegerBert`` for a Hugging Face ``BertModel``); ``calibration=`` the FP32 batches.

Every call returns a :class:`ConversionSummary`. The registry maps config types to handlers: each workflow
registers its own with :func:`register` when its package is imported, and :func:`convert` imports the
workflow packages on first need, so ``import lowbit`` stays light. This module imports nothing else of
lowbit at import time (both workflows import it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

#: The packages that register handlers (imported by :func:`convert` when a config type is not known yet).
WORKFLOW_PACKAGES = ("lowbit.training", "lowbit.ptq", "lowbit.integer")


@dataclass
class ConversionSummary:
    """What :func:`convert` did, whatever the workflow.

    Attributes:
        recipe: the config in one line: the training recipe's name, PTQ's ``config.describe()``,
            ``"integer act_qmax=127 weight_qmax=127"``.
        converted: qualified names of the ``nn.Linear`` layers converted, in model order.
        kept: the ``nn.Linear`` layers not converted, name → why (output head, ``skip`` pattern, not selected
            by a PTQ config, not part of the integer graph, ``fp32`` recipe).
        converted_params / kept_params: parameters (weights + biases) of those two sets of layers.
        workflow: ``"training"``, ``"ptq"`` or ``"integer"``.
        config: the config as the workflow resolved it (a recipe name becomes its :class:`Recipe`).
        model: the converted model — ``model`` itself for training and PTQ (converted in place), a new
            module for integer-only inference (``IntegerGPT`` / ``IntegerBert``), which is built from the
            FP32 model and leaves it as it was.
        details: the workflow's own report, if it has one: PTQ's :class:`~lowbit.ptq.PTQSummary` (bytes
            before and after, each layer's compute path and static scale); None otherwise.
    """

    recipe: str
    converted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    converted_params: int = 0
    kept_params: int = 0
    workflow: str = ""
    config: object = field(default=None, repr=False)
    model: object = field(default=None, repr=False, compare=False)
    details: object = field(default=None, repr=False, compare=False)

    def add(self, name: str, module: nn.Module, kept: str | None = None) -> None:
        """Count the linear ``name`` as converted, or as kept for the reason ``kept``."""
        n_params = sum(p.numel() for p in module.parameters())
        if kept is None:
            self.converted.append(name)
            self.converted_params += n_params
        else:
            self.kept[name] = kept
            self.kept_params += n_params

    def __str__(self) -> str:
        total = self.converted_params + self.kept_params
        share = 100.0 * self.converted_params / total if total else 0.0
        lines = [
            f"recipe {self.recipe}: {len(self.converted)} Linear layers converted "
            f"({self.converted_params:,} parameters, {share:.1f}% of Linear parameters), "
            f"{len(self.kept)} kept in full precision ({self.kept_params:,} parameters)"
        ]
        lines += [f"  kept {name}: {why}" for name, why in self.kept.items()]
        if self.details is not None:
            lines.append(str(self.details))
        return "\n".join(lines)


Handler = Callable[..., ConversionSummary]


@dataclass(frozen=True)
class _Entry:
    workflow: str
    handler: Handler
    label: str


_REGISTRY: dict[type, _Entry] = {}


def register(config_type: type, workflow: str, label: str | None = None) -> Callable[[Handler], Handler]:
    """Decorator: make ``fn(model, config, calibration, **options) -> ConversionSummary`` the handler of
    ``config_type`` (exactly that type, not its subclasses) in ``workflow``; ``label`` names the type in error
    messages (default: its name)."""

    def deco(fn: Handler) -> Handler:
        _REGISTRY[config_type] = _Entry(workflow, fn, label or config_type.__name__)
        return fn

    return deco


def config_types(workflow: str | None = None) -> list[str]:
    """The labels of the registered config types (of one ``workflow``, or all), in registration order."""
    return [e.label for e in _REGISTRY.values() if workflow is None or e.workflow == workflow]


def workflow_of(config: object) -> str | None:
    """The workflow registered for ``config``'s type, or None (no workflow package is imported here)."""
    entry = _lookup(config)
    return entry.workflow if entry is not None else None


def _lookup(config: object) -> _Entry | None:
    return _REGISTRY.get(type(config))  # the exact type, as ptq.quantize always dispatched


def handler_for(config: object) -> Handler:
    """The handler of ``config``'s type (workflow packages imported first if needed); ``TypeError`` naming
    the accepted config types otherwise."""
    entry = _lookup(config)
    if entry is None:
        for package in WORKFLOW_PACKAGES:
            importlib.import_module(package)
        entry = _lookup(config)
    if entry is None:
        order = [p.rpartition(".")[2] for p in WORKFLOW_PACKAGES]  # training, ptq, integer; then any other
        workflows = order + sorted({e.workflow for e in _REGISTRY.values()} - set(order))
        accepted = "; ".join(f"{w}: {', '.join(config_types(w))}" for w in workflows if config_types(w))
        raise TypeError(
            f"lowbit.convert takes a config of one of these types ({accepted}), got {type(config).__name__}"
        )
    return entry.handler


def convert(
    model: nn.Module, config: object, calibration: object = None, **options: object
) -> ConversionSummary:
    """Convert ``model`` under ``config``: the workflow is the config's type (see the module doc).

    ``calibration``: what the workflow calibrates on — a :class:`lowbit.ptq.Calibration` for PTQ configs
    with static activation scales, GPTQ or bias correction; the FP32 batches (token-id tensors for the GPT,
    tokenizer outputs for a ``BertModel``) for :class:`~lowbit.integer.IntegerConfig`; nothing for training
    recipes. ``options``: the workflow's keywords (training: ``skip``, ``keep_head``, ``seed``). Returns a
    :class:`ConversionSummary`; ``TypeError`` names the accepted config types for any other config.
    """
    return handler_for(config)(model, config, calibration, **options)
