"""Transformer building blocks shared by lowbit's GPT and ViT, including the Integer Transformer variants.

The Integer Transformer (Lin et al. 2020, docs/SPEC.md §2) changes three things so inference runs on integers:
polynomial attention instead of softmax, L1 LayerNorm (mean absolute deviation instead of the standard
deviation, no square root) and a ReLU FFN. Here they are ordinary FP32 training-time modules.

Every projection is an ``nn.Linear`` (so ``lowbit.convert`` can swap them); the attention products QKᵀ and PV
are plain ``torch.matmul`` calls, which stay in floating point during training (docs/SPEC.md §1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Standard deviation of the normal initialisation of weights and embeddings (GPT and ViT).
INIT_STD = 0.02
NORMS = ("layer", "l1")
ACTIVATIONS = ("gelu", "relu")
ATTENTIONS = ("softmax", "poly")

#: Polynomial attention defaults: exponent n, initial per-head bias b, initial floor δ (both learnable).
POLY_POWER = 2
POLY_BIAS_INIT = 1.0
POLY_DELTA_INIT = 0.01


class L1LayerNorm(nn.Module):
    """LayerNorm with the mean absolute deviation in place of the std: (x−μ)/(mean|x−μ|+eps)·γ+β."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        """A norm over the last dimension ``dim`` with learnable scale γ (ones) and shift β (zeros)."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over the last dimension."""
        centred = x - x.mean(dim=-1, keepdim=True)
        mad = centred.abs().mean(dim=-1, keepdim=True)
        y = centred / (mad + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, bias={self.bias is not None}"


def make_norm(kind: str, dim: int, bias: bool = True) -> nn.Module:
    """``"layer"`` → ``nn.LayerNorm``; ``"l1"`` → ``L1LayerNorm`` (the Integer Transformer's)."""
    if kind == "layer":
        return nn.LayerNorm(dim, bias=bias)
    if kind == "l1":
        return L1LayerNorm(dim, bias=bias)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def make_activation(kind: str) -> nn.Module:
    """``"gelu"`` → ``nn.GELU()`` (exact erf form); ``"relu"`` → ``nn.ReLU()``."""
    if kind == "gelu":
        return nn.GELU()
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {kind!r}; choose one of {ACTIVATIONS}")


def softmax_attention_weights(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last dim; ``mask`` (bool, broadcastable, True = may attend) excludes positions."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-1)


def poly_attention_weights(
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    b: torch.Tensor | float,
    n: int = POLY_POWER,
    delta: torch.Tensor | float = POLY_DELTA_INIT,
) -> torch.Tensor:
    """Polynomial attention: ``ReLU(s + b)^n + |δ|`` on unmasked positions, divided by its row sum.

    Masked positions get weight 0. With δ ≠ 0 every row sum is positive; a row that is all zero (δ = 0 and
    every ``s + b ≤ 0``) stays all zero instead of becoming NaN.
    """
    weights = F.relu(scores + b).pow(n) + torch.as_tensor(delta, dtype=scores.dtype).abs()
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    row_sum = weights.sum(dim=-1, keepdim=True)
    return weights / row_sum.clamp_min(torch.finfo(scores.dtype).tiny)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections and a softmax or polynomial weighting.

    Separate ``q_proj``/``k_proj``/``v_proj`` (rather than one fused linear) give Q, K and V their own
    quantization scales when the model is converted to integers. ``attention="poly"`` adds the learnable
    per-head bias ``poly_b`` (n_head, 1, 1) and floor ``poly_delta`` (scalar) of ``poly_attention_weights``.
    """

    def __init__(
        self, dim: int, n_head: int, attention: str, causal: bool, bias: bool = True, dropout: float = 0.0
    ) -> None:
        """Attention over ``dim`` features split into ``n_head`` heads; ``causal`` masks future positions."""
        super().__init__()
        if dim % n_head != 0:
            raise ValueError(f"dim {dim} is not divisible by n_head {n_head}")
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; choose one of {ATTENTIONS}")
        self.n_head, self.head_dim = n_head, dim // n_head
        self.attention, self.causal = attention, causal
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.poly_power = POLY_POWER
        if attention == "poly":
            self.poly_b = nn.Parameter(torch.full((n_head, 1, 1), POLY_BIAS_INIT))
            self.poly_delta = nn.Parameter(torch.tensor(POLY_DELTA_INIT))

    def attention_weights(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Row-normalised weights (B, H, T, T) from scaled scores (B, H, T, T)."""
        if self.attention == "poly":
            return poly_attention_weights(scores, mask, self.poly_b, self.poly_power, self.poly_delta)
        return softmax_attention_weights(scores, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) → (B, T, C)."""
        B, T, C = x.shape
        q, k, v = (
            proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if self.causal else None
        att = self.attn_dropout(self.attention_weights(scores, mask))
        y = torch.matmul(att, v)  # (B, H, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """Feed-forward block: ``fc_in`` → activation → ``fc_out``."""

    def __init__(
        self, dim: int, hidden: int, activation: str, bias: bool = True, dropout: float = 0.0
    ) -> None:
        """``dim`` → ``hidden`` → ``dim``."""
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden, bias=bias)
        self.act = make_activation(activation)
        self.fc_out = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) → (B, T, C)."""
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        n_head: int,
        mlp_hidden: int,
        *,
        attention: str = "softmax",
        norm: str = "layer",
        activation: str = "gelu",
        causal: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        """One block; the keyword options select the standard or the Integer Transformer variant."""
        super().__init__()
        self.norm1 = make_norm(norm, dim, bias=bias)
        self.attn = SelfAttention(dim, n_head, attention, causal, bias=bias, dropout=dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.norm2 = make_norm(norm, dim, bias=bias)
        self.mlp = MLP(dim, mlp_hidden, activation, bias=bias, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) → (B, T, C)."""
        x = x + self.resid_dropout(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))
