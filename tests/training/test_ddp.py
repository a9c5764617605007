"""A converted model under torch.distributed DDP (gloo, 2 processes) gives the single-process gradients.

This test runs *without* ``Recipe.group``: each process computes its statistics on its own shard, and the gaps
below are what that costs. With the group set (as ``torchrun -m lowbit train`` does) the statistics are the
whole batch's and the gradients match on generic shards too: ``test_distributed.py``.

What must be deterministic for equality: (1) the quantizer randomness — the test's recipe uses nearest
rounding for the bit split and the keep-non-zero row selection, so no random draw enters; (2) the per-tensor
scales — the LSQ steps are initialised once, on the whole batch, *before* DDP wraps the model (DDP broadcasts
parameters only at construction; a lazy first-forward initialisation would give every rank its own step), and
the bit-split scale max|∇Y| is computed per process, so the exact check uses shards with identical per-tensor
statistics (the second shard is the first with its rows reversed, for a token-wise MLP); (3) LSQ's step
gradient scale 1/√(numel·7) uses the *local* numel of X, so under DDP the activation step gradients are
√world times the large-batch ones (checked as such; every other gradient is equal). With ordinary shards
the DDP gradient differs from the large-batch one by quantization noise only (second check, SQNR floor).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.helpers import sqnr_db
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lowbit.training import Recipe, convert, get_recipe

WORLD = 2
DDP_NOISE_FLOOR_DB = 12.0  # generic shards: per-process bit-split and LSQ statistics differ; a loose floor


def _recipe() -> Recipe:
    r = get_recipe("int4")
    return Recipe(
        "int4-deterministic", r.kind, r.fprop, r.dgrad, r.wgrad, lss="nonzero", grad_rounding="nearest"
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 4))
    convert(model, _recipe())
    return model


def _batches() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    half = torch.randn(16, 32, generator=gen)
    return {"mirror": torch.cat([half, half.flip(0)]), "generic": torch.randn(32, 32, generator=gen)}


def _grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _init_steps(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)  # lazy LSQ step initialisation on the whole batch, identical in every process


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for kind, x in _batches().items():
            model = _model()
            _init_steps(model, x)
            ddp = DistributedDataParallel(model)
            shard = x.chunk(WORLD)[rank]
            ddp.zero_grad(set_to_none=True)
            ddp(shard).pow(2).mean().backward()  # DDP averages the gradients over the ranks
            results[kind] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_match_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for kind, x in _batches().items():
        model = _model()
        _init_steps(model, x)
        single = _grads(model, x)
        assert set(single) == set(ranks[0][kind]) and any("x_step" in n for n in single)
        for name, g in single.items():
            assert torch.equal(ranks[0][kind][name], ranks[1][kind][name])  # all-reduced: same on all ranks
            if name.endswith("x_step"):
                g = g * WORLD**0.5  # LSQ gradient scale of the local numel (see the module docstring)
            if kind == "mirror":
                assert torch.allclose(ranks[0][kind][name], g, rtol=1e-5, atol=1e-7), name
            else:
                assert sqnr_db(g, ranks[0][kind][name]) > DDP_NOISE_FLOOR_DB, name
