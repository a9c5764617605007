"""PTQ test fixtures: a tiny randomly initialised BertModel and token batches (single-threaded tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny matmuls on a shared CPU run faster on one thread; restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


@pytest.fixture
def batches() -> list[dict[str, torch.Tensor]]:
    """Three token batches (4 x 12) with a padded tail in the last one."""
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(3):
        ids = torch.randint(1, 120, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        if i == 2:
            mask[:, 9:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out
