"""Which linears PTQ touches (:func:`select_linears`); calibration of their input scales."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.formats import Format
from lowbit.modules import capture
from lowbit.ptq.observers import HistogramObserver, ObserverSpec

logger = logging.getLogger(__name__)

DEFAULT_SCOPE = "encoder"  # default selection: every nn.Linear below a submodule named "encoder"


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]


def select_linears(
    model: nn.Module, modules: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> list[str]:
    """Qualified names of the ``nn.Linear`` modules to quantize, in model order.

    ``modules=None``: every ``nn.Linear`` with a path component named ``encoder`` (a BERT's Q/K/V, attention
    output, intermediate and output projections; the pooler and task heads stay FP32). Otherwise each entry
    is an exact name or an ``fnmatch`` pattern; an entry matching nothing, or naming a module that is not an
    ``nn.Linear``, raises ``ValueError``/``TypeError`` listing what exists. ``exclude`` patterns are removed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    all_modules = dict(model.named_modules())
    linears = _linear_names(model)
    if modules is None:
        chosen = [n for n in linears if DEFAULT_SCOPE in n.split(".")]
        if not chosen:
            raise ValueError(
                f"{type(model).__name__} has no nn.Linear under a submodule named {DEFAULT_SCOPE!r}; pass "
                f"modules= explicitly. Linear layers found: {linears[:20]}"
            )
    else:
        chosen_set: set[str] = set()
        for pattern in modules:
            if pattern in all_modules and not isinstance(all_modules[pattern], nn.Linear):
                raise TypeError(
                    f"module {pattern!r} is a {type(all_modules[pattern]).__name__}, not an nn.Linear; "
                    "PTQ quantizes linear layers only"
                )
            hits = [n for n in linears if n == pattern or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(
                    f"module {pattern!r} not found among the model's nn.Linear layers: {linears[:20]}"
                    + (" ..." if len(linears) > 20 else "")
                )
            chosen_set.update(hits)
        chosen = [n for n in linears if n in chosen_set]
    excluded = [n for n in chosen if any(n == p or fnmatch.fnmatchcase(n, p) for p in exclude)]
    return [n for n in chosen if n not in excluded]


@dataclass
class Calibration:
    """Observers of each calibrated linear's input, keyed by qualified module name."""

    spec: ObserverSpec
    observers: dict[str, HistogramObserver] = field(default_factory=dict)
    batches: int = 0
    inputs: list = field(default_factory=list, repr=False)  # the batches, for GPTQ and bias correction

    def scale(self, name: str, fmt: Format, rule: ObserverSpec | None = None) -> float:
        """Static activation step size of module ``name`` for ``fmt`` under ``rule`` (default: the rule
        given to :func:`calibrate`; any rule can be applied afterwards, the statistics are shared).
        """
        if name not in self.observers:
            raise KeyError(
                f"module {name!r} was not calibrated (calibrated: {sorted(self.observers)[:10]} ...); "
                "calibrate with the same module selection as the config"
            )
        return self.observers[name].scale(fmt, rule)


def run_batch(model: nn.Module, batch: object) -> None:
    """Run ``model`` on one calibration batch: a dict of keyword arguments, a tuple/list of positional ones or
    a tensor (shared by :func:`calibrate` and the sequential passes of :mod:`lowbit.ptq.sequential`)."""
    if isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, tuple | list):
        model(*batch)
    elif isinstance(batch, torch.Tensor):
        model(batch)
    else:
        raise TypeError(
            f"a calibration batch must be a dict of model keyword arguments, a tuple/list of positional "
            f"arguments or a tensor, got {type(batch).__name__}"
        )


def token_mask(batch: object) -> torch.Tensor | None:
    """The batch's ``attention_mask`` flattened to a bool vector (True = real token), or None without one."""
    m = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return m.reshape(-1).bool() if isinstance(m, torch.Tensor) else None


def real_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` as a 2-D row matrix without the padding rows (when ``mask`` matches its rows; else all rows)."""
    x2 = x.reshape(-1, x.shape[-1])
    if mask is not None and mask.numel() == x2.shape[0]:
        x2 = x2[mask]
    return x2


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[object],
    observer: object = "max",
    modules: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> Calibration:
    """Run ``batches`` through ``model`` (eval mode, no grad) and observe the input of each selected linear.

    Only real tokens are observed: when a batch is a dict holding an ``attention_mask`` whose size matches
    the rows of a linear's input, the padding positions are dropped (padding must not set the scales).

    observer: ``"max"`` (the FP8-BERT rule), ``"percentile"`` / ``("percentile", p)``, ``"mse"`` or an
    :class:`ObserverSpec`. A batch is a dict of keyword arguments (e.g. a tokenizer's output), a tuple of
    positional arguments or one tensor. The model is not modified; pass the returned :class:`Calibration` to
    :func:`lowbit.ptq.quantize` with a config selecting the same (or fewer) modules.
    """
    spec = ObserverSpec.parse(observer)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(
            f"model is on the meta device ({len(meta)} parameters, e.g. {meta[0]!r}: shapes only), so there "
            "are no activations to observe; load the weights first (model.to_empty(device='cpu'), then "
            "load_state_dict)"
        )
    names = select_linears(model, modules, exclude)
    module_of = dict(model.named_modules())
    calib = Calibration(spec, {n: HistogramObserver(spec) for n in names})
    mask: list[torch.Tensor | None] = [None]

    def observe(name: str, x: torch.Tensor) -> None:
        calib.observers[name].update(real_rows(x, mask[0]))

    was_training = model.training
    model.eval()
    try:
        with capture([(n, module_of[n]) for n in names], observe):
            for batch in batches:
                mask[0] = token_mask(batch)
                run_batch(model, batch)
                calib.batches += 1
                calib.inputs.append(batch)
    finally:
        model.train(was_training)
    if calib.batches == 0:
        raise ValueError("calibrate got no batches; pass at least one batch of model inputs")
    logger.info("calibrated %d linear inputs over %d batches (%s observer)", len(names), calib.batches, spec)
    return calib


@torch.no_grad()
def observe_linears(
    model: nn.Module,
    names: Iterable[str],
    batches: Iterable[object],
    fn: Callable[[str, torch.Tensor, torch.Tensor], None],
) -> None:
    """Run ``batches`` through ``model`` (eval, no grad) and call ``fn(name, x, y)`` for each named module
    with its input and output as 2-D row matrices. When a batch is a dict holding an ``attention_mask``
    whose size matches the rows, padding positions are dropped first.
    """
    module_of = dict(model.named_modules())
    mask: list[torch.Tensor | None] = [None]

    def seen(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        fn(name, real_rows(x, mask[0]), real_rows(y, mask[0]))

    was_training = model.training
    model.eval()
    try:
        with capture([(n, module_of[n]) for n in names], seen, what="both"):
            for batch in batches:
                mask[0] = token_mask(batch)
                run_batch(model, batch)
    finally:
        model.train(was_training)
