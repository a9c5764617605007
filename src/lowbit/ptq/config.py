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

from lowbit.formats import INT7_NARROW, FloatFormat, Format, IntFormat, MXFormat, get_format
from lowbit.granularity import ROLE_SPELLINGS, Granularity, for_role, role_spelling
from lowbit.ptq.observers import ObserverSpec

# The recipes' spellings of lowbit.granularity.Granularity (channel/token = row; ROLE_SPELLINGS).
WEIGHT_GRANULARITIES = tuple(ROLE_SPELLINGS["weight"])  # ("tensor", "channel", "group")
ACTIVATION_GRANULARITIES = tuple(ROLE_SPELLINGS["activation"])  # ("tensor", "token")
WEIGHT_SCALE_RULES = ("absmax", "mse")
FP8_COMPUTE = ("auto", "bf16_dot", "emulated", "scaled_mm")
INT8_KERNELS = ("w7", "a7", "exact")  # see lowbit.ptq.modules.Int8Linear; "auto" resolves to one of them
WEIGHT_ROUNDINGS = ("nearest", "gptq", "gptq-seq", "gptq-asym")  # see lowbit.ptq.gptq / .sequential
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


def _spell_granularity(cfg: PTQConfig | WeightOnlyConfig, field: str, role: str) -> None:
    """A Granularity given for ``field`` becomes its role spelling (and ``group_size``); strings stay."""
    value = getattr(cfg, field)
    if not isinstance(value, Granularity):
        return
    spelling, group = role_spelling(value, role)
    if group is not None:
        if cfg.group_size not in (None, group):
            raise ValueError(f"{field}={value} disagrees with group_size={cfg.group_size!r}")
        object.__setattr__(cfg, "group_size", group)
    object.__setattr__(cfg, field, spelling)


def _check_common(cfg: PTQConfig | WeightOnlyConfig) -> None:
    _spell_granularity(cfg, "weight_granularity", "weight")
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
    """Static post-training quantization of the weights and activations of linear layers:
    ``lowbit.convert(model, PTQConfig(...), calibration)`` (or ``lowbit.ptq.quantize``).

    Frozen; validated on construction (``ValueError`` naming the field). Format names are resolved to
    format objects, ``observer`` to an :class:`~lowbit.ptq.observers.ObserverSpec` and ``int8_kernel="auto"``
    to the kernel it picks, so a config reads back what runs.

    Attributes:
        weight: the weight format: a name (``"fp8-e4m3"``, ``"fp8-e5m2"``, ``"int8"``, ``"mxfp8-e4m3"``,
            ``"mxfp4"``, ...) or a format object. FP8 and INT8 may not be mixed with each other; MX weights
            go with MX activations (INT4 and other weight-only formats: :class:`WeightOnlyConfig`).
        activation: the activation format, named or given as ``weight`` is.
        weight_granularity: ``"tensor"`` (one weight scale, the paper) or ``"channel"`` (one scale per
            output row). MX formats carry their own 32-element block scales and leave it ``"tensor"``.
        activation_granularity: ``"tensor"`` (one static scale per linear input, from calibration; the
            paper) or ``"token"`` (dynamic: one scale per row at run time, no calibration needed).
        weight_scale: how weight scales are chosen: ``"absmax"`` or ``"mse"`` (the scale minimising the
            rounding error).
        group_size: not used by this config (groups are :class:`WeightOnlyConfig`'s); leave it None.
        modules: which ``nn.Linear`` layers are quantized: None (every one under a submodule named
            ``encoder``; embeddings, LayerNorm, softmax, GELU, the pooler and task heads stay FP32) or a
            tuple of qualified names / ``fnmatch`` patterns (``"encoder.layer.*.attention.self.query"``).
        exclude: names / patterns removed from that selection (a tuple).
        fp8_compute: how FP8 products run: ``"auto"`` (default: ``"bf16_dot"`` on CPUs with AVX512-BF16
            when no gradient is needed, else ``"emulated"``), ``"bf16_dot"`` (FP8 x FP8 products on
            ``vdpbf16ps``: exact products, float32 sums), ``"emulated"`` (FP8 codes upcast exactly to FP32,
            one FP32 GEMM, scales in the epilogue) or ``"scaled_mm"`` (``torch._scaled_mm`` on float8
            operands; FP8 formats only); see :mod:`lowbit.ptq.modules`.
        observer: the calibration rule of static activation scales: ``"max"`` (the paper),
            ``"percentile"`` / ``("percentile", p)``, ``"mse"`` or an ``ObserverSpec``; None uses the rule
            given to :func:`~lowbit.ptq.calibrate` (the statistics serve every rule, so one calibration is
            enough).
        int8_kernel: INT8 recipes' code ranges, hence the integer-engine kernel: ``"w7"`` (weight codes in
            [-63, 63], 8-bit activations: the fast u8 x s8 kernel), ``"a7"`` (8-bit weights, activation
            codes in [-64, 63]: also u8 x s8) or ``"exact"`` (full int8 range on both sides, the paper's
            INT8, exact int16 kernel at ~0.7x the speed). Storage is int8 codes in every case. ``"auto"``
            (default) picks ``"w7"`` for per-channel weight scales and ``"exact"`` for a per-tensor one:
            measured on MiniLM / Rotten Tomatoes (400 held-out snippets), 7-bit weights cost little per
            channel (cosine 0.9969 -> 0.9954 with per-token activations; 7-bit activations: 0.9932) but a
            lot per tensor (0.943 -> 0.850; a7: 0.853).
        weight_rounding: ``"nearest"`` (the paper); ``"gptq"`` (error-compensating rounding onto the same
            grid with the same scales, using the Gram matrix of each layer's calibration inputs;
            :mod:`lowbit.ptq.gptq`); ``"gptq-seq"`` (GPTQ with each layer's Gram matrix taken from the inputs
            it receives when every earlier layer is already quantized, activation-rounded as its GEMM sees
            them); ``"gptq-asym"`` (the same, rounding toward the FP32 layer's output on the FP32 model's
            inputs; :mod:`lowbit.ptq.sequential`). Not for MX formats.
        bias_correction: after quantizing, subtract from each layer's bias the mean error of its outputs
            (quantized layer vs the FP32 weights on the same inputs) over the calibration tokens. A bool;
            not for MX formats.
        gptq_act_order: GPTQ rounds the input columns by decreasing Gram diagonal instead of left to right.
            A bool; needs a GPTQ ``weight_rounding``.
    """

    weight: str | Format = "fp8-e4m3"
    activation: str | Format = "fp8-e4m3"
    weight_granularity: str | Granularity = "tensor"
    activation_granularity: str | Granularity = "tensor"
    weight_scale: str = "absmax"
    group_size: int | None = None
    modules: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    fp8_compute: str = "auto"
    observer: object = None
    int8_kernel: str = "auto"
    weight_rounding: str = "nearest"
    bias_correction: bool = False
    gptq_act_order: bool = False

    def __post_init__(self) -> None:
        w = _parse_format("weight", self.weight)
        a = _parse_format("activation", self.activation)
        if self.observer is not None:
            object.__setattr__(self, "observer", ObserverSpec.parse(self.observer))
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "activation", a)
        _check_common(self)
        _spell_granularity(self, "activation_granularity", "activation")
        if self.activation_granularity not in ACTIVATION_GRANULARITIES:
            raise ValueError(
                f"activation_granularity must be one of {ACTIVATION_GRANULARITIES}, "
                f"got {self.activation_granularity!r}"
            )
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ValueError(
                f"weight_rounding must be one of {WEIGHT_ROUNDINGS}, got {self.weight_rounding!r}"
            )
        if not isinstance(self.gptq_act_order, bool):
            raise ValueError(f"gptq_act_order must be a bool, got {self.gptq_act_order!r}")
        if self.gptq_act_order and self.weight_rounding == "nearest":
            raise ValueError(
                "gptq_act_order orders GPTQ's columns: set weight_rounding to a GPTQ variant too"
            )
        if not isinstance(self.bias_correction, bool):
            raise ValueError(f"bias_correction must be a bool, got {self.bias_correction!r}")
        if (self.weight_rounding != "nearest" or self.bias_correction) and isinstance(w, MXFormat):
            raise ValueError("GPTQ rounding and bias correction are for FP8 and INT8 recipes, not MX")
        if self.int8_kernel == "auto":
            object.__setattr__(self, "int8_kernel", "w7" if self.weight_granularity == "channel" else "exact")
        if self.int8_kernel not in INT8_KERNELS:
            raise ValueError(f"int8_kernel must be one of {INT8_KERNELS}, got {self.int8_kernel!r}")
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
    def weight_gran(self) -> Granularity:
        """``weight_granularity`` as a :class:`~lowbit.granularity.Granularity` of the (N, K) weight."""
        return for_role(self.weight_granularity, "weight", self.group_size)

    @property
    def activation_gran(self) -> Granularity:
        """``activation_granularity`` as a :class:`~lowbit.granularity.Granularity` of (tokens, K) inputs."""
        return for_role(self.activation_granularity, "activation")

    @property
    def weight_code_format(self) -> Format:
        """The format the weight codes are rounded to: for ``int8_kernel="w7"`` the symmetric 7-bit grid
        ``int7-narrow``, [-63, 63] — the range ``Int8Linear`` accepts for "w7" — so that every rounding that
        can reach the grid's ends (GPTQ's error feedback, the asymmetric target, an ``mse`` clip) saturates
        inside it (plain ``int7``'s -64 made those recipes fail when the layer was built)."""
        return INT7_NARROW if self.kind == "int8" and self.int8_kernel == "w7" else self.weight

    @property
    def activation_code_format(self) -> Format:
        """The format static activation scales are computed for (int7 for ``int8_kernel="a7"``)."""
        return get_format("int7") if self.kind == "int8" and self.int8_kernel == "a7" else self.activation

    @property
    def needs_calibration(self) -> bool:
        """True when activation scales come from calibration (static per-tensor scales, non-MX)."""
        return self.kind != "mx" and (
            self.activation_granularity == "tensor"
            or self.weight_rounding != "nearest"
            or self.bias_correction
        )

    def describe(self) -> str:
        """One line: formats, granularities and (if set) the calibration rule."""
        if self.kind == "mx":
            return f"W {self.weight.name}/block32 A {self.activation.name}/block32"
        w_name, a_name = self.weight.name, self.activation.name
        if self.kind == "int8" and self.int8_kernel != "exact":  # the code range the kernel runs on
            w_name, a_name = ("int7", a_name) if self.int8_kernel == "w7" else (w_name, "int7")
        text = f"W {w_name}/{self.weight_granularity} A {a_name}/{self.activation_granularity}"
        text += f" +{self.weight_rounding}" if self.weight_rounding != "nearest" else ""
        text += " +act-order" if self.gptq_act_order else ""
        text += " +bias-corr" if self.bias_correction else ""
        static = self.activation_granularity == "tensor"
        return text + (f" ({self.observer})" if self.observer is not None and static else "")


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Weight-only quantization: the weights stored in a low-precision format, activations stay FP32 and the
    layer computes in FP32 on the dequantized weight: ``lowbit.convert(model, WeightOnlyConfig(...))``.

    Frozen; validated on construction (``ValueError`` naming the field).

    Attributes:
        weight: the weight format, a name or a format object: ``"int4"`` (packed two per byte), ``"int8"``,
            ``"fp8-e4m3"``, ``"fp8-e5m2"``, or an MX format with 8- or 4-bit elements (``"mxfp8-e4m3"``,
            ``"mxint8"``, ``"mxfp4"``, ...).
        weight_granularity: ``"tensor"``, ``"channel"`` (default; one scale per output row) or ``"group"``
            (``group_size`` consecutive weights along K share a scale; INT4 usually wants groups of 32–128).
            MX formats always use their 32-element blocks (``"tensor"`` or ``"channel"`` only).
        weight_scale: how weight scales are chosen: ``"absmax"`` or ``"mse"``.
        group_size: the group length for ``weight_granularity="group"``: an even int >= 2.
        modules: which ``nn.Linear`` layers are quantized, as :attr:`PTQConfig.modules`.
        exclude: names / patterns removed from that selection, as :attr:`PTQConfig.exclude`.
    """

    weight: str | Format = "int4"
    weight_granularity: str | Granularity = "channel"
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

    @property
    def weight_gran(self) -> Granularity:
        """``weight_granularity`` as a :class:`~lowbit.granularity.Granularity` of the (N, K) weight."""
        return for_role(self.weight_granularity, "weight", self.group_size)

    def describe(self) -> str:
        """One line: format and granularity."""
        gran = f"group{self.group_size}" if self.weight_granularity == "group" else self.weight_granularity
        if isinstance(self.weight, MXFormat):
            gran = "block32"
        return f"W {self.weight.name}/{gran} A fp32"
