"""A small Vision Transformer for 28×28 grey images (Fashion-MNIST), sized to train in minutes on a CPU.

Layout: non-overlapping patches flattened and embedded by one ``nn.Linear`` (``patch_embed``) → a learned
class token and learned position embeddings → ``depth`` pre-norm bidirectional ``Block``s → final norm →
``head`` (``nn.Linear``) on the class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.models.layers import ACTIVATIONS, ATTENTIONS, INIT_STD, NORMS, Block, make_norm

#: Std of the truncated-normal initialisation of linear weights, class token and position embeddings.


@dataclass(frozen=True)
class ViTConfig:
    """Sizes and architecture choices of ``ViT``; 7×7 patches give 16 patches + 1 class token."""

    image_size: int = 28
    patch_size: int = 7
    in_channels: int = 1
    n_classes: int = 10
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 256
    dropout: float = 0.0
    bias: bool = True
    attention: str = "softmax"
    norm: str = "layer"
    activation: str = "gelu"

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "patch_size",
            "in_channels",
            "n_classes",
            "dim",
            "depth",
            "heads",
            "mlp_dim",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ViTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"ViTConfig.image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.dim % self.heads != 0:
            raise ValueError(f"ViTConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ViTConfig.dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("attention", ATTENTIONS), ("norm", NORMS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ViTConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")

    @property
    def n_patches(self) -> int:
        """Number of patches per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Number of pixels in one flattened patch."""
        return self.in_channels * self.patch_size**2


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, C·p·p) non-overlapping patches in row-major order."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)


class ViT(nn.Module):
    """Vision Transformer classifier; ``forward(images)`` → logits (B, n_classes)."""

    def __init__(self, config: ViTConfig) -> None:
        """Build and initialise (truncated normal 0.02 for linears and embeddings, zero biases)."""
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(config.patch_dim, config.dim, bias=config.bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.n_patches + 1, config.dim))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(
                config.dim,
                config.heads,
                config.mlp_dim,
                attention=config.attention,
                norm=config.norm,
                activation=config.activation,
                causal=False,
                bias=config.bias,
                dropout=config.dropout,
            )
            for _ in range(config.depth)
        )
        self.norm = make_norm(config.norm, config.dim, bias=config.bias)
        self.head = nn.Linear(config.dim, config.n_classes)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) float, or (B, H, W) for one channel → logits (B, n_classes)."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        cfg = self.config
        if images.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"expected images of shape (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(images.shape)}"
            )
        x = self.patch_embed(patchify(images, cfg.patch_size))  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (B, N+1, D)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])  # (B, n_classes)
