"""Every valid PTQConfig's weight codes fit the INT8 kernel it names, whatever the weight rounding.

``int8_kernel="w7"`` (the ``"auto"`` choice for per-channel weights) runs on weight codes in [-63, 63]. The
weights used to be rounded onto plain int7, [-64, 63]: nearest rounding of an absmax scale never reaches -64,
but GPTQ's error feedback, the asymmetric (``gptq-asym``) target and an ``mse`` clip saturate at the grid's
end, so those recipes failed only when the layer was built ("needs weight codes in [-63, 63], got [-64, 63]").
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import lowbit
from lowbit.ptq import PTQConfig, calibrate
from lowbit.ptq.config import INT8_KERNELS, WEIGHT_ROUNDINGS
from lowbit.ptq.modules import Int8Linear

# |weight code| bound of each INT8 kernel (w7: 7-bit symmetric; a7 and exact keep the int8 weight range)
WEIGHT_CODE_RANGE = {"w7": (-63, 63), "a7": (-128, 127), "exact": (-128, 127)}


def _convert_and_run(model, config, calibration, batch) -> torch.nn.Module:
    qmodel = copy.deepcopy(model)
    lowbit.convert(qmodel, config, calibration)
    with torch.no_grad():
        out = qmodel(**batch).last_hidden_state
    assert torch.isfinite(out).all(), config.describe()
    return qmodel


def test_int8_per_channel_gptq_asym_converts_on_the_w7_kernel(tiny_bert, batches) -> None:
    config = PTQConfig("int8", "int8", weight_granularity="channel", weight_rounding="gptq-asym")
    assert config.int8_kernel == "w7"  # "auto", per-channel weights
    qmodel = _convert_and_run(tiny_bert, config, calibrate(tiny_bert, batches), batches[0])
    layers = [m for m in qmodel.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.kernel == "w7" for m in layers)
    assert all(int(m.w_codes.min()) >= -63 and int(m.w_codes.max()) <= 63 for m in layers)


def test_w7_nearest_absmax_codes_are_unchanged(tiny_bert, batches) -> None:
    """Nearest rounding with absmax scales never reached -64: its codes and scales are those of plain int7."""
    from lowbit.formats import get_format
    from lowbit.ptq.weights import encode_weight

    w = tiny_bert.encoder.layer[0].attention.self.query.weight
    fmt = PTQConfig("int8", "int8", "channel").weight_code_format
    narrow = encode_weight(w, fmt, "channel", None, "absmax")
    plain = encode_weight(w, get_format("int7"), "channel", None, "absmax")
    assert narrow.keys() == plain.keys() and all(torch.equal(narrow[k], plain[k]) for k in narrow)


def test_every_rounding_kernel_granularity_converts_or_is_refused_up_front(tiny_bert, batches) -> None:
    """Each valid combination converts and runs with codes in its kernel's range; each invalid one is refused
    by PTQConfig itself (ValueError) — none fails later, when the layers are built or run. One calibration
    batch (the padded one) keeps the sequential GPTQ variants quick."""
    calibration = calibrate(tiny_bert, batches[2:])
    grid = itertools.product(
        [("int8", "int8"), ("fp8-e4m3", "fp8-e4m3"), ("mxfp8-e4m3", "mxfp8-e4m3")],
        ("tensor", "channel"),
        ("tensor", "token"),
        WEIGHT_ROUNDINGS,
        ("auto", *INT8_KERNELS),
        ("absmax", "mse"),
    )
    converted = refused = 0
    for (w, a), w_gran, a_gran, rounding, kernel, scale in grid:
        if kernel != "auto" and w != "int8":
            continue  # int8_kernel only picks among INT8 kernels (FP8 and MX configs ignore it)
        try:
            config = PTQConfig(w, a, w_gran, a_gran, scale, int8_kernel=kernel, weight_rounding=rounding)
        except ValueError as err:
            assert str(err), (w, w_gran, a_gran, rounding, kernel, scale)
            refused += 1
            continue
        qmodel = _convert_and_run(tiny_bert, config, calibration, batches[0])
        for layer in qmodel.modules():
            if isinstance(layer, Int8Linear):
                lo, hi = WEIGHT_CODE_RANGE[layer.kernel]
                codes = layer.w_codes
                assert lo <= int(codes.min()) and int(codes.max()) <= hi, config.describe()
        converted += 1
    assert converted and refused  # both outcomes occur (e.g. MX with GPTQ or per-channel scales is refused)


@pytest.mark.parametrize("kernel", INT8_KERNELS)
def test_explicit_kernel_choices_hold_gptq_codes(tiny_bert, batches, kernel) -> None:
    """An explicit kernel with a GPTQ rounding and per-tensor weights (w7 there is the user's choice, not
    "auto"'s) converts too: the rounding grid is the kernel's code range."""
    config = PTQConfig("int8", "int8", "tensor", "token", "mse", int8_kernel=kernel, weight_rounding="gptq")
    _convert_and_run(tiny_bert, config, calibrate(tiny_bert, batches), batches[0])
