"""Post-training quantization of BERT-family models: FP8 (E4M3/E5M2), INT8, INT4/MX weight-only.

Typical use::

    import lowbit
    from lowbit import ptq
    calib = ptq.calibrate(model, batches, observer="max")          # observe each encoder linear's input
    summary = lowbit.convert(model, ptq.PTQConfig("fp8-e4m3", "fp8-e4m3"), calib)   # in place
    # (ptq.quantize(model, config, calib) is the same conversion, returning the PTQSummary: summary.details)
    ptq.save_quantized(model, "model.safetensors")                 # codes + scales + formats, atomic
    ptq.load_quantized(fresh_fp32_model, "model.safetensors")      # rebuilds identical layers

By default every ``nn.Linear`` under ``encoder`` is quantized; embeddings, LayerNorm, softmax, GELU, the
pooler and any task head stay FP32.
"""

from lowbit.ptq.api import LayerReport, PTQSummary, model_nbytes, quantize, register_handler
from lowbit.ptq.base import LayerSpec, PTQLinear
from lowbit.ptq.calibrate import Calibration, calibrate, select_linears
from lowbit.ptq.config import PTQConfig, WeightOnlyConfig
from lowbit.ptq.modules import EmulatedLinear, FP8Linear, Int8Linear
from lowbit.ptq.observers import HistogramObserver, ObserverSpec
from lowbit.ptq.serialization import FORMAT_VERSION, CheckpointError, load_quantized, save_quantized

__all__ = [
    "FORMAT_VERSION",
    "Calibration",
    "CheckpointError",
    "EmulatedLinear",
    "FP8Linear",
    "HistogramObserver",
    "Int8Linear",
    "LayerReport",
    "LayerSpec",
    "ObserverSpec",
    "PTQConfig",
    "PTQLinear",
    "PTQSummary",
    "WeightOnlyConfig",
    "calibrate",
    "load_quantized",
    "model_nbytes",
    "quantize",
    "register_handler",
    "save_quantized",
    "select_linears",
]
