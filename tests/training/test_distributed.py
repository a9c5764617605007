"""Batch-sharded statistics (``lowbit.training.distributed``): 2 gloo processes, each holding half the rows,
compute what one process computes on the whole batch.

With ``Recipe.group`` set, the LSQ step initialisation (paper and MSE), the Hadamard block search, LSQ's
gradient scale (global element count), the bit-split scale max|∇Y| and its stochastic-rounding noise counter,
and the leverage-score normalisation and Bernoulli draws (and int4-naive's absmax, int8's weight-gradient
scales) are those of the whole batch, so the DDP gradients of every recipe — stochastic ones included — equal
the single-process gradients up to float summation order (checked at ``RTOL``; without the group,
``test_ddp.py`` shows the gaps). Shards are generic (no mirror trick): the steps are initialised lazily inside
the DDP forward, identically on both ranks.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lowbit.training import convert, get_recipe
from lowbit.training import distributed as sharded
from lowbit.training.distributed import world_size
from lowbit.training.layers import attach_group
from lowbit.training.leverage import leverage_probabilities

WORLD = 2
RECIPES = ("int4", "int4-sample", "int4-mse", "int4-naive", "int8")
RTOL, ATOL = 1e-4, 1e-6  # float summation order only (a sum of two halves vs one sum)


def _model(recipe: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 4))
    convert(model, recipe, seed=3)
    return model


def _batch() -> torch.Tensor:
    return torch.randn(48, 32, generator=torch.Generator().manual_seed(1))


def _stats(x: torch.Tensor, group) -> dict[str, torch.Tensor]:
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    scores = x.abs().sum(1)
    budget = x.shape[0] * world_size(group) / 4
    return {
        "paper": sharded.init_step(x, "paper", group),
        "mse": sharded.init_step(x, "mse", group),
        "block": torch.tensor(sharded.search_block(x, w, group)),
        "p": leverage_probabilities(scores, budget, group),
    }


def _steps(model: nn.Module) -> torch.Tensor:
    return torch.stack([p.detach() for n, p in model.named_parameters() if "step" in n])


def _grads(model: nn.Module, run: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    run(x).pow(2).mean().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        group = dist.new_group()  # the statistics' own group, apart from DDP's gradient all-reduce
        x = _batch()
        shard = x.chunk(WORLD)[rank]
        results = {"stats": _stats(shard, group)}
        for recipe in RECIPES:
            model = _model(recipe)
            assert attach_group(model, group) == 2
            ddp = DistributedDataParallel(model, forward_sync_buffers=False)
            results[recipe] = _grads(model, ddp, shard)  # DDP averages the gradients over the ranks
            if get_recipe(recipe).kind == "int4":
                results[recipe]["steps"] = _steps(model)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sharded_statistics_and_gradients_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    x = _batch()
    single_stats = _stats(x, None)
    for name in ("paper", "mse", "block"):
        assert torch.allclose(ranks[0]["stats"][name], single_stats[name], rtol=1e-6), name
        assert torch.equal(ranks[0]["stats"][name], ranks[1]["stats"][name]), name
    p = torch.cat([ranks[0]["stats"]["p"], ranks[1]["stats"]["p"]])
    assert torch.allclose(p, single_stats["p"], rtol=1e-12) and abs(float(p.sum()) - x.shape[0] / 4) < 1e-9
    for recipe in RECIPES:
        model = _model(recipe)
        single = _grads(model, model, x)
        if get_recipe(recipe).kind == "int4":
            single["steps"] = _steps(model)
        for name, g in single.items():
            got = ranks[0][recipe][name]
            assert torch.equal(got, ranks[1][recipe][name]), (recipe, name)  # identical on every rank
            assert torch.allclose(got, g, rtol=RTOL, atol=ATOL), (recipe, name, (got - g).abs().max())


def test_recipe_group_is_not_part_of_its_identity() -> None:
    r = get_recipe("int4")
    with_group = dataclasses.replace(r, group=object())
    assert with_group == r and hash(with_group) == hash(r) and "group" not in repr(with_group)
