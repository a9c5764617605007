"""Every integer code range lowbit uses is owned by lowbit.formats; the modules' names are aliases of them."""

from __future__ import annotations

import lowbit.formats as F
from lowbit.integer import fast, kernels, scaled
from lowbit.ops import api, native_gemm
from lowbit.ptq import modules
from lowbit.training import functional, lsq


def test_named_ranges_have_their_values():
    assert (F.INT8_RANGE, F.INT4_RANGE) == ((-128, 127), (-8, 7))
    assert (F.INT8_SYMMETRIC, F.INT4_SYMMETRIC) == ((-127, 127), (-7, 7))
    assert (F.U8S8_WEIGHT_RANGE, F.U8S8_ACT_RANGE, F.W7_WEIGHT_RANGE) == ((-64, 64), (-64, 63), (-63, 63))
    assert F.PROB_RANGE == (0, 127) and isinstance(F.PROB_RANGE, F.CodeRange)
    assert F.IntFormat(8).code_range == (-128, 127) and F.IntFormat(8, signed=False).code_range == (0, 255)


def test_named_ranges_keep_their_reasons():
    assert 2 * 255 * F.U8S8_WEIGHT_RANGE.magnitude < 2**15  # u8 x s8 pair sums fit int16
    assert F.U8S8_WEIGHT_RANGE.contains(*F.W7_WEIGHT_RANGE)  # "w7" weights take the u8 x s8 path
    assert (F.U8S8_ACT_RANGE.lo + 64, F.U8S8_ACT_RANGE.hi + 64) == (0, 127)  # a + 64 is 7 bits
    assert not F.U8S8_WEIGHT_RANGE.contains(*F.INT8_SYMMETRIC)


def test_module_aliases_are_the_formats_ranges():
    assert (lsq.QMIN, lsq.QMAX, lsq.LSQ_QPOS) == (-8, 7, 7) and functional.INT4_QMAX == 7
    assert scaled.INT8_MAX == 127 and kernels.PROB_MAX == 127 and fast.W7_RANGE == 64
    assert modules.SEVEN_BIT_WEIGHT == 63 and api.CODE_RANGE == {8: (-128, 127), 4: (-8, 7)}
    assert api.MAX_K == {8: (2**31 - 1) // (128 * 128), 4: (2**31 - 1) // (8 * 8)}
    assert native_gemm.FOUR_BIT == (-8, 7) and native_gemm.SEVEN_BIT == (-64, 64)
    assert native_gemm.SEVEN_BIT_A == (-64, 63)


def _lowbit_imports(module: str) -> set[str]:
    import ast
    import importlib.util
    from pathlib import Path

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {n for n in names if n.startswith("lowbit")}


def test_formats_is_the_bottom_layer():
    assert _lowbit_imports("lowbit.formats") == set()
    assert _lowbit_imports("lowbit.granularity") == {"lowbit.formats"}
    assert _lowbit_imports("lowbit.ops.gemm_plan") == {"lowbit.formats"}
