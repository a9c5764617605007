"""Training tests run single-threaded: on a loaded 2-core machine, OpenMP hand-offs on tiny tensors cost
milliseconds per op (measured: torch.round on 64x48 took 13 ms with 2 threads, 2 µs with 1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
