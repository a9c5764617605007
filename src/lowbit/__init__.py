"""lowbit: train and run Transformers with real 4-bit/8-bit integer and 8-bit float arithmetic on the CPU.

The top-level names are the one-call entry points; each lives in its own subpackage and is imported on first
use, so ``import lowbit`` stays light. ``lowbit.convert(model, config, calibration=None)`` is the one verb of
the three workflows (training recipes, PTQ configs, the integer-only config; :mod:`lowbit.conversion`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "formats": "lowbit.formats",
    "ops": "lowbit.ops",
    "quantize": "lowbit.quantizers",
    "QTensor": "lowbit.quantizers",
    "Granularity": "lowbit.granularity",
    "pack_int4": "lowbit.quantizers",
    "unpack_int4": "lowbit.quantizers",
    "hadamard": "lowbit.transforms",
    "convert": "lowbit.conversion",
    "ConversionSummary": "lowbit.conversion",
    "ptq": "lowbit.ptq",
    "integer": "lowbit.integer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    # A subpackage exported under its own name is the module itself.
    return module if module_name == f"lowbit.{name}" else getattr(module, name)
