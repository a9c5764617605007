"""What stops a run: the ``TrainingDiverged`` signal, and where a diverged model first met a non-finite value.

Telling a divergence (e.g. a quantized layer refusing NaN activations) from a bug lets the runner stop every
recipe alike with a warning while a real exception keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class TrainingDiverged(Exception):
    """Training blew up (non-finite loss, or non-finite values reaching a layer): the run stops there."""


def nonfinite_site(model: nn.Module, forward: Callable[[], Any]) -> str | None:
    """Where a diverged model first meets a non-finite value: a parameter or gradient, or a module whose
    floating input is not finite while ``forward()`` runs (which may raise); None when everything is finite.
    Tells a divergence (e.g. a quantized layer refusing NaN activations) from a bug."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"parameter {name}"
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return f"gradient of {name}"
    found: list[str] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if not found and any(
            isinstance(a, torch.Tensor) and a.is_floating_point() and not bool(torch.isfinite(a).all())
            for a in args
        ):
            found.append(f"the input of {names.get(module, type(module).__name__)}")

    names = {m: n or "the model" for n, m in model.named_modules()}
    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            forward()
    except Exception:  # the forward that failed before fails again; the hooks have seen its inputs
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None
