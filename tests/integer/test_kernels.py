"""Integer kernels vs float64 references (error bounds) and exact-integer references (bit-exact). Their
native versions in lowbit.integer.fast, bit for bit against these: test_fast_exact.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lowbit.integer import kernels as K
from lowbit.models.layers import L1LayerNorm, poly_attention_weights

#: Error bounds: a correctly rounded int8 output is within 0.5 code; the integer statistics add < 0.1 code.
NORM_MAX_ERR_CODES = 0.6
#: I-BERT's exp polynomial: max abs error ~2e-3 of exp on [-ln2, 0]; plus integer rounding at scale 0.01.
EXP_MAX_ABS_ERR = 5e-3
#: I-BERT's erf fit: |GELU error| < 0.02 (paper: erf polynomial max error ~1.8e-2 near |x| = 1.5).
GELU_MAX_ABS_ERR = 0.02


def test_isqrt_exact_with_edges(gen: torch.Generator) -> None:
    n = torch.randint(0, 2**62, (5000,), generator=gen, dtype=torch.int64)
    edges = [0, 1, 2, 3, 4, 15, 16, 17, 2**62, 2**63 - 1, (2**31 - 1) ** 2, (2**31 - 1) ** 2 - 1]
    n = torch.cat([n, torch.tensor(edges, dtype=torch.int64)])
    assert K.isqrt(n).tolist() == [math.isqrt(int(v)) for v in n]
    with pytest.raises(ValueError, match="negative"):
        K.isqrt(torch.tensor([-1]))


def test_round_div_ties_and_signs() -> None:
    num = torch.tensor([5, -5, 4, -4, 7, 0])
    assert K.round_div(num, 2).tolist() == [3, -2, 2, -2, 4, 0]  # floor(x + 1/2)


@pytest.mark.parametrize("kind", ["l1", "layer"])
def test_norms_within_half_code(kind: str, gen: torch.Generator) -> None:
    c = 96
    x = torch.randn(32, c, generator=gen, dtype=torch.float64) * 3
    x[0] = 0.0  # all-equal row: the eps keeps the division defined
    x[1, 5] = 200.0  # planted outlier
    w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(c, generator=gen, dtype=torch.float64) * 0.2
    mod = L1LayerNorm(c).double() if kind == "l1" else torch.nn.LayerNorm(c).double()
    with torch.no_grad():
        mod.weight.copy_(w)
        mod.bias.copy_(b)
        ref = mod(x)
    s_x = float(x.abs().max()) / 2**20
    s_out = float(ref.abs().max()) / 127
    k = K.norm_constants(kind, s_x, float(x.abs().max()), w, b, mod.eps, s_out)
    xi = torch.round(x / s_x).to(torch.int32)
    y = (K.l1_layernorm if kind == "l1" else K.layernorm)(xi, k)
    assert y.dtype == torch.int8
    assert (y.double() - ref / s_out).abs().max() <= NORM_MAX_ERR_CODES


def test_i_exp_error_bound() -> None:
    s = 0.01
    q = torch.arange(-3000, 1)
    e = K.i_exp(q, K.exp_constants(s)).double() * K.EXP_A * s * s
    assert (e - torch.exp(q.double() * s)).abs().max() <= EXP_MAX_ABS_ERR
    with pytest.raises(ValueError, match="below ln 2"):
        K.exp_constants(1.0)


def test_i_gelu_error_bound() -> None:
    s = 1e-3
    q = torch.arange(-8000, 8001)
    k = K.gelu_constants(s)
    g = K.i_gelu(q, k).double() * k.out_scale
    assert (g - F.gelu(q.double() * s)).abs().max() <= GELU_MAX_ABS_ERR
    assert int(K.i_gelu(torch.tensor([0]), k)) == 0


def test_poly_weights_match_float_attention(gen: torch.Generator) -> None:
    s_sc = 1e-3
    scores = torch.randint(-3000, 3000, (2, 3, 8, 8), generator=gen, dtype=torch.int32)
    b_real = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1)
    delta_real = 0.01
    mask = torch.ones(8, 8, dtype=torch.bool).tril()
    w = K.poly_weights(scores, torch.round(b_real / s_sc).long(), round(delta_real / s_sc**2), mask)
    codes, row_mult = K.normalize_rows(w, 1)
    probs = codes.double() * row_mult.double() / (127 * 2**K.ROW_FRAC_BITS)
    ref = poly_attention_weights(scores.double() * s_sc, mask, b_real, 2, delta_real)
    assert codes.dtype == torch.int8 and int(codes.min()) >= 0
    assert (probs - ref).abs().max() <= 0.5 / 127 + 1e-6
    assert torch.all(codes.masked_select(~mask.expand_as(codes)) == 0)


def test_softmax_weights_match_softmax(gen: torch.Generator) -> None:
    s = 2e-3
    scores = torch.randint(-2000, 2000, (4, 16), generator=gen, dtype=torch.int32)
    w = K.softmax_weights(scores, K.exp_constants(s), None)
    codes, row_mult = K.normalize_rows(w, 1)
    probs = codes.double() * row_mult.double() / (127 * 2**K.ROW_FRAC_BITS)
    assert (probs - torch.softmax(scores.double() * s, -1)).abs().max() <= 0.01
