"""Tests for lowbit.models.layers: L1 LayerNorm, polynomial/softmax attention and the shared block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.models.layers import (
    Block,
    L1LayerNorm,
    SelfAttention,
    make_activation,
    make_norm,
    poly_attention_weights,
    softmax_attention_weights,
)


def test_l1_layernorm_matches_float64_reference(gen: torch.Generator) -> None:
    norm = L1LayerNorm(64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=gen))
        norm.bias.copy_(torch.randn(64, generator=gen))
    x = torch.randn(3, 5, 64, generator=gen) * 7 + 3  # far from zero mean / unit scale
    x[0, 0, 0] = 200.0  # an outlier moves the mean and the deviation
    x64 = x.double()
    mu = x64.sum(-1, keepdim=True) / 64
    mad = (x64 - mu).abs().sum(-1, keepdim=True) / 64
    ref = (x64 - mu) / (mad + norm.eps) * norm.weight.double() + norm.bias.double()
    torch.testing.assert_close(norm(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_l1_layernorm_output_has_unit_mean_abs_deviation(gen: torch.Generator) -> None:
    y = L1LayerNorm(32, bias=False)(torch.randn(10, 32, generator=gen) * 50)
    torch.testing.assert_close(y.mean(-1), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.abs().mean(-1), torch.ones(10), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kind", "cls"), [("layer", nn.LayerNorm), ("l1", L1LayerNorm)], ids=["layer", "l1"])
def test_make_norm(kind: str, cls: type) -> None:
    assert isinstance(make_norm(kind, 8), cls)


@pytest.mark.parametrize(("kind", "cls"), [("gelu", nn.GELU), ("relu", nn.ReLU)], ids=["gelu", "relu"])
def test_make_activation(kind: str, cls: type) -> None:
    assert isinstance(make_activation(kind), cls)


def test_unknown_kinds_raise() -> None:
    with pytest.raises(ValueError, match="'rms'"):
        make_norm("rms", 8)
    with pytest.raises(ValueError, match="'swish'"):
        make_activation("swish")
    with pytest.raises(ValueError, match="'linear'"):
        SelfAttention(8, 2, "linear", causal=True)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(10, 4, "softmax", causal=True)


def _causal(t: int) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool).tril()


def test_poly_weights_match_float64_reference_and_respect_the_mask(gen: torch.Generator) -> None:
    scores = torch.randn(2, 3, 6, 6, generator=gen) * 2
    b = torch.tensor([0.5, 1.0, -0.3]).view(3, 1, 1)
    delta = torch.tensor(-0.05)  # the sign is dropped: |δ|
    w = poly_attention_weights(scores, _causal(6), b, n=3, delta=delta)
    s64 = scores.double()
    num = torch.clamp(s64 + b.double(), min=0) ** 3 + 0.05
    num = torch.where(_causal(6), num, torch.zeros_like(num))
    ref = num / num.sum(-1, keepdim=True)
    torch.testing.assert_close(w.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 6), rtol=0, atol=1e-6)
    assert torch.all(w[..., ~_causal(6)] == 0)
    assert torch.all(w[..., 0, 0] == 1)  # the first position can only attend to itself


def test_poly_all_zero_row_stays_finite() -> None:
    w = poly_attention_weights(torch.full((1, 4), -5.0), None, b=0.0, n=2, delta=0.0)
    assert torch.equal(w, torch.zeros(1, 4))


def test_softmax_weights_mask(gen: torch.Generator) -> None:
    scores = torch.randn(2, 5, 5, generator=gen)
    w = softmax_attention_weights(scores, _causal(5))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5))
    assert torch.all(w[:, ~_causal(5)] == 0)


def test_softmax_attention_matches_torch_sdpa(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(32, 4, "softmax", causal=True)
    x = torch.randn(2, 7, 32, generator=gen)
    q, k, v = (p(x).view(2, 7, 4, 8).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    y_ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 7, 32)
    torch.testing.assert_close(attn(x), attn.out_proj(y_ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ["softmax", "poly"], ids=["softmax", "poly"])
def test_causal_attention_ignores_the_future(attention: str, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, attention, causal=True)
    x = torch.randn(1, 8, 16, generator=gen)
    x_changed = x.clone()
    x_changed[:, 5:] = torch.randn(1, 3, 16, generator=gen)
    y, y_changed = attn(x), attn(x_changed)
    torch.testing.assert_close(y[:, :5], y_changed[:, :5], rtol=0, atol=0)
    assert not torch.allclose(y[:, 5:], y_changed[:, 5:])


def test_bidirectional_attention_sees_the_future(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, "poly", causal=False)
    x = torch.randn(1, 8, 16, generator=gen)
    x_changed = x.clone()
    x_changed[:, -1] += 1.0
    assert not torch.allclose(attn(x)[:, 0], attn(x_changed)[:, 0])


def test_poly_parameters_learn(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    block = Block(16, 2, 32, attention="poly", norm="l1", activation="relu", causal=True)
    block(torch.randn(2, 6, 16, generator=gen)).square().sum().backward()
    assert block.attn.poly_b.shape == (2, 1, 1)
    assert block.attn.poly_b.grad is not None and block.attn.poly_b.grad.abs().sum() > 0
    assert block.attn.poly_delta.grad is not None and block.attn.poly_delta.grad.abs() > 0
    assert isinstance(block.norm1, L1LayerNorm) and isinstance(block.mlp.act, nn.ReLU)
