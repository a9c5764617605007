"""PTQ test fixtures: token batches for the tiny BertModel of tests/conftest.py (single-threaded tests)."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import single_thread  # noqa: F401  (autouse: this folder runs on one thread)


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
