"""Fused requantization of int32 accumulators: native C (``ops/csrc/int_requant.c``) + PyTorch reference.

Both backends return identical integers (tested bit-exactly). ``backend="auto"`` uses native when
``lowbit.ops.backend()`` reports native kernels, else the reference (``lowbit.ops.why_not_native`` says why).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from lowbit.integer import kernels
from lowbit.ops import native, native_gemm

_P = ctypes.c_void_p
_L = ctypes.c_long
_I = ctypes.c_int
_Q = ctypes.c_int64

#: Elements below which a native call runs single-threaded.
SMALL_WORK = 1 << 16


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = native.lib()
    lib.lowbit_int_requant.argtypes = [_P, _L, _L, _L, _P, _P, _P, _I, _I, _P, _L, _I]
    lib.lowbit_int_requant.restype = None
    lib.lowbit_int_requant_rows.argtypes = [_P, _L, _L, _L, _P, _I, _P, _L, _I]
    lib.lowbit_int_requant_rows.restype = None
    lib.lowbit_int_norm.argtypes = [_P, _L, _L, _I, _I, _Q, _P, _I, _P, _P, _I]
    lib.lowbit_int_norm.restype = None
    lib.lowbit_int_attn_rows.argtypes = [
        _P,
        _L,
        _L,
        _L,
        _L,
        _I,
        _P,
        _I,
        _P,
        _Q,
        _Q,
        _Q,
        _Q,
        _I,
        _I,
        _Q,
        _P,
        _P,
        _I,
    ]
    lib.lowbit_int_attn_rows.restype = None
    lib.lowbit_int_attention.argtypes = [
        _P,
        _P,
        _P,
        _L,
        _L,
        _L,
        _L,
        _I,
        _P,
        _I,
        _P,
        _Q,
        _Q,
        _Q,
        _Q,
        _I,
        _I,
        _Q,
        _I,
    ]
    lib.lowbit_int_attention.argtypes += [_P, _I]
    lib.lowbit_int_attention.restype = None
    return lib


def _threads(work: int) -> int:
    """One thread for small calls (an OpenMP team costs more than it saves below ~64k elements)."""
    return native_gemm.threads() if work >= SMALL_WORK else 1


def _use_native(backend: str) -> bool:
    if backend == "reference":
        return False
    if backend == "native":
        native.lib()  # raises with the reason
        return True
    if backend == "auto":
        return native.available()
    raise ValueError(f"backend must be 'auto', 'native' or 'reference', got {backend!r}")


def _dyadic(x: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    m64, s64 = mult.to(torch.int64), shift.to(torch.int64)
    half = torch.where(s64 > 0, torch.ones_like(s64) << (s64 - 1).clamp_min(0), torch.zeros_like(s64))
    return (x.to(torch.int64) * m64 + half) >> s64


def _check_2d(acc: torch.Tensor, n_channels: int) -> None:
    if acc.dtype != torch.int32 or acc.dim() != 2 or acc.stride(1) != 1:
        raise ValueError(f"acc must be 2-D int32 with unit column stride, got {acc.dtype} {tuple(acc.shape)}")
    if acc.shape[1] != n_channels:
        raise ValueError(f"acc has {acc.shape[1]} columns but the multipliers have {n_channels}")


def requant_channels(
    acc: torch.Tensor,
    bias: torch.Tensor | None,
    mult: torch.Tensor,
    shift: torch.Tensor,
    *,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``y[i, j] = round_half_up(sat32(acc[i, j] + bias[j]) · mult[j] / 2^shift[j])`` (ReLU first if asked).

    Without ``residual``: returns int8 (M, N) saturated to [-127, 127]. With ``residual`` (int32 (M, N),
    contiguous): adds y into it in place (saturating to int32) and returns it. ``bias``/``mult``/``shift``
    are int32 (N,).
    """
    _check_2d(acc, mult.numel())
    for name, t in (("bias", bias), ("mult", mult), ("shift", shift)):
        if t is not None and (t.dtype != torch.int32 or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous int32 vector, got {t.dtype}")
    m, n = acc.shape
    if residual is not None and (
        residual.dtype != torch.int32 or residual.shape != acc.shape or not residual.is_contiguous()
    ):
        raise ValueError("residual must be a contiguous int32 tensor shaped like acc")
    if _use_native(backend):
        out = residual if residual is not None else torch.empty(m, n, dtype=torch.int8)
        _lib().lowbit_int_requant(
            acc.data_ptr(),
            m,
            n,
            acc.stride(0),
            bias.data_ptr() if bias is not None else None,
            mult.data_ptr(),
            shift.data_ptr(),
            int(relu),
            0 if residual is None else 1,
            out.data_ptr(),
            n,
            _threads(m * n),
        )
        return out
    x = acc.to(torch.int64)
    if bias is not None:
        x = (x + bias).clamp(-(2**31), 2**31 - 1)  # the accumulator plus bias saturates to int32
    if relu:
        x = x.clamp_min(0)
    y = _dyadic(x, mult, shift)
    if residual is None:
        return y.clamp(-127, 127).to(torch.int8)
    residual.copy_((y + residual).clamp(-(2**31), 2**31 - 1).to(torch.int32))
    return residual


def requant_rows(
    acc: torch.Tensor, row_mult: torch.Tensor, shift: int, out: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """``out[i, j] = clamp(round_half_up(acc[i, j] · row_mult[i] / 2^shift), ±127)`` into int8 ``out``.

    ``acc`` int32 (M, N) with unit column stride; ``row_mult`` int64 (M,); ``out`` int8 (M, N), unit column
    stride (may be a strided view, e.g. one head's columns of a (T, C) activation).
    """
    m, n = acc.shape
    _check_2d(acc, n)
    if row_mult.dtype != torch.int64 or row_mult.numel() != m or not row_mult.is_contiguous():
        raise ValueError("row_mult must be a contiguous int64 vector with one entry per row")
    if out.dtype != torch.int8 or out.shape != acc.shape or out.stride(1) != 1:
        raise ValueError("out must be int8, shaped like acc, with unit column stride")
    if _use_native(backend):
        _lib().lowbit_int_requant_rows(
            acc.data_ptr(),
            m,
            n,
            acc.stride(0),
            row_mult.data_ptr(),
            shift,
            out.data_ptr(),
            out.stride(0),
            _threads(m * n),
        )
        return out
    sh = torch.tensor(shift, dtype=torch.int64)
    out.copy_(_dyadic(acc, row_mult.reshape(m, 1), sh).clamp(-127, 127).to(torch.int8))
    return out


def norm_rows(x: torch.Tensor, kind: str, k: kernels.NormConstants, *, backend: str = "auto") -> torch.Tensor:
    """Integer L1 (``kind="l1"``) or standard (``"layer"``) LayerNorm of int32 rows (M, C) → int8 (M, C)."""
    if x.dtype != torch.int32 or x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous 2-D int32 tensor, got {x.dtype} {tuple(x.shape)}")
    if kind not in ("l1", "layer"):
        raise ValueError(f"kind must be 'l1' or 'layer', got {kind!r}")
    if not _use_native(backend):
        return (kernels.l1_layernorm if kind == "l1" else kernels.layernorm)(x, k)
    m, c = x.shape
    gamma, beta = k.gamma.to(torch.int32).contiguous(), k.beta.to(torch.int32).contiguous()
    out = torch.empty(m, c, dtype=torch.int8)
    _lib().lowbit_int_norm(
        x.data_ptr(),
        m,
        c,
        0 if kind == "l1" else 1,
        k.pre_shift,
        k.eps,
        gamma.data_ptr(),
        k.gamma_shift,
        beta.data_ptr(),
        out.data_ptr(),
        _threads(m * c),
    )
    return out


def attention_rows(
    scores: torch.Tensor,
    *,
    causal: bool,
    key_mask: torch.Tensor | None,
    row_const: int,
    poly_bias: torch.Tensor | None = None,
    delta: int = 0,
    exp: kernels.ExpConstants | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised integer attention weights of scores int32 (B, H, T, T): (int8 codes, int64 row multipliers).

    Poly (``poly_bias`` int64 (H, 1, 1), ``delta``) or softmax (``exp``) weights, masked by causality and
    ``key_mask`` (bool (B, T), True = real token), then :func:`kernels.normalize_rows`.
    """
    b, h, t, t2 = scores.shape
    if scores.dtype != torch.int32 or t != t2 or not scores.is_contiguous():
        raise ValueError(
            f"scores must be contiguous int32 (B, H, T, T), got {scores.dtype} {tuple(scores.shape)}"
        )
    if (poly_bias is None) == (exp is None):
        raise ValueError("give exactly one of poly_bias (poly attention) and exp (softmax attention)")
    if not _use_native(backend):
        mask = torch.ones(t, t, dtype=torch.bool).tril() if causal else None
        if key_mask is not None:
            km = key_mask.view(b, 1, 1, t)
            mask = km if mask is None else mask & km
        if poly_bias is not None:
            w = kernels.poly_weights(scores, poly_bias, delta, mask)
        else:
            w = kernels.softmax_weights(scores, exp, mask)
        codes, mult = kernels.normalize_rows(w, row_const)
        return codes, mult.squeeze(-1)
    codes = torch.empty(b, h, t, t, dtype=torch.int8)
    mult = torch.empty(b, h, t, dtype=torch.int64)
    km = key_mask.to(torch.uint8).contiguous() if key_mask is not None else None
    pb = poly_bias.reshape(h).to(torch.int64).contiguous() if poly_bias is not None else None
    e = exp or kernels.ExpConstants(1, 0, 0)
    _lib().lowbit_int_attn_rows(
        scores.data_ptr(),
        b * h * t,
        t,
        t,
        h,
        int(causal),
        km.data_ptr() if km is not None else None,
        0 if poly_bias is not None else 1,
        pb.data_ptr() if pb is not None else None,
        delta,
        e.ln2,
        e.b,
        e.c,
        kernels.EXP_MAX_SHIFT,
        kernels.ROW_FRAC_BITS,
        row_const,
        codes.data_ptr(),
        mult.data_ptr(),
        _threads(scores.numel()),
    )
    return codes, mult


def attention_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_head: int,
    *,
    causal: bool,
    key_mask: torch.Tensor | None,
    row_const: int,
    row_shift: int,
    poly_bias: torch.Tensor | None = None,
    delta: int = 0,
    exp: kernels.ExpConstants | None = None,
) -> torch.Tensor:
    """Native fused integer attention: int8 q, k, v (B, T, C) → int8 (B, T, C), one pass per (batch, head).

    The same integers as int_matmul scores → :func:`attention_rows` → int_matmul P·V → :func:`requant_rows`
    (``IntAttention`` runs that unfused path when tracing; tests check they agree bit for bit). Causal rows
    skip the masked upper triangle.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != torch.int8 or t.dim() != 3 or not t.is_contiguous() or t.shape != q.shape:
            raise ValueError(
                f"{name} must be contiguous int8 (B, T, C) like q, got {t.dtype} {tuple(t.shape)}"
            )
    if (poly_bias is None) == (exp is None):
        raise ValueError("give exactly one of poly_bias (poly attention) and exp (softmax attention)")
    b, t, c = q.shape
    if c % n_head:
        raise ValueError(f"C={c} is not divisible by n_head={n_head}")
    y = torch.empty(b, t, c, dtype=torch.int8)
    km = key_mask.to(torch.uint8).contiguous() if key_mask is not None else None
    pb = poly_bias.reshape(n_head).to(torch.int64).contiguous() if poly_bias is not None else None
    e = exp or kernels.ExpConstants(1, 0, 0)
    _lib().lowbit_int_attention(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        b,
        t,
        c,
        n_head,
        int(causal),
        km.data_ptr() if km is not None else None,
        0 if poly_bias is not None else 1,
        pb.data_ptr() if pb is not None else None,
        delta,
        e.ln2,
        e.b,
        e.c,
        kernels.EXP_MAX_SHIFT,
        kernels.ROW_FRAC_BITS,
        row_const,
        row_shift,
        y.data_ptr(),
        _threads(b * n_head * t * t),
    )
    return y
