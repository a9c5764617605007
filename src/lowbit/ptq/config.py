"""PTQ recipes: frozen dataclasses naming the weight and activation formats, granularities and compute path.

Two recipe types, each handled by its own function in :mod:`lowbit.ptq.api` (``quantize`` dispatches on the
config's type):

* :class:`PTQConfig` — weights *and* activations of the selected linears quantized (the FP8-BERT recipe and
  its INT8 baseline). Activations use a static per-tensor scale from :func:`lowbit.ptq.calibrate`, or a
  dynamic per-token scale (``activation_granularity="token"``); MX activations always use their own
  dynamic per-block scale.
* :class:`WeightOnlyConfig` — weights quantized (e.g. INT4 packed, MXFP4), activations stay FP32.

Which modules are quantized is explicit: ``modules=None`` means every ``nn.Linear`` under a submodule named
``encoder``; embeddings, LayerNorm, softmax, GELU, the pooler and any task head stay FP32. Otherwise
``modules`` lists qualified names or ``fnmatch`` patterns (``"encoder.layer.*.attention.self.query"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.formats import FloatFormat, Format, IntFormat, MXFormat, get_format
from lowbit.ptq.observers import ObserverSpec

WEIGHT_GRANULARITIES = ("tensor", "channel", "group")
ACTIVATION_GRANULARITIES = ("tensor", "token")
WEIGHT_SCALE_RULES = ("absmax", "mse")
FP8_COMPUTE = ("emulated", "scaled_mm")
# The formats each recipe accepts (by kind); anything else raises ValueError naming the recipe to use.
_FP8_NAMES = ("fp8-e4m3", "fp8-e5m2")


def _parse_format(role: str, name: str | Format) -> Format:
    try:
        return get_format(name)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{role} format: {err}") from err


def _is_fp8(fmt: Format) -> bool:
    return isinstance(fmt, FloatFormat) and fmt.torch_dtype is not None


def _is_int8(fmt: Format) -> bool:
    return isinstance(fmt, IntFormat) and fmt.bits == 8 and fmt.signed


def _check_common(cfg: PTQConfig | WeightOnlyConfig) -> None:
    if cfg.weight_granularity not in WEIGHT_GRANULARITIES:
        raise ValueError(
            f"weight_granularity must be one of {WEIGHT_GRANULARITIES}, got {cfg.weight_granularity!r}"
        )
    if cfg.weight_granularity == "group":
        g = cfg.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 2 or g % 2:
            raise ValueError(f"group_size must be an even int >= 2 for weight_granularity='group', got {g!r}")
    if cfg.weight_scale not in WEIGHT_SCALE_RULES:
        raise ValueError(f"weight_scale must be one of {WEIGHT_SCALE_RULES}, got {cfg.weight_scale!r}")
    if cfg.modules is not None:
        if isinstance(cfg.modules, str) or not all(isinstance(m, str) and m for m in cfg.modules):
            raise ValueError(
                f"modules must be a tuple of module names or fnmatch patterns (or None), got {cfg.modules!r}"
            )
        object.__setattr__(cfg, "modules", tuple(cfg.modules))
    if not isinstance(cfg.exclude, tuple) or not all(isinstance(m, str) for m in cfg.exclude):
        raise ValueError(f"exclude must be a tuple of module names or fnmatch patterns, got {cfg.exclude!r}")


@dataclass(frozen=True)
class PTQConfig:
    """Static post-training quantization of weights and activations of linear layers.

    weight / activation: format names (``"fp8-e4m3"``, ``"fp8-e5m2"``, ``"int8"``, ``"mxfp8-e4m3"``,
    ``"mxfp4"``) or format objects. FP8 and INT8 may not be mixed with each other; MX weights go with MX
    activations. weight_granularity: ``"tensor"`` (the paper), ``"channel"`` (one scale per output row).
    activation_granularity: ``"tensor"`` (static scale from calibration, the paper) or ``"token"``
    (dynamic, one scale per row at run time; no calibration needed). weight_scale: ``"absmax"`` or ``"mse"``.
    observer: the calibration rule for static activation scales — ``"max"`` (the paper), ``"percentile"``
    / ``("percentile", p)``, ``"mse"`` or an :class:`~lowbit.ptq.observers.ObserverSpec`; None uses the rule
    given to :func:`~lowbit.ptq.calibrate` (the statistics serve every rule, so one calibration is enough).
    fp8_compute: ``"emulated"`` (FP8 codes upcast exactly to FP32, one FP32 GEMM, scales in the epilogue)
    or ``"scaled_mm"`` (``torch._scaled_mm`` on float8 operands); see :mod:`lowbit.ptq.modules` for the
    measurement behind the default.
    """

    weight: str | Format = "fp8-e4m3"
    activation: str | Format = "fp8-e4m3"
    weight_granularity: str = "tensor"
    activation_granularity: str = "tensor"
    weight_scale: str = "absmax"
    group_size: int | None = None
    modules: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    fp8_compute: str = "emulated"
    observer: object = None

    def __post_init__(self) -> None:
        w = _parse_format("weight", self.weight)
        a = _parse_format("activation", self.activation)
        if self.observer is not None:
            object.__setattr__(self, "observer", ObserverSpec.parse(self.observer))
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "activation", a)
        _check_common(self)
        if self.activation_granularity not in ACTIVATION_GRANULARITIES:
            raise ValueError(
                f"activation_granularity must be one of {ACTIVATION_GRANULARITIES}, "
                f"got {self.activation_granularity!r}"
            )
        if self.fp8_compute not in FP8_COMPUTE:
            raise ValueError(f"fp8_compute must be one of {FP8_COMPUTE}, got {self.fp8_compute!r}")
        if isinstance(w, MXFormat) or isinstance(a, MXFormat):
            if not (isinstance(w, MXFormat) and isinstance(a, MXFormat)):
                raise ValueError(
                    f"MX formats share one scale per block of 32 along K, so weight and activation must both "
                    f"be MX; got weight={w.name}, activation={a.name}"
                )
            if self.weight_granularity != "tensor" or self.activation_granularity != "tensor":
                raise ValueError("MX formats carry their own block scales; leave both granularities 'tensor'")
        elif _is_fp8(w) and _is_fp8(a) or _is_int8(w) and _is_int8(a):
            pass
        else:
            raise ValueError(
                f"PTQConfig supports weight/activation pairs of FP8 ({', '.join(_FP8_NAMES)}), int8/int8 or "
                f"MX/MX; got weight={w.name}, activation={a.name}. For INT4 or other weight-only formats use "
                "WeightOnlyConfig"
            )
        if self.weight_granularity == "group":
            raise ValueError("weight_granularity='group' is for WeightOnlyConfig; use 'tensor' or 'channel'")
        if self.fp8_compute == "scaled_mm" and not _is_fp8(w):
            raise ValueError(f"fp8_compute='scaled_mm' needs FP8 formats, got weight={w.name}")

    @property
    def kind(self) -> str:
        """Which quantized linear implements the recipe: "fp8", "int8" or "mx"."""
        if isinstance(self.weight, MXFormat):
            return "mx"
        return "int8" if isinstance(self.weight, IntFormat) else "fp8"

    @property
    def needs_calibration(self) -> bool:
        """True when activation scales come from calibration (static per-tensor scales, non-MX)."""
        return self.kind != "mx" and self.activation_granularity == "tensor"

    def describe(self) -> str:
        """One line: formats, granularities and (if set) the calibration rule."""
        if self.kind == "mx":
            return f"W {self.weight.name}/block32 A {self.activation.name}/block32"
        text = (
            f"W {self.weight.name}/{self.weight_granularity} "
            f"A {self.activation.name}/{self.activation_granularity}"
        )
        return text + (f" ({self.observer})" if self.observer is not None and self.needs_calibration else "")


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Weight-only quantization: weights stored in ``weight`` (``"int4"`` packed two per byte, ``"int8"``,
    ``"fp8-e4m3"``, ``"mxfp4"``, ...), activations stay FP32; the layer computes in FP32 on the
    dequantized weight. ``weight_granularity``: ``"tensor"``, ``"channel"`` or ``"group"`` (``group_size``
    along K; INT4 usually wants groups of 32–128). MX formats always use their 32-element blocks.
    """

    weight: str | Format = "int4"
    weight_granularity: str = "channel"
    weight_scale: str = "absmax"
    group_size: int | None = None
    modules: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        w = _parse_format("weight", self.weight)
        object.__setattr__(self, "weight", w)
        _check_common(self)
        if isinstance(w, IntFormat) and (not w.signed or w.bits not in (4, 8)):
            raise ValueError(f"weight-only integer formats are int4 and int8, got {w.name}")
        if isinstance(w, FloatFormat) and not _is_fp8(w):
            raise ValueError(f"weight-only float formats are fp8-e4m3 and fp8-e5m2 (or MX), got {w.name}")
        if isinstance(w, MXFormat):
            if self.weight_granularity not in ("tensor", "channel"):
                raise ValueError(f"{w.name} carries its own 32-element block scales; do not set groups")
            if w.element.bits not in (4, 8):
                raise ValueError(f"weight-only MX formats are MXFP8/MXINT8 and MXFP4, got {w.name}")

    def describe(self) -> str:
        """One line: format and granularity."""
        gran = f"group{self.group_size}" if self.weight_granularity == "group" else self.weight_granularity
        if isinstance(self.weight, MXFormat):
            gran = "block32"
        return f"W {self.weight.name}/{gran} A fp32"
