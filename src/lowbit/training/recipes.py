"""Training recipes: frozen configs naming how each operand of each product is quantized, and the registry.

A linear layer ``Y = X Wᵀ + b`` has three products: forward (fprop) ``X Wᵀ``, activation gradient (dgrad) ``∇Y
W`` and weight gradient (wgrad) ``∇Yᵀ X``. A :class:`Recipe` names, for each product, the format and algorithm
of its two operands (:class:`OperandSpec`); the layer (``lowbit.training.layers``) dispatches on
``Recipe.kind``. Registered names: ``fp32`` (nothing converted), ``int8`` (the paper's INT8 baseline),
``int4`` (Xi et al.: Hadamard quantizer + LSQ, bit splitting, leverage-score row selection, keep-non-zero mode
of the released code; its LSQ step initialisation is the training task's choice), ``int4-paper`` /
``int4-mse`` (``int4`` with the LSQ steps initialised by the paper's formula / at the MSE-best step, always),
``int4-sample`` (``int4`` with the paper's unbiased Bernoulli sampling) and ``int4-naive`` (per-tensor
round-to-nearest INT4 everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lowbit.training.lsq import LSQ_INITS

KINDS = ("fp32", "int8", "int4", "int4-naive")
ALGORITHMS = (
    "none",  # kept in floating point
    "per-token",  # one absmax scale per row (token) of the operand, nearest rounding
    "per-channel",  # one absmax scale per row of the weight (output channel) / column, nearest rounding
    "per-feature",  # one absmax scale per input feature (column of X or of W), nearest rounding
    "per-tensor",  # one absmax scale for the whole tensor, nearest rounding
    "hadamard-lsq",  # block Hadamard along D, then LSQ learned per-tensor step, nearest rounding
    "bit-split",  # two INT4 tensors hi/lo, per-tensor scale, stochastic rounding of lo
    "reuse",  # the codes of the forward pass are reused
)
LSS_MODES = ("none", "nonzero", "sample")
GRAD_ROUNDINGS = ("nearest", "stochastic")


@dataclass(frozen=True)
class OperandSpec:
    """How one operand of one product is quantized.

    Attributes:
        bits: integer code width: 4 or 8, or 0 for an operand kept in floating point.
        algorithm: how the codes and scales are made, one of :data:`ALGORITHMS` (the comments there say what
            each does); ``"none"`` exactly when ``bits`` is 0.
    """

    bits: int
    algorithm: str

    def __post_init__(self) -> None:
        if self.bits not in (0, 4, 8):
            raise ValueError(f"bits must be 0 (float), 4 or 8, got {self.bits!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if (self.bits == 0) != (self.algorithm == "none"):
            raise ValueError(f"bits={self.bits} does not fit algorithm {self.algorithm!r} (float <=> 'none')")


@dataclass(frozen=True)
class ProductSpec:
    """The two operands of one product, in the order they are multiplied.

    Attributes:
        lhs: the left operand (fprop: the input X; dgrad and wgrad: the output gradient ∇Y).
        rhs: the right operand (fprop and dgrad: the weight W; wgrad: the input X).
    """

    lhs: OperandSpec
    rhs: OperandSpec


_FLOAT = OperandSpec(0, "none")


@dataclass(frozen=True)
class Recipe:
    """A complete training quantization recipe: ``lowbit.convert(model, recipe)``.

    ``hadamard_block``, ``lss``, ``grad_rounding``, ``cold_start_steps``, ``split_clamp``, ``lsq_lr`` and
    ``lsq_init`` tune the ``int4`` kind (Xi et al.); the other kinds ignore them. Frozen: derive variants
    with ``dataclasses.replace(recipe, ...)``.

    Attributes:
        name: the recipe's name in :data:`RECIPES`, reports and summaries.
        kind: which layer implementation runs (``QuantLinear`` dispatches on it), one of :data:`KINDS`:
            ``"fp32"`` (nothing converted), ``"int8"`` (per-token / per-channel INT8 on all three products),
            ``"int4"`` (Hadamard quantizer + LSQ forward, bit-split backward), ``"int4-naive"`` (per-tensor
            round-to-nearest INT4 everywhere).
        fprop / dgrad / wgrad: :class:`ProductSpec` of the forward ``X Wᵀ`` = (input, weight), the activation
            gradient ``∇Y W`` = (grad_output, weight) and the weight gradient ``∇Yᵀ X`` = (grad_output,
            input). They describe what ``kind`` does to each operand (for reports); the kind selects the code.
        hadamard_block: the Hadamard quantizer's block size, a power of two, or None (default, the paper's
            released training script): search g in {1, ..., 1024} dividing D at the first forward. A fixed
            size (the released code's fixed default is 32) is capped per layer to the largest power of two
            dividing D.
        lss: leverage-score row selection in both backward products: ``"nonzero"`` (keep every non-zero row;
            the released code), ``"sample"`` (Bernoulli with Σp = N and 1/p reweighting; the paper's text) or
            ``"none"``.
        grad_rounding: rounding of the low half of the bit split: ``"stochastic"`` (unbiased) or
            ``"nearest"`` (deterministic).
        cold_start_steps: for this many training forwards (an int >= 0) the LSQ steps are reset to their
            ``lsq_init`` value instead of learned; 0 in the registered recipes.
        split_clamp: the bit split's hi/lo code range ±split_clamp: 7 (default; unbiased, see ``bit_split``)
            or 6 (the paper's text, docs/SPEC.md §1; it clips the largest gradients).
        lsq_lr: the relative learning rate of the LSQ step sizes, a finite number >= 0: each step's Adam
            learning rate is ``lsq_lr × |s|`` (× the model's schedule factor), so an update changes a step by
            at most about ``lsq_lr`` of itself whatever the model's learning rate (``lowbit.training.optim``).
        lsq_init: how a step is (re)initialised at the first forward from the Hadamard-transformed tensor:
            ``"paper"`` (``2·mean|x|/√7``) or ``"mse"`` (the per-tensor step minimising the quantization MSE,
            ``lowbit.training.lsq.lsq_init_mse``); the learned step continues from it either way. None
            (``int4``, ``int4-sample``): the training task's choice (``lowbit train``: "mse" for bert-rt,
            fine-tuning a pretrained model; "paper" for the from-scratch tasks, see docs/DESIGN.md), "paper"
            outside a task.
        group: the ``torch.distributed`` process group whose processes each hold a shard of the batch (data
            parallelism), or None (one process). With a group the per-tensor statistics over the batch (LSQ
            step init and gradient scale, block search, bit-split scale and noise counter, leverage
            normalisation) are all-reduced over it (``lowbit.training.distributed``). Not part of the
            recipe's identity (compare/hash/repr).
    """

    name: str
    kind: str
    fprop: ProductSpec = field(default_factory=lambda: ProductSpec(_FLOAT, _FLOAT))
    dgrad: ProductSpec = field(default_factory=lambda: ProductSpec(_FLOAT, _FLOAT))
    wgrad: ProductSpec = field(default_factory=lambda: ProductSpec(_FLOAT, _FLOAT))
    hadamard_block: int | None = None
    lss: str = "none"
    grad_rounding: str = "stochastic"
    cold_start_steps: int = 0
    split_clamp: int = 7
    lsq_lr: float = 0.01
    lsq_init: str | None = None
    group: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.lss not in LSS_MODES:
            raise ValueError(f"lss must be one of {LSS_MODES}, got {self.lss!r}")
        if self.grad_rounding not in GRAD_ROUNDINGS:
            raise ValueError(f"grad_rounding must be one of {GRAD_ROUNDINGS}, got {self.grad_rounding!r}")
        if self.hadamard_block is not None and (
            self.hadamard_block < 1 or self.hadamard_block & (self.hadamard_block - 1)
        ):
            raise ValueError(f"hadamard_block must be a power of two or None, got {self.hadamard_block!r}")
        if self.cold_start_steps < 0:
            raise ValueError(f"cold_start_steps must be >= 0, got {self.cold_start_steps!r}")
        if not (self.lsq_lr >= 0 and math.isfinite(self.lsq_lr)):
            raise ValueError(f"lsq_lr must be a finite number >= 0, got {self.lsq_lr!r}")
        if self.lsq_init is not None and self.lsq_init not in LSQ_INITS:
            raise ValueError(f"lsq_init must be None or one of {LSQ_INITS}, got {self.lsq_init!r}")
        if self.split_clamp not in (6, 7):
            raise ValueError(f"split_clamp must be 6 (the paper's) or 7 (unbiased), got {self.split_clamp!r}")

    @property
    def converts(self) -> bool:
        """False for the float reference (``convert`` leaves the model untouched)."""
        return self.kind != "fp32"


_I8_TOK, _I8_CH, _I8_FEAT = (
    OperandSpec(8, "per-token"),
    OperandSpec(8, "per-channel"),
    OperandSpec(8, "per-feature"),
)
_I4_HQ, _I4_BS, _I4_REUSE = (
    OperandSpec(4, "hadamard-lsq"),
    OperandSpec(4, "bit-split"),
    OperandSpec(4, "reuse"),
)
_I4_TENSOR = OperandSpec(4, "per-tensor")

_INT4_COMMON = dict(
    kind="int4",
    fprop=ProductSpec(_I4_HQ, _I4_HQ),
    dgrad=ProductSpec(_I4_BS, _I4_REUSE),
    wgrad=ProductSpec(_I4_BS, _I4_REUSE),
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("fp32", "fp32"),
        # wgrad reduces over tokens, so its operands are scaled per output channel / input feature
        Recipe(
            "int8",
            "int8",
            fprop=ProductSpec(_I8_TOK, _I8_CH),
            dgrad=ProductSpec(_I8_TOK, _I8_FEAT),
            wgrad=ProductSpec(_I8_CH, _I8_FEAT),
            hadamard_block=None,
            grad_rounding="nearest",
        ),
        Recipe("int4", lss="nonzero", **_INT4_COMMON),
        # the two LSQ step initialisations by name, whichever "int4" uses
        Recipe("int4-paper", lss="nonzero", lsq_init="paper", **_INT4_COMMON),
        Recipe("int4-mse", lss="nonzero", lsq_init="mse", **_INT4_COMMON),
        Recipe("int4-sample", lss="sample", **_INT4_COMMON),
        Recipe(
            "int4-naive",
            "int4-naive",
            fprop=ProductSpec(_I4_TENSOR, _I4_TENSOR),
            dgrad=ProductSpec(_I4_TENSOR, _I4_REUSE),
            wgrad=ProductSpec(_I4_TENSOR, _I4_REUSE),
            hadamard_block=None,
            grad_rounding="nearest",
        ),
    )
}


def get_recipe(recipe: str | Recipe) -> Recipe:
    """The registered recipe called ``recipe`` (a :class:`Recipe` is returned as is); unknown → ValueError."""
    if isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, str):
        raise TypeError(f"recipe must be a name or a Recipe, got {type(recipe).__name__}")
    try:
        return RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}") from None
