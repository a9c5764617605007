"""What every PTQ layer is: :class:`LayerSpec` (everything but the tensors) and :class:`PTQLinear`, the base
of the quantized linears that replace ``nn.Linear`` after PTQ (the kinds are in :mod:`lowbit.ptq.modules`).

``PTQLinear`` is PTQ's layer; ``lowbit.training.QuantLinear`` is the training one (an ``nn.Linear`` whose
three products are quantized). A PTQ layer keeps only its low-precision buffers (no FP32 weight), no
Parameters, and a spec from which :mod:`lowbit.ptq.serialization` rebuilds it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lowbit.formats import Format, get_format
from lowbit.ops import native_bf16, native_gemm
from lowbit.ptq.config import INT8_KERNELS
from lowbit.ptq.weights import decode_weight, nbytes

#: The kinds of PTQ layer (``LayerSpec.kind``): one class each in :data:`lowbit.ptq.modules.LAYER_CLASSES`.
LAYER_KINDS = ("int8", "fp8", "emulated")


@dataclass(frozen=True)
class LayerSpec:
    """Everything but the tensors of a quantized linear: kind, shape, formats, granularities, compute path."""

    kind: str
    in_features: int
    out_features: int
    weight: str
    weight_granularity: str
    group_size: int | None = None
    activation: str | None = None  # None: FP32 activations (weight-only)
    activation_granularity: str | None = None  # "tensor" (static), "token" (dynamic), "block" (MX)
    fp8_compute: str | None = None
    has_bias: bool = True
    int8_kernel: str | None = None  # INT8 layers: INT8_KERNELS; None (files before it existed) = "exact"

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer kind must be one of {LAYER_KINDS}, got {self.kind!r}")
        if self.int8_kernel is not None and (self.kind != "int8" or self.int8_kernel not in INT8_KERNELS):
            raise ValueError(
                f"int8_kernel must be None or one of {INT8_KERNELS} on an int8 layer, got "
                f"{self.int8_kernel!r} on a {self.kind} layer"
            )
        get_format(self.weight)
        if self.activation is not None:
            get_format(self.activation)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LayerSpec:
        return cls(**json.loads(text))

    @property
    def static_activation(self) -> bool:
        """True when the activation scale is a calibrated constant stored with the layer."""
        return self.activation is not None and self.activation_granularity == "tensor"


class PTQLinear(nn.Module):
    """Base of the quantized linears: holds the spec, the weight buffers, bias and the static input scale."""

    def __init__(
        self,
        spec: LayerSpec,
        weight_buffers: dict[str, torch.Tensor],
        bias: torch.Tensor | None,
        act_scale: float | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.in_features = spec.in_features
        self.out_features = spec.out_features
        self.weight_format: Format = get_format(spec.weight)
        self.act_format: Format | None = get_format(spec.activation) if spec.activation else None
        self._weight_names = tuple(sorted(weight_buffers))
        for name, t in weight_buffers.items():
            self.register_buffer(name, t)
        if (bias is not None) != spec.has_bias:
            raise ValueError(
                f"spec.has_bias={spec.has_bias} but bias is {'given' if bias is not None else 'None'}"
            )
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        if spec.static_activation:
            if act_scale is None:
                raise ValueError("a static activation format needs act_scale (run lowbit.ptq.calibrate)")
            scale_t = torch.as_tensor(act_scale, dtype=torch.float32).reshape(())
            if not bool(torch.isfinite(scale_t)) or float(scale_t) <= 0:
                raise ValueError(f"act_scale must be positive and finite, got {float(scale_t)}")
            self.register_buffer("act_scale", scale_t.clone())
        else:
            self.act_scale = None

    def weight_buffers(self) -> dict[str, torch.Tensor]:
        """The low-precision weight buffers (codes and scales)."""
        return {n: getattr(self, n) for n in self._weight_names}

    def bf16_weight(self, values: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The weight's ``values()`` (float32 (N, K), bf16-exact) as bf16 panels for ``vdpbf16ps``, cached and
        rebuilt when a weight buffer changes (keyed on the buffers' storage and version)."""
        key = tuple((t.data_ptr(), t._version) for t in self.weight_buffers().values())
        if getattr(self, "_bf16_key", None) != key:
            self._bf16_packed = native_bf16.pack_bf16(values(), native_gemm.NR)
            self._bf16_key = key
        return self._bf16_packed

    def weight_nbytes(self) -> int:
        """Bytes of weight codes + weight scales + the static activation scale (bias not included)."""
        extra = 4 if self.act_scale is not None else 0
        return nbytes(self.weight_buffers()) + extra

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 (out, in) weight these codes represent."""
        return decode_weight(self.weight_buffers(), self.weight_format, (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input with last dim {self.in_features}, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features).float()  # (M, K)
        y = self._linear(x2)  # (M, N) float32
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _linear(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_path(self) -> str:
        """Which arithmetic runs the product (for summaries)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        act = f"{self.spec.activation}/{self.spec.activation_granularity}" if self.spec.activation else "fp32"
        return (
            f"in={self.in_features}, out={self.out_features}, W {self.spec.weight}/"
            f"{self.spec.weight_granularity}, A {act}, {self.compute_path()}"
        )
