"""Every integer code range lowbit uses is owned by lowbit.formats; no module keeps an alias of its own."""

from __future__ import annotations

import lowbit.formats as F
from lowbit.ops import api
from lowbit.training import lsq


def test_named_ranges_have_their_values():
    assert (F.INT8_RANGE, F.INT4_RANGE) == ((-128, 127), (-8, 7))
    assert (F.INT8_SYMMETRIC, F.INT4_SYMMETRIC) == ((-127, 127), (-7, 7))
    assert (F.U8S8_WEIGHT_RANGE, F.U8S8_ACT_RANGE, F.W7_WEIGHT_RANGE) == ((-64, 64), (-64, 63), (-63, 63))
    assert F.PROB_RANGE == (0, 127) and isinstance(F.PROB_RANGE, F.CodeRange)
    assert F.IntFormat(8).code_range == (-128, 127) and F.IntFormat(8, signed=False).code_range == (0, 255)


def test_named_ranges_keep_their_reasons():
    assert F.U8S8_WEIGHT_RANGE.magnitude == 64
    assert 2 * 255 * F.U8S8_WEIGHT_RANGE.magnitude < 2**15  # u8 x s8 pair sums fit int16
    assert F.U8S8_WEIGHT_RANGE.contains(*F.W7_WEIGHT_RANGE)  # "w7" weights take the u8 x s8 path
    assert (F.U8S8_ACT_RANGE.lo + 64, F.U8S8_ACT_RANGE.hi + 64) == (0, 127)  # a + 64 is 7 bits
    assert not F.U8S8_WEIGHT_RANGE.contains(*F.INT8_SYMMETRIC)


def test_names_derived_from_the_ranges():
    """The two names kept outside formats are derivations of its ranges, not ranges of their own."""
    assert lsq.LSQ_QPOS == F.INT4_RANGE.hi == 7  # LSQ's positive level count Q_P
    assert api.MAX_K == {8: (2**31 - 1) // (128 * 128), 4: (2**31 - 1) // (8 * 8)}  # no int32 overflow
    assert {b: F.int_format(b).code_range for b in (8, 4)} == {8: (-128, 127), 4: (-8, 7)}


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


def test_formats_package_imports_only_its_own_modules():
    """lowbit.formats is a package whose modules import one another (relative, level 1) and nothing else of
    lowbit, so the whole package is the bottom layer."""
    import ast
    import importlib.util
    from pathlib import Path

    root = Path(importlib.util.find_spec("lowbit.formats").origin).parent
    modules = sorted(p.stem for p in root.glob("*.py"))
    assert {"__init__", "ints", "floats", "mx", "ranges", "names"} <= set(modules)
    for stem in modules:
        name = "lowbit.formats" if stem == "__init__" else f"lowbit.formats.{stem}"
        assert _lowbit_imports(name) == set(), name
        tree = ast.parse((root / f"{stem}.py").read_text(encoding="utf-8"))
        levels = {n.level for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert levels <= {0, 1}, name
