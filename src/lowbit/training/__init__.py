"""INT4/INT8 training (Xi et al. 2023): recipes, ``QuantLinear`` and its autograd Functions, ``convert``.

``lowbit.convert(model, "int4")`` (or this package's ``convert``) replaces a model's ``nn.Linear`` layers
(the output head kept in full precision) by :class:`QuantLinear`, whose forward, activation-gradient and
weight-gradient products all run on ``lowbit.ops``' integer engine.
"""

from __future__ import annotations

from lowbit.training._kernels import native_reason
from lowbit.training.bit_split import bit_merge, bit_split
from lowbit.training.convert import HEAD_NAMES, ConversionSummary, convert, fp32_state_dict
from lowbit.training.layers import QuantLinear
from lowbit.training.leverage import leverage_probabilities, select_rows
from lowbit.training.optim import param_groups
from lowbit.training.recipes import RECIPES, OperandSpec, ProductSpec, Recipe, get_recipe


def kernel_backend() -> str:
    """``"native"`` when the fused training kernels run, else ``"torch: <why native is not used>"``.

    Both paths give identical integers; the PyTorch one is several times slower.
    """
    reason = native_reason()
    return f"torch: {reason}" if reason else "native"


__all__ = [
    "HEAD_NAMES",
    "RECIPES",
    "ConversionSummary",
    "OperandSpec",
    "ProductSpec",
    "QuantLinear",
    "Recipe",
    "bit_merge",
    "bit_split",
    "convert",
    "fp32_state_dict",
    "get_recipe",
    "kernel_backend",
    "leverage_probabilities",
    "param_groups",
    "select_rows",
]
