"""Fully 8-bit integer inference (docs/SPEC.md §2): scaled integers, Scale Propagation, kernels, convert().

* :mod:`lowbit.integer.scaled` — :class:`ScaledInt` and the propagation rules, :class:`Dyadic` multipliers.
* :mod:`lowbit.integer.kernels` — integer L1/standard LayerNorm, poly/softmax attention, i-exp, i-GELU.
* :func:`convert` — lowbit's Integer-Transformer GPT → :class:`IntegerGPT`; :func:`convert_bert` — MiniLM;
  both are what ``lowbit.convert(model, IntegerConfig(...), calibration=batches)`` runs.
* :class:`DtypeTrace` — records the dtype of every intermediate tensor of a run (integer-only verification).
"""

from __future__ import annotations

from lowbit.integer import workflow as _workflow  # noqa: F401  (registers IntegerConfig with lowbit.convert)
from lowbit.integer.convert import ConvertConfig, IntegerConfig, convert
from lowbit.integer.graph import DtypeTrace, IntegerGPT, integer_lm_loss
from lowbit.integer.scaled import Dyadic, ScaledInt, add, concat, matmul, mul, requantize, rescale

__all__ = [
    "ConvertConfig",
    "DtypeTrace",
    "Dyadic",
    "IntegerConfig",
    "IntegerGPT",
    "ScaledInt",
    "add",
    "concat",
    "convert",
    "integer_lm_loss",
    "matmul",
    "mul",
    "requantize",
    "rescale",
]
