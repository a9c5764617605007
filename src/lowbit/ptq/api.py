"""``lowbit.ptq.quantize(model, config, calibration)``: the one PTQ entry point, dispatching on config type.

Handlers are registered per config class with :func:`register_handler`, into the one registry of
``lowbit.convert`` (:mod:`lowbit.conversion`); an unknown config raises ``TypeError`` listing the known
ones. Quantization replaces the selected ``nn.Linear`` modules *in place* (deep-copy the model first to
keep the FP32 one) and returns a :class:`PTQSummary`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lowbit import conversion
from lowbit.conversion import ConversionSummary as Summary
from lowbit.formats import MXFormat
from lowbit.modules import swap_modules
from lowbit.ptq.base import LayerSpec, PTQLinear
from lowbit.ptq.calibrate import Calibration, observe_linears, select_linears
from lowbit.ptq.config import PTQConfig, WeightOnlyConfig
from lowbit.ptq.gptq import gram_matrix
from lowbit.ptq.modules import build_layer
from lowbit.ptq.sequential import SEQUENTIAL_ROUNDINGS, fake_quant_activation, sequential_gptq
from lowbit.ptq.weights import encode_weight

logger = logging.getLogger(__name__)

Handler = Callable[[nn.Module, object, Calibration | None], "PTQSummary"]


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator: make ``fn(model, config, calibration) -> PTQSummary`` the PTQ handler of ``config_type``,
    in the one registry of :func:`lowbit.convert` (which returns a :class:`~lowbit.ConversionSummary` whose
    ``details`` is the :class:`PTQSummary`; :func:`quantize` returns the latter)."""

    def deco(fn: Handler) -> Handler:
        def handler(model: nn.Module, config: object, calibration: Calibration | None = None) -> Summary:
            _check_model(model)
            linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            details = fn(model, config, calibration)
            summary = Summary(details.recipe, workflow="ptq", config=config, model=model, details=details)
            done = {r.name for r in details.layers}
            for name, linear in linears:
                summary.add(name, linear, None if name in done else _why_kept(name, config))
            return summary

        conversion.register(config_type, "ptq")(handler)
        return fn

    return deco


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, PTQLinear) for m in model.modules()):
        raise ValueError("model already holds quantized layers; quantize a fresh FP32 copy instead")


def _why_kept(name: str, config: object) -> str:
    exclude = getattr(config, "exclude", ())
    if any(name == p or fnmatch.fnmatchcase(name, p) for p in exclude):
        return "matches exclude (kept in FP32)"
    return "not selected by the config's modules (kept in FP32)"


@dataclass(frozen=True)
class LayerReport:
    """One quantized linear: name, compute path, FP32 and quantized weight bytes, static input scale."""

    name: str
    path: str
    fp32_bytes: int
    quant_bytes: int
    act_scale: float | None


@dataclass
class PTQSummary:
    """What :func:`quantize` did: recipe, layers quantized, linears left in FP32, bytes before and after."""

    recipe: str
    layers: list[LayerReport] = field(default_factory=list)
    kept_fp32: list[str] = field(default_factory=list)
    model_bytes_before: int = 0
    model_bytes_after: int = 0

    @property
    def weight_bytes_fp32(self) -> int:
        """FP32 bytes of the quantized layers' weights."""
        return sum(r.fp32_bytes for r in self.layers)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the quantized layers' weights now: codes + all scales."""
        return sum(r.quant_bytes for r in self.layers)

    @property
    def weight_ratio(self) -> float:
        return self.weight_bytes / max(self.weight_bytes_fp32, 1)

    def table(self) -> str:
        """A plain-text summary."""
        lines = [
            f"PTQ {self.recipe}: {len(self.layers)} linears quantized, {len(self.kept_fp32)} kept FP32 "
            f"({', '.join(self.kept_fp32) or '-'})",
            f"  quantized weights: {self.weight_bytes_fp32:,} B FP32 -> {self.weight_bytes:,} B "
            f"({self.weight_ratio:.4f}x, scales included)",
            f"  whole model state: {self.model_bytes_before:,} B -> {self.model_bytes_after:,} B "
            f"({self.model_bytes_after / max(self.model_bytes_before, 1):.4f}x; embeddings, LayerNorm, "
            "biases stay FP32)",
        ]
        if self.layers:
            lines.append(f"  compute: {self.layers[0].path}")
        return "\n".join(lines)

    def __str__(self) -> str:  # print(summary) shows the table; repr() keeps every field
        return self.table()


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (each storage counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def quantize(model: nn.Module, config: object, calibration: Calibration | None = None) -> PTQSummary:
    """Quantize ``model`` in place under ``config`` (:class:`PTQConfig` or :class:`WeightOnlyConfig`).

    ``calibration`` (from :func:`lowbit.ptq.calibrate`) is required when the config quantizes activations
    with static per-tensor scales. Returns a :class:`PTQSummary`. ``lowbit.convert(model, config,
    calibration)`` is the same conversion, returning the workflow-independent summary (this one in its
    ``details``).
    """
    if conversion.workflow_of(config) != "ptq":
        known = ", ".join(sorted(conversion.config_types("ptq")))
        raise TypeError(f"no PTQ handler for config of type {type(config).__name__}; known configs: {known}")
    return conversion.handler_for(config)(model, config, calibration).details


def _run(
    model: nn.Module,
    config: PTQConfig | WeightOnlyConfig,
    make: Callable[[str, nn.Linear], PTQLinear],
) -> PTQSummary:
    names = select_linears(model, config.modules, config.exclude)
    before = model_nbytes(model)
    summary = PTQSummary(config.describe(), model_bytes_before=before)
    chosen = set(names)
    summary.kept_fp32 = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in chosen]
    fp32_bytes = {name: model.get_submodule(name).weight.numel() * 4 for name in names}
    with torch.no_grad():  # every layer is built before the first swap: an error leaves the model untouched
        swapped = swap_modules(model, lambda name, _module: name in chosen, make)
    for name in swapped:
        qlayer = model.get_submodule(name)
        scale = float(qlayer.act_scale) if qlayer.act_scale is not None else None
        summary.layers.append(
            LayerReport(name, qlayer.compute_path(), fp32_bytes[name], qlayer.weight_nbytes(), scale)
        )
    summary.model_bytes_after = model_nbytes(model)
    logger.info("%s", summary.table())
    return summary


def _check_calibration(config: PTQConfig, calibration: Calibration | None) -> None:
    if config.needs_calibration and calibration is None:
        raise ValueError(
            f"{config.describe()} uses static activation scales, GPTQ rounding or bias correction: pass "
            "calibration=lowbit.ptq.calibrate(model, batches) "
            "(or use activation_granularity='token' for dynamic scales)"
        )
    needs_inputs = config.weight_rounding != "nearest" or config.bias_correction
    if needs_inputs and not calibration.inputs:
        raise ValueError("GPTQ rounding and bias correction rerun the calibration batches: this Calibration "
                         "holds none (build it with lowbit.ptq.calibrate)")  # fmt: skip


def _fp32_grams(model: nn.Module, names: list[str], batches: list) -> dict[str, torch.Tensor]:
    """Gram matrices of the FP32 model's inputs to each layer (plain GPTQ)."""
    grams: dict[str, torch.Tensor] = {}

    def add_gram(name: str, x2: torch.Tensor, _y2: torch.Tensor) -> None:
        g = gram_matrix(x2)
        grams[name] = grams[name] + g if name in grams else g

    observe_linears(model, names, batches, add_gram)
    return grams


def _layer_builder(
    config: PTQConfig, calibration: Calibration | None, grams: dict[str, torch.Tensor]
) -> Callable[..., PTQLinear]:
    """``make(name, linear, gram=None, target=None)``: the quantized layer of one linear under ``config``
    (rounding ``target`` instead of the weight, under ``gram`` instead of the FP32 one, when given)."""
    kind = config.kind
    if kind == "mx":
        layer_kind, act_gran = "emulated", "block"
    else:
        layer_kind, act_gran = kind, config.activation_granularity

    def make(
        name: str, linear: nn.Linear, gram: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> PTQLinear:
        spec = LayerSpec(
            kind=layer_kind,
            in_features=linear.in_features,
            out_features=linear.out_features,
            weight=config.weight.name,
            weight_granularity="block" if kind == "mx" else config.weight_granularity,
            activation=config.activation.name,
            activation_granularity=act_gran,
            fp8_compute=config.fp8_compute if kind == "fp8" else None,
            has_bias=linear.bias is not None,
            int8_kernel=config.int8_kernel if kind == "int8" else None,
        )
        buffers = encode_weight(
            linear.weight if target is None else target,
            config.weight_code_format,
            config.weight_granularity,
            None,
            config.weight_scale,
            gram=grams.get(name) if gram is None else gram,
            act_order=config.gptq_act_order,
        )
        act_scale = None
        if spec.static_activation:
            act_scale = calibration.scale(name, config.activation_code_format, config.observer)
        return build_layer(spec, buffers, linear.bias, act_scale)

    return make


def _sequential_layers(
    model: nn.Module, names: list[str], config: PTQConfig, calibration: Calibration, make: Callable
) -> dict[str, PTQLinear]:
    """The layers of the sequential GPTQ variants, each rounded on the inputs it gets from the layers
    quantized before it (:mod:`lowbit.ptq.sequential`)."""
    code_fmt = config.activation_code_format
    static = config.activation_granularity == "tensor"

    def act_quant(name: str, x: torch.Tensor) -> torch.Tensor:
        scale = calibration.scale(name, code_fmt, config.observer) if static else None
        return fake_quant_activation(x, code_fmt, scale)

    return sequential_gptq(
        model, names, calibration.inputs, act_quant, make, config.weight_rounding == "gptq-asym"
    )


@register_handler(PTQConfig)
def _quantize_static(model: nn.Module, config: PTQConfig, calibration: Calibration | None) -> PTQSummary:
    _check_calibration(config, calibration)
    names = select_linears(model, config.modules, config.exclude)
    grams = _fp32_grams(model, names, calibration.inputs) if config.weight_rounding == "gptq" else {}
    originals = {n: model.get_submodule(n) for n in names}
    make = _layer_builder(config, calibration, grams)
    if config.weight_rounding in SEQUENTIAL_ROUNDINGS:
        prebuilt = _sequential_layers(model, names, config, calibration, make)
        summary = _run(model, config, lambda name, _linear: prebuilt[name])
    else:
        summary = _run(model, config, make)
    if config.bias_correction:
        _correct_biases(model, originals, calibration.inputs)
    return summary


@torch.no_grad()
def _correct_biases(model: nn.Module, originals: dict[str, nn.Linear], batches: list) -> None:
    """Subtract from each quantized layer's bias its mean output error on its own (quantized-model) inputs
    over the calibration tokens: ``mean(q_layer(x) - x Wᵀ - b)``, all layers measured in one pass."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(originals, 0)

    def add_error(name: str, x2: torch.Tensor, y2: torch.Tensor) -> None:
        lin = originals[name]
        err = (y2.double() - F.linear(x2.double(), lin.weight.double(), None)).sum(0)
        if lin.bias is not None:
            err -= lin.bias.double() * x2.shape[0]
        sums[name] = sums[name] + err if name in sums else err
        counts[name] += x2.shape[0]

    observe_linears(model, list(originals), batches, add_error)
    for name in originals:
        layer = model.get_submodule(name)
        if counts[name] == 0:
            continue
        correction = (sums[name] / counts[name]).float()
        if layer.bias is None:
            layer.bias = -correction  # a layer without bias gains one (FP32, like every bias)
            layer.spec = dataclasses.replace(layer.spec, has_bias=True)
        else:
            layer.bias.sub_(correction)


@register_handler(WeightOnlyConfig)
def _quantize_weight_only(
    model: nn.Module, config: WeightOnlyConfig, calibration: Calibration | None
) -> PTQSummary:
    del calibration  # weight-only: nothing to calibrate
    mx = isinstance(config.weight, MXFormat)

    def make(
        name: str, linear: nn.Linear, gram: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> PTQLinear:
        spec = LayerSpec(
            kind="emulated",
            in_features=linear.in_features,
            out_features=linear.out_features,
            weight=config.weight.name,
            weight_granularity="block" if mx else config.weight_granularity,
            group_size=config.group_size,
            has_bias=linear.bias is not None,
        )
        buffers = encode_weight(
            linear.weight, config.weight, config.weight_granularity, config.group_size, config.weight_scale
        )
        return build_layer(spec, buffers, linear.bias)

    return _run(model, config, make)
