"""Fixtures shared by several test folders. Plain helpers (``sqnr_db``, backend parameters, fuzz settings,
float64 references) live in tests/helpers.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator per test."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def tiny_bert() -> torch.nn.Module:
    """A 2-layer BertModel (hidden 64, FFN 128) with seeded random weights, eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=120,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    return BertModel(cfg).eval()
