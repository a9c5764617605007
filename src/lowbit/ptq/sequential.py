"""Sequential GPTQ: each layer rounded on the inputs it receives once every earlier layer is quantized.

Plain GPTQ (:mod:`lowbit.ptq.gptq`) takes every layer's Gram matrix from the FP32 model, so each layer is
rounded as if its inputs were exact. Here the layers are quantized in model order: a working copy of the
model holds the layers quantized so far, and the next layer's statistics come from running the calibration
batches through both models side by side — ``X`` (FP32 model's input to the layer) and ``X̂`` (the working
copy's input, passed through the layer's own activation quantizer, i.e. exactly what its GEMM multiplies).

* ``"gptq-seq"``: GPTQ of ``W`` under ``H = X̂ᵀX̂`` (minimises ``||X̂ (W − Ŵ)ᵀ||²``);
* ``"gptq-asym"``: GPTQ of ``W* = W Cᵀ H⁻¹`` (``C = X̂ᵀX``) under ``H``, which minimises the asymmetric
  ``||X Wᵀ − X̂ Ŵᵀ||²``: the rounding pulls the layer output toward the FP32 model's, absorbing the part of
  the upstream (and own-activation) error that a linear map of ``X̂`` can undo. Scales are taken from ``W*``.

Layers that read the same input tensor (a BERT's query/key/value) form one step: one pair of forward passes
per step, each stopped as soon as the step's input has been seen. Padding tokens are skipped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from lowbit.formats import Format
from lowbit.modules import StopForward, capture, replace_module
from lowbit.ptq.base import PTQLinear
from lowbit.ptq.calibrate import real_rows, run_batch, token_mask
from lowbit.ptq.gptq import asymmetric_target
from lowbit.quantizers import quantize

SEQUENTIAL_ROUNDINGS = ("gptq-seq", "gptq-asym")

ActQuant = Callable[[str, torch.Tensor], torch.Tensor]
Build = Callable[[str, nn.Linear, torch.Tensor, torch.Tensor], PTQLinear]


def fake_quant_activation(x: torch.Tensor, fmt: Format, scale: float | None) -> torch.Tensor:
    """What a quantized layer's GEMM sees of input rows ``x``: rounded to ``fmt`` with the static ``scale``
    (saturating), or with a dynamic per-row absmax scale when ``scale`` is None; float32 values."""
    if scale is None:
        return quantize(x.float(), fmt, "row").dequantize()
    return quantize(x.float(), fmt, scale=float(scale)).dequantize()


def input_groups(model: nn.Module, names: list[str], batch: object) -> list[list[str]]:
    """``names`` in call order, split into runs of consecutive layers that read the same input tensor."""
    module_of = dict(model.named_modules())
    with torch.no_grad(), capture([(n, module_of[n]) for n in names], record=True) as calls:
        run_batch(model.eval(), batch)
    seen = calls.calls  # (name, input): the tensors themselves, kept alive, compared by identity
    groups: list[list[str]] = []
    last: torch.Tensor | None = None
    for name, x in seen:
        if any(name in g for g in groups):
            continue  # a layer called twice keeps its first place
        if groups and x is last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = x
    missing = [n for n in names if not any(n in g for g in groups)]
    if missing:
        raise ValueError(f"layers never called on the calibration batch: {missing[:5]}; check the selection")
    return groups


def _capture(model: nn.Module, name: str, batch: object) -> torch.Tensor:
    """Input rows (real tokens) of module ``name`` on ``batch``; the forward stops right there."""
    out: list[torch.Tensor] = []
    mask = token_mask(batch)

    def first(_name: str, x: torch.Tensor) -> None:
        out.append(real_rows(x, mask).float().clone())
        raise StopForward

    with capture({name: model.get_submodule(name)}, first):
        run_batch(model, batch)
    if not out:
        raise ValueError(f"module {name!r} was not called by the model's forward")
    return out[0]


@torch.no_grad()
def sequential_gptq(
    model: nn.Module,
    names: list[str],
    batches: list,
    act_quant: ActQuant,
    build: Build,
    asymmetric: bool,
) -> dict[str, PTQLinear]:
    """Quantize ``names`` of a copy of ``model`` one input group at a time (see module doc); returns the
    quantized layers. ``act_quant(name, x)``: the layer's activation rounding; ``build(name, linear, gram,
    target)``: the quantized layer rounding ``target`` with GPTQ under ``gram``. ``model`` is not modified.
    """
    if not batches:
        raise ValueError("sequential GPTQ needs the calibration batches (Calibration.inputs is empty)")
    was_training = model.training
    model.eval()
    work = copy.deepcopy(model)
    built: dict[str, PTQLinear] = {}
    try:
        for group in input_groups(model, names, batches[0]):
            first = group[0]
            grams: dict[str, torch.Tensor] = {}
            crosses: dict[str, torch.Tensor] = {}
            for batch in batches:
                x = _capture(model, first, batch).double() if asymmetric else None  # FP32 inputs: asym only
                x_hat_raw = _capture(work, first, batch)
                for name in group:
                    x_hat = act_quant(name, x_hat_raw).double()
                    g = x_hat.t() @ x_hat
                    grams[name] = grams[name] + g if name in grams else g
                    if asymmetric:
                        c = x_hat.t() @ x
                        crosses[name] = crosses[name] + c if name in crosses else c
            for name in group:
                linear = model.get_submodule(name)
                target = linear.weight.detach().float()
                if asymmetric:
                    target = asymmetric_target(target, grams[name], crosses[name])
                built[name] = build(name, linear, grams[name], target)
                replace_module(work, name, built[name])
    finally:
        model.train(was_training)
    del work
    return built
