"""Integer-only kernels: rounding division, Newton square root, L1/standard LayerNorm, polynomial and softmax
attention weights, i-exp and i-GELU (I-BERT style, Kim et al. 2021; own implementation from the paper's math).

Every function takes integer tensors and integer constants (folded at conversion time from the float scales by
the ``*_constants`` helpers, which are the only places floats appear) and returns integer tensors. Arithmetic
is int64 where products may exceed int32; results between operations are int8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.formats import INT8_SYMMETRIC, PROB_RANGE

#: i-exp: exp(p) ≈ EXP_A·(p + EXP_B)² + EXP_C on p ∈ (−ln2, 0] (I-BERT's second-order fit).
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344
#: i-GELU: erf(x) ≈ sign(x)·[GELU_A·(min(|x|, −GELU_B) + GELU_B)² + 1] (I-BERT's fit).
GELU_A, GELU_B = -0.2888, -1.769
#: Largest right shift applied by i-exp (2^-40 of the row maximum is below any int8 weight).
EXP_MAX_SHIFT = 40
#: isqrt starts at ceil(sqrt(2^63)) so one Newton iteration never increases an int64 estimate.
ISQRT_START = 3037000500
#: Fractional bits of the per-row attention multiplier ratio.
ROW_FRAC_BITS = 20


def round_div(num: torch.Tensor, den: torch.Tensor | int) -> torch.Tensor:
    """``floor(num/den + 1/2)`` for positive ``den``, exact in int64 (ties round up)."""
    num = num.to(torch.int64)
    den_t = torch.as_tensor(den, dtype=torch.int64)
    return torch.div(2 * num + den_t, 2 * den_t, rounding_mode="floor")


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """Integer square root ``floor(sqrt(n))`` of non-negative int64 by Newton's iteration (exact)."""
    if n.dtype != torch.int64:
        raise TypeError(f"isqrt takes int64, got {n.dtype}")
    if bool((n < 0).any()):
        raise ValueError("isqrt of a negative integer")
    x = torch.full_like(n, ISQRT_START)
    safe_n = n.clamp_min(1)
    while True:
        nxt = (x + torch.div(safe_n, x, rounding_mode="floor")) >> 1
        if not bool((nxt < x).any()):
            break
        x = torch.minimum(nxt, x)
    return torch.where(n == 0, torch.zeros_like(n), x)


# ---------------------------------------------------------------- LayerNorms


@dataclass(frozen=True)
class NormConstants:
    """Folded constants of an integer LayerNorm over C channels of an int32 input at a fixed scale."""

    pre_shift: int  # right shift of C·x − Σx before the statistics (keeps products in int64)
    eps: int  # eps in the units of the statistic (Σ|c| for L1, Σc²/C for the standard norm)
    gamma: torch.Tensor  # int64 (C,): round(γ / s_out · 2^gamma_shift)
    gamma_shift: int
    beta: torch.Tensor  # int64 (C,): round(β / s_out · 2^gamma_shift)


def norm_constants(
    kind: str,
    x_scale: float,
    x_absmax: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    out_scale: float | torch.Tensor,
) -> NormConstants:
    """Fold an FP32 norm (``kind`` "l1" or "layer") into integer constants for inputs at ``x_scale``.

    ``out_scale`` is per tensor or per channel (float64 (C,)): the output codes are ``y_j / out_scale_j``.
    """
    c = weight.numel()
    bound = 2.0 * c * (x_absmax / x_scale + 1)  # |C·x − Σx| ≤ 2·C·max|x|
    pre_shift = max(0, math.ceil(math.log2(bound)) - 24)
    unit = x_scale * 2**pre_shift / c  # one unit of the shifted centred value, in real terms
    eps_int = round(eps * c / unit) if kind == "l1" else round(eps / unit**2)
    g = weight.detach().to(torch.float64) / out_scale
    gmax = float(g.abs().max()) or 1.0
    gamma_shift = max(0, 15 - math.ceil(math.log2(gmax)))
    gamma = torch.round(g * 2**gamma_shift).to(torch.int64)
    beta = (
        torch.zeros(c, dtype=torch.int64)
        if bias is None
        else torch.round(bias.detach().to(torch.float64) / out_scale * 2**gamma_shift).to(torch.int64)
    )
    return NormConstants(pre_shift, max(eps_int, 1), gamma, gamma_shift, beta)


def _centred(x: torch.Tensor, k: NormConstants) -> torch.Tensor:
    """``round((C·x − Σx) / 2^pre_shift)`` in int64: C·(x − μ) without a division."""
    x64 = x.to(torch.int64)
    c = x.shape[-1]
    cx = x64 * c - x64.sum(-1, keepdim=True)
    if k.pre_shift:
        cx = (cx + (1 << (k.pre_shift - 1))) >> k.pre_shift
    return cx


def _affine(cx: torch.Tensor, den: torch.Tensor, k: NormConstants, extra: int) -> torch.Tensor:
    y = round_div(cx * extra * k.gamma + k.beta * den, den << k.gamma_shift)
    return y.clamp(*INT8_SYMMETRIC).to(torch.int8)


def l1_layernorm(x: torch.Tensor, k: NormConstants) -> torch.Tensor:
    """Integer L1 LayerNorm: ``(x−μ)/(mean|x−μ|+eps)·γ+β`` → int8, with one integer division per element."""
    cx = _centred(x, k)  # C·(x−μ) in shifted units
    den = cx.abs().sum(-1, keepdim=True) + k.eps  # C·Σ|x−μ| = C²·mad
    return _affine(cx, den, k, x.shape[-1])


def layernorm(x: torch.Tensor, k: NormConstants) -> torch.Tensor:
    """Integer LayerNorm: ``(x−μ)/sqrt(var+eps)·γ+β`` → int8, the std by integer Newton square root."""
    cx = _centred(x, k)
    c = x.shape[-1]
    var = torch.div((cx * cx).sum(-1, keepdim=True), c, rounding_mode="floor") + k.eps  # C²·var
    return _affine(cx, isqrt(var).clamp_min(1), k, 1)


# ---------------------------------------------------------------- attention weights


def normalize_rows(weights: torch.Tensor, row_const: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative int64 weights → (int8 codes in [0, 127] relative to the row max, int64 row multiplier).

    ``codes ≈ 127·w/max``; the row's true weights are ``codes·max/(127·Σw)``, so a later ``codes @ v``
    accumulator is rescaled by ``mult = row_const·max/Σw`` (``row_const`` folds the scales s_v/(127·s_y)).
    """
    wmax = weights.amax(-1, keepdim=True).clamp_min(1)
    wsum = weights.sum(-1, keepdim=True).clamp_min(1)
    codes = round_div(weights * PROB_RANGE.hi, wmax).to(torch.int8)
    ratio = round_div(wmax << ROW_FRAC_BITS, wsum)  # max/Σ in 2^-20 units, ≤ 2^20
    return codes, ratio * row_const


def poly_weights(
    scores: torch.Tensor, bias: torch.Tensor, delta: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """``ReLU(s + b)^2 + |δ|`` on integer scores (int32 accumulators), masked positions 0 (int64)."""
    t = (scores.to(torch.int64) + bias).clamp_min(0)
    w = t * t + delta
    if mask is not None:
        w = w.masked_fill(~mask, 0)
    return w


@dataclass(frozen=True)
class ExpConstants:
    """Folded constants of i-exp for inputs at scale S: ln2, the polynomial's b and c, all in S units."""

    ln2: int
    b: int
    c: int


def exp_constants(scale: float) -> ExpConstants:
    """Fold I-BERT's exp polynomial for integer inputs at ``scale`` (output scale EXP_A·scale²)."""
    ln2 = math.floor(math.log(2) / scale)
    if ln2 < 1:
        raise ValueError(f"i-exp needs a scale below ln 2, got {scale}")
    return ExpConstants(ln2, math.floor(EXP_B / scale), math.floor(EXP_C / (EXP_A * scale**2)))


def i_exp(q: torch.Tensor, k: ExpConstants) -> torch.Tensor:
    """``exp(q·S)`` for integer ``q ≤ 0`` as int64 at scale EXP_A·S²: exp = 2^-z·poly(p), q·S = p − z·ln2."""
    q = q.to(torch.int64)
    z = torch.div(-q, k.ln2, rounding_mode="floor").clamp(max=EXP_MAX_SHIFT)
    p = (q + z * k.ln2).clamp(min=-k.ln2)
    poly = (p + k.b) ** 2 + k.c
    return poly >> z


def softmax_weights(scores: torch.Tensor, k: ExpConstants, mask: torch.Tensor | None) -> torch.Tensor:
    """Un-normalised integer softmax numerators ``exp(s − max s)`` (int64), masked positions 0."""
    s = scores.to(torch.int64)
    if mask is not None:
        s = s.masked_fill(~mask, torch.iinfo(torch.int32).min)
    e = i_exp(s - s.amax(-1, keepdim=True), k)
    if mask is not None:
        e = e.masked_fill(~mask, 0)
    return e


# ---------------------------------------------------------------- i-GELU


@dataclass(frozen=True)
class GeluConstants:
    """Folded constants of i-GELU for inputs at scale S (erf argument at S/√2)."""

    b: int  # floor(GELU_B / S_erf) (negative)
    c: int  # floor(1 / (GELU_A · S_erf²)) (negative)
    one: int  # floor(1 / S_L): the "1 +" of (1 + erf) in erf units
    out_scale: float  # −S · S_L / 2 > 0 (S_L = GELU_A · S_erf² < 0), for the following requantization


def gelu_constants(scale: float) -> GeluConstants:
    """Fold I-BERT's erf polynomial for integer inputs at ``scale``."""
    s_erf = scale / math.sqrt(2.0)
    s_l = GELU_A * s_erf**2
    one = math.floor(1.0 / s_l)
    return GeluConstants(math.floor(GELU_B / s_erf), one, one, -scale * s_l / 2.0)


def i_gelu(q: torch.Tensor, k: GeluConstants) -> torch.Tensor:
    """``GELU(q·S)`` as int64 at scale ``k.out_scale``: ``−q·(L(q) + 1/S_L)`` with L the erf polynomial."""
    q = q.to(torch.int64)
    clipped = torch.minimum(q.abs(), torch.as_tensor(-k.b))
    erf_l = torch.sign(q) * ((clipped + k.b) ** 2 + k.c)
    return -q * (erf_l + k.one)
