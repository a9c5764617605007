"""The process group of a data-parallel run: joining it, this process's place and batch shard in it, and
the processes agreeing on an error (``lowbit.experiments.distributed`` describes the whole scheme)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lowbit.experiments.config import TrainConfig

#: Seconds a collective may wait for the other processes before it raises (``--dist-timeout``).
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run: rank, world size, FSDP or DDP, the statistics group."""

    rank: int
    world: int
    fsdp: bool = False
    group: Any = None  # process group of the quantizers' statistics (apart from the gradient collectives)

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0


def init(fsdp: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Parallel:
    """Join the torchrun process group (gloo) with collective timeouts; this process's :class:`Parallel`."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout))
    par = Parallel(dist.get_rank(), dist.get_world_size(), fsdp, group)
    if not par.main:  # one voice: warnings and errors only from the other ranks
        logging.getLogger("lowbit").setLevel(logging.WARNING)
    return par


def check_config(config: TrainConfig, par: Parallel) -> None:
    """ValueError when the global batch cannot be split evenly over the processes."""
    if config.batch_size % par.world:
        raise ValueError(
            f"--batch-size {config.batch_size} (the global batch) must be divisible by the {par.world} "
            f"processes; pass a multiple of {par.world}"
        )


def shard(draw: Any, par: Parallel) -> Any:
    """This process's rows of a sampler draw (a tensor, or a tuple of tensors sharing the batch dim)."""
    if isinstance(draw, torch.Tensor):
        return draw.chunk(par.world)[par.rank] if par.world > 1 else draw
    if isinstance(draw, (tuple, list)):
        return type(draw)(shard(d, par) for d in draw)
    raise TypeError(f"cannot shard a batch of type {type(draw).__name__}")


def agree(error: Exception | None, par: Parallel) -> Exception | None:
    """The first error any process met (so every process stops together), or None."""
    found: list[Any] = [None] * par.world
    dist.all_gather_object(found, None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        return error
    first = next((f for f in found if f is not None), None)
    return None if first is None else ValueError(first[1])


class PeerFailure(RuntimeError):
    """A collective failed: another process died, or did not answer within the timeout."""


def collective_error(err: BaseException) -> bool:
    """True when ``err`` comes from a failed collective (gloo, a lost connection, a timeout)."""
    text = str(err)
    return isinstance(err, dist.DistError) or any(k in text for k in ("gloo", "Connection", "Timed out"))
