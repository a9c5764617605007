"""``lowbit train`` / ``lowbit compare`` under ``torchrun``: detecting it, its flags, and each process's run
(``lowbit.experiments.distributed``); the commands' own ``_run_distributed`` drive it (the processes agree on
user errors, rank 0 reports)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from lowbit.experiments.config import TrainConfig
from lowbit.experiments.distributed import DistributedRun
from lowbit.experiments.parallel import DEFAULT_TIMEOUT, Parallel
from lowbit.experiments.tasks.base import Task

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True in a process started by ``torchrun`` (or with its environment variables set by hand)."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The data-parallel flags of ``train`` / ``compare`` (used only under torchrun)."""
    group = parser.add_argument_group("data parallel (under torchrun; see the README)")
    group.add_argument(
        "--fsdp",
        action="store_true",
        help="shard weights and optimizer state with FSDP2 (fully_shard) instead of replicating them (DDP)",
    )
    group.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds a collective waits for the other processes before it fails (default %(default)g)",
    )


def prepare(config: TrainConfig, task: Task | None, par: Parallel) -> DistributedRun:
    """Build (and with ``config.resume`` restore) this process's run, then wrap its model (DDP / FSDP2)."""
    if not par.main:  # rank 0 writes, reports and shows progress
        config = config.replace(progress=False, json=None)
    else:
        from lowbit.experiments.checkpoint import remove_stale_temps

        for folder in {Path(config.out), *([Path(config.json).parent] if config.json else [])}:
            remove_stale_temps(folder)  # temp files of saves killed mid-write (as runner.prepare)
    run = DistributedRun(config, task, par)
    if config.resume:
        run.restore()
    if not par.main:  # the loop's closing metrics.json of ranks > 0 goes to a scratch folder
        run.out = Path(tempfile.mkdtemp(prefix=f"lowbit-rank{par.rank}-"))
    run.wrap()
    return run


def close(run: DistributedRun) -> None:
    """Remove the scratch folder of a rank > 0 (its closing metrics.json)."""
    if not run.par.main:
        shutil.rmtree(run.out, ignore_errors=True)
