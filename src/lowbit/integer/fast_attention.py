"""Native integer attention (``int_attn.c``, ``int_rows.c``) and its PyTorch reference path; re-exported by
:mod:`lowbit.integer.fast`, whose module docstring describes the kernels.
"""

from __future__ import annotations

import torch

from lowbit.integer import kernels
from lowbit.integer._native import _lib, _threads, native_kernels_enabled


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
    _check_one_weighting(poly_bias, exp)
    if not native_kernels_enabled(backend):
        return _attention_rows_reference(scores, causal, key_mask, row_const, poly_bias, delta, exp)
    codes = torch.empty(b, h, t, t, dtype=torch.int8)
    mult = torch.empty(b, h, t, dtype=torch.int64)
    km, pb, e = _kernel_operands(key_mask, poly_bias, h, exp)
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


def _check_one_weighting(poly_bias: torch.Tensor | None, exp: kernels.ExpConstants | None) -> None:
    if (poly_bias is None) == (exp is None):
        raise ValueError("give exactly one of poly_bias (poly attention) and exp (softmax attention)")


def _attention_rows_reference(
    scores: torch.Tensor,
    causal: bool,
    key_mask: torch.Tensor | None,
    row_const: int,
    poly_bias: torch.Tensor | None,
    delta: int,
    exp: kernels.ExpConstants | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_rows` in PyTorch (:mod:`lowbit.integer.kernels`): the same integers."""
    b, _, t, _ = scores.shape
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


def _kernel_operands(
    key_mask: torch.Tensor | None,
    poly_bias: torch.Tensor | None,
    heads: int,
    exp: kernels.ExpConstants | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, kernels.ExpConstants]:
    """The native kernels' key mask (uint8), per-head poly bias (int64), i-exp constants (unused for poly)."""
    km = key_mask.to(torch.uint8).contiguous() if key_mask is not None else None
    pb = poly_bias.reshape(heads).to(torch.int64).contiguous() if poly_bias is not None else None
    return km, pb, exp or kernels.ExpConstants(1, 0, 0)


def _check_fused_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_head: int,
    poly_bias: torch.Tensor | None,
    exp: kernels.ExpConstants | None,
    out_off: int,
) -> None:
    """q, k, v int8 (B, T, C) with q's row stride and unit column stride, one weighting, C % n_head == 0,
    out_off 0 or 128."""
    _, t, c = q.shape
    ld = q.stride(1)
    for name, x in (("q", q), ("k", k), ("v", v)):
        ok = x.dtype == torch.int8 and x.dim() == 3 and x.shape == q.shape and x.stride(2) == 1
        if not ok or x.stride(1) != ld or x.stride(0) != t * ld or ld < c:
            raise ValueError(
                f"{name} must be int8 (B, T, C) like q with unit column stride and q's row stride, got "
                f"{x.dtype} {tuple(x.shape)} strides {x.stride()}"
            )
    _check_one_weighting(poly_bias, exp)
    if c % n_head:
        raise ValueError(f"C={c} is not divisible by n_head={n_head}")
    if out_off not in (0, 128):
        raise ValueError(f"out_off must be 0 or 128, got {out_off}")


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
    out_off: int = 0,
) -> torch.Tensor:
    """Native fused integer attention: int8 q, k, v (B, T, C) → int8 (B, T, C), one pass per (batch, head).

    The same integers as int_matmul scores → :func:`attention_rows` → int_matmul P·V → :func:`requant_rows`
    (``IntAttention`` runs that unfused path when tracing; tests check they agree bit for bit). Causal rows
    skip the masked upper triangle. q, k, v may be column slices of one (B, T, 3C) tensor (a shared row
    stride, unit column stride). ``out_off=128``: returns uint8 ``code + 128``.
    """
    _check_fused_args(q, k, v, n_head, poly_bias, exp, out_off)
    b, t, c = q.shape
    y = torch.empty(b, t, c, dtype=torch.uint8 if out_off else torch.int8)
    km, pb, e = _kernel_operands(key_mask, poly_bias, n_head, exp)
    lib = _lib()
    # head dims that are multiples of 16 take the blocked SIMD kernel (int_attn.c), others the row kernel
    fn = lib.lowbit_int_attention_blocked if (c // n_head) % 16 == 0 else lib.lowbit_int_attention
    fn(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        q.stride(1),  # the row stride q, k, v share
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
        c,
        out_off,
        _threads(b * n_head * t * t),
    )
    return y
