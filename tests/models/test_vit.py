"""Tests for lowbit.models.vit: patching, shapes, config validation and a tiny overfit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.models.vit import ViT, ViTConfig, patchify

TINY = {"dim": 32, "depth": 2, "heads": 2, "mlp_dim": 64}


def test_patchify_matches_unfold(gen: torch.Generator) -> None:
    images = torch.randn(2, 3, 28, 28, generator=gen)
    ref = F.unfold(images, kernel_size=7, stride=7).transpose(1, 2)  # (B, N, C·p·p), channel-major patches
    assert torch.equal(patchify(images, 7), ref)


def test_default_config_sizes() -> None:
    cfg = ViTConfig()
    assert (cfg.n_patches, cfg.patch_dim) == (16, 49)
    assert ViTConfig(patch_size=4).n_patches == 49


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 5}, "not divisible by patch_size"),
        ({"dim": 30, "heads": 4}, "divisible by heads"),
        ({"depth": 0}, "depth"),
        ({"norm": "batch"}, "norm='batch'"),
    ],
    ids=["patch", "heads", "depth", "norm"],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViTConfig(**kwargs)


@pytest.mark.parametrize(
    "variant",
    [{}, {"attention": "poly", "norm": "l1", "activation": "relu"}],
    ids=["standard", "integer-transformer"],
)
def test_shapes_head_and_linears(variant: dict, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    model = ViT(ViTConfig(**TINY, **variant))
    images = torch.randn(5, 28, 28, generator=gen)
    logits = model(images)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(model(images.unsqueeze(1)), logits)
    assert isinstance(model.head, nn.Linear) and isinstance(model.patch_embed, nn.Linear)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2 * 6 + 2
    with pytest.raises(ValueError, match="expected images of shape"):
        model(torch.randn(2, 3, 28, 28))


def test_overfits_a_tiny_batch(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    model = ViT(ViTConfig(**TINY))
    images = torch.randn(16, 1, 28, 28, generator=gen)
    labels = torch.arange(16) % 10
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(50):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.25
    assert torch.equal(model(images).argmax(-1), labels)
