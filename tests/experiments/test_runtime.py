"""keep_freed_memory: a freed large buffer is reused without page faults (each mode in a fresh process, since
the heap a process already holds decides what a later allocation costs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lowbit.experiments.runtime import _mallopt

pytestmark = pytest.mark.skipif(_mallopt() is None, reason="not glibc: nothing to tune")

PROBE = """
import resource, sys, torch
from lowbit.experiments.runtime import keep_freed_memory
assert keep_freed_memory(sys.argv[1] == "keep") is True
sizes = [40 * 2**20 // 4, 100 * 2**20 // 4, 64 * 2**20 // 4]  # a step's worth of large buffers
for step in range(4):  # allocate, touch and free them, like the activations of a training step
    if step == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.ones(n) for n in sizes]
    total = sum(float(b.sum()) for b in buffers)
    del buffers
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_keep_freed_memory_avoids_page_faults():
    pages = 2 * 204 * 2**20 // 4096  # two steps of 204 MB
    assert _faults("default") > pages // 2  # glibc unmapped the freed buffers: every page faults in again
    # reused from the heap (at most one buffer may miss its old place when memalign padding makes it too big)
    assert _faults("keep") < pages // 4
