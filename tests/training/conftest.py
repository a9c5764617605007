"""Training tests run single-threaded: on a loaded 2-core machine, OpenMP hand-offs on tiny tensors cost
milliseconds per op (measured: torch.round on 64x48 took 13 ms with 2 threads, 2 µs with 1)."""

from __future__ import annotations

from tests.helpers import single_thread  # noqa: F401  (autouse: this folder runs on one thread)
