"""ctypes loader of the compiled kernels (``lowbit/ops/_native*.so``), CPU feature detection, why-not-native.

The shared object is built by ``setup.py`` from ``ops/csrc/*.c``. It is used only when it loads, exports the
kernel symbols and the CPU has AVX2 + FMA; otherwise :func:`why_not_native` returns the reason (never a silent
fallback: ``lowbit.ops.backend()`` reports it and ``backend="native"`` raises it).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

_c_i8p = ctypes.c_void_p
_c_int = ctypes.c_int
_c_long = ctypes.c_long
_c_float = ctypes.c_float
_c_int64 = ctypes.c_int64
_c_uint32 = ctypes.c_uint32

# The attention row weighting's arguments, shared by the row kernel (int_rows.c) and the two fused attention
# kernels: 4 sizes, causal, key mask, kind, poly bias, delta, ln2, eb, ec, max_shift, frac_bits, row_const.
_ATTN_WEIGHTING = [*[_c_long] * 4, _c_int, _c_i8p, _c_int, _c_i8p, *[_c_int64] * 4, _c_int, _c_int, _c_int64]
# q, k, v, ld; the weighting (sizes bsz, t, c, n_head); row_shift, y, ldy, out_off, threads
_ATTENTION_ARGS = [_c_i8p, _c_i8p, _c_i8p, _c_long, *_ATTN_WEIGHTING, _c_int, _c_i8p, _c_long, _c_int, _c_int]

# symbol -> (argtypes, restype) of every native function lowbit calls (GEMM engine, training, integer-only
# inference, FP8 passes): the one native boundary. Pointer arguments are passed as int addresses.
_SIGNATURES: dict[str, tuple[list, object]] = {
    "lowbit_cpu_has_avx2": ([], _c_int),
    "lowbit_cpu_has_avx512vnni": ([], _c_int),
    "lowbit_vnni_probe": ([_c_long], ctypes.c_double),
    "lowbit_cpu_has_avx512bf16": ([], _c_int),
    # float32 src, s_row, s_k, R, K, P, bf16 dst, threads
    "lowbit_pack_bf16": ([_c_i8p, _c_long, _c_long, _c_int, _c_int, _c_int, _c_i8p, _c_int], None),
    "lowbit_minmax_i8": ([_c_i8p, _c_long, _c_long, _c_int, _c_int, _c_i8p, _c_int], None),
    "lowbit_pack_u8": ([_c_i8p, _c_long, _c_long, _c_int, _c_int, _c_int, _c_i8p, _c_int], None),
    "lowbit_pack_s8": ([_c_i8p, _c_long, _c_long, _c_int, _c_int, _c_i8p, _c_i8p, _c_int], None),
    "lowbit_pack_s8_rows": ([_c_i8p, _c_long, _c_long, _c_int, _c_int, _c_i8p, _c_i8p, _c_int], None),
    "lowbit_pack_u8_cols": ([_c_i8p, _c_long, _c_long, _c_int, _c_int, _c_int, _c_i8p, _c_int], None),
    "lowbit_pack_s16": ([_c_i8p, _c_long, _c_long, _c_int, _c_int, _c_int, _c_i8p, _c_i8p, _c_int], None),
    # x, ldx, M, K, qmax, qlo, static scale (0: per row), [off,] dst, scale out, threads
    "lowbit_quant_pack_u8": (
        [_c_i8p, _c_long, _c_int, _c_int, _c_int, _c_int, _c_float, _c_int, _c_i8p, _c_i8p, _c_int],
        _c_long,
    ),
    "lowbit_quant_pack_s16": (
        [_c_i8p, _c_long, _c_int, _c_int, _c_int, _c_int, _c_float, _c_i8p, _c_i8p, _c_int],
        _c_long,
    ),
    "lowbit_unpack_int4": ([_c_i8p, _c_long, _c_i8p, _c_int], None),
    # x, m, k, ldx, scale, per_row, man_bits, min_normal, max, out, threads -> non-finite count
    "lowbit_fp_round": (
        [_c_i8p, _c_long, _c_long, _c_long, _c_i8p, _c_int, _c_int, _c_float, _c_float, _c_i8p, _c_int],
        _c_long,
    ),
    # codes, n, k, two codes per byte, lut, scale, groups (0: one scale), out, threads
    "lowbit_decode_scaled": (
        [_c_i8p, _c_long, _c_long, _c_int, _c_i8p, _c_i8p, _c_long, _c_i8p, _c_int],
        None,
    ),
    "lowbit_quantize_rows": ([_c_i8p, _c_long, _c_int, _c_int, _c_int, _c_i8p, _c_i8p, _c_int], _c_long),
    "lowbit_gemm_quant": (
        [
            _c_int,  # kind
            _c_i8p,  # float32 x (M, K)
            _c_long,  # ldx
            _c_int,  # qmax
            _c_int,  # qlo (static scale only)
            _c_float,  # static scale, or 0 for per-row scales
            _c_i8p,  # packed B
            _c_int,  # M
            _c_int,  # N
            _c_int,  # K
            _c_int,  # A offset
            _c_i8p,  # B column sums (int32, N) or NULL
            _c_i8p,  # float32 out
            _c_long,  # ldc
            _c_i8p,  # a_scale out (M,)
            _c_i8p,  # b_scale (N,)
            _c_i8p,  # bias (N,) or NULL
            _c_int,  # threads
        ],
        _c_long,
    ),
    "lowbit_gemm": (
        [
            _c_int,  # kind
            _c_i8p,  # packed A
            _c_i8p,  # packed B
            _c_int,  # M
            _c_int,  # N
            _c_int,  # K
            _c_int,  # A offset
            _c_i8p,  # B column sums (int32, N) or NULL; kind 3: A row sums (int32, M)
            _c_i8p,  # int32 out or NULL
            _c_i8p,  # float32 out or NULL
            _c_long,  # ldc
            _c_i8p,  # a_scale (M,)
            _c_i8p,  # b_scale (N,)
            _c_i8p,  # bias (N,) or NULL
            _c_int,  # threads
        ],
        _c_int,
    ),
    # training kernels (train_hadamard.c, train_split.c, train_transpose.c)
    "lowbit_train_hq_quant": ([_c_i8p, _c_long, _c_long, _c_int, _c_float, _c_i8p, _c_i8p, _c_int], _c_int),
    "lowbit_train_hq_grad_x": ([_c_i8p, _c_i8p, _c_float, _c_long, _c_long, _c_int, _c_i8p, _c_int], _c_int),
    "lowbit_train_absmax": ([_c_i8p, _c_long, _c_i8p, _c_int], _c_long),
    "lowbit_train_split_merged": ([_c_i8p, _c_long, _c_float, _c_uint32, _c_int, _c_i8p, _c_int], None),
    "lowbit_train_transpose_i8": ([_c_i8p, _c_long, _c_long, _c_i8p, _c_int], None),
    # integer-only inference kernels (int_gemm.c, int_attn.c, int_rows.c, int_gelu.c, int_requant.c)
    "lowbit_int_requant": (
        [_c_i8p, _c_long, _c_long, _c_long, _c_i8p, _c_i8p, _c_i8p, _c_int, _c_int, _c_i8p, _c_long, _c_int],
        None,
    ),
    "lowbit_int_requant_rows": (
        [_c_i8p, _c_long, _c_long, _c_long, _c_i8p, _c_int, _c_i8p, _c_long, _c_int],
        None,
    ),
    "lowbit_int_norm": (
        [_c_i8p, _c_long, _c_long, _c_int, _c_int, _c_int64, _c_i8p, _c_int, _c_i8p, _c_i8p, _c_int, _c_int],
        None,
    ),
    # scores; the weighting (sizes r_total, t, rows_per_head, n_head); codes, rowmult, threads
    "lowbit_int_attn_rows": ([_c_i8p, *_ATTN_WEIGHTING, _c_i8p, _c_i8p, _c_int], None),
    "lowbit_int_attention": (_ATTENTION_ARGS, None),
    "lowbit_int_attention_blocked": (_ATTENTION_ARGS, None),
    "lowbit_int_gelu_rq": (
        [
            _c_i8p,
            _c_long,
            _c_long,
            _c_long,
            _c_int64,
            _c_int64,
            _c_int64,
            _c_int,
            _c_i8p,
            _c_i8p,
            _c_i8p,
            _c_long,
            _c_int,
            _c_int,
            _c_int,
        ],
        None,
    ),
    "lowbit_int_pack_w16": ([_c_i8p, _c_long, _c_long, _c_i8p], None),
    "lowbit_int_pack_w": ([_c_i8p, _c_long, _c_long, _c_i8p, _c_i8p], None),
    "lowbit_int_gemm_rq": (
        [
            _c_int,
            _c_i8p,
            _c_long,
            _c_long,
            _c_long,
            _c_i8p,
            _c_long,
            _c_i8p,
            _c_i8p,
            _c_i8p,
            _c_i8p,
            _c_i8p,
            _c_i8p,
            _c_i8p,
            _c_int,
            _c_int,
            _c_int,
            _c_int,
            _c_i8p,
            _c_long,
            _c_int,
        ],
        None,
    ),
}


def _library_path() -> Path | None:
    here = Path(__file__).resolve().parent
    candidates = sorted(here.glob("_native*.so")) + sorted(here.glob("_native*.pyd"))
    return candidates[0] if candidates else None


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str]:
    """Load the library once; returns (library, "") or (None, reason)."""
    path = _library_path()
    if path is None:
        return None, "the compiled library lowbit/ops/_native*.so is missing (reinstall: pip install -e .)"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"cannot load {path.name}: {exc}"
    for name, (argtypes, restype) in _SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None:
            return None, f"{path.name} lacks symbol {name} (stale build: python setup.py build_ext --inplace)"
        fn.argtypes = argtypes
        fn.restype = restype
    if not lib.lowbit_cpu_has_avx2():
        return None, "this CPU lacks AVX2+FMA; the pure-PyTorch reference kernels are used"
    logger.debug("loaded native kernels from %s", path)
    return lib, ""


def why_not_native() -> str:
    """Empty string when the native kernels are usable, else the reason they are not."""
    return _load()[1]


def available() -> bool:
    """True when the native AVX2 kernels are loaded and usable on this CPU."""
    return _load()[0] is not None


def lib() -> ctypes.CDLL:
    """The loaded library; raises RuntimeError with the reason when it is not usable."""
    loaded, reason = _load()
    if loaded is None:
        raise RuntimeError(f"native kernels unavailable: {reason}")
    return loaded
