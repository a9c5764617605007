"""Model tests run single-threaded: tiny matmuls on a shared, busy CPU are much slower with 2 threads."""

from __future__ import annotations

from tests.helpers import single_thread  # noqa: F401  (autouse: this folder runs on one thread)
