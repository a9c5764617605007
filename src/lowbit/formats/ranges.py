"""Every integer code range lowbit uses, each with its reason: :mod:`lowbit.formats` is their only owner and
every other module imports them from there (docs/DESIGN.md, "formats/").
"""

from __future__ import annotations

from .ints import INT4, INT4_NARROW, INT7, INT7_NARROW, INT8, INT8_NARROW, UINT7, CodeRange

INT8_RANGE = INT8.code_range  # [-128, 127]: the int8 codes the GEMM kernels take
INT4_RANGE = INT4.code_range  # [-8, 7]: the int4 codes the GEMM kernels take; LSQ's INT4 (as released)
INT8_SYMMETRIC = INT8_NARROW.code_range  # [-127, 127]: absmax INT8 (absmax / 127) and int8 saturation
INT4_SYMMETRIC = INT4_NARROW.code_range  # [-7, 7]: absmax INT4 (absmax / 7, int4-naive)
U8S8_WEIGHT_RANGE = CodeRange(-64, 64)  # AVX2 u8 x s8 weights: pair sums 2 * 255 * 64 < 2^15 fit int16
U8S8_ACT_RANGE = INT7.code_range  # [-64, 63]: u8 x s8 7-bit activations, a + 64 in [0, 127] is a u8 operand
W7_WEIGHT_RANGE = INT7_NARROW.code_range  # [-63, 63]: PTQ "w7" weights (absmax / 63), in U8S8_WEIGHT_RANGE
PROB_RANGE = UINT7.code_range  # [0, 127]: integer attention probabilities (a row / its max), not a saturation
