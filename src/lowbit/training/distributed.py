"""Batch-sharded statistics: what a recipe computes over the whole batch, when N processes each hold a shard.

Under data parallelism (``torchrun``, DDP or FSDP2) every process sees a shard of the rows of X and ∇Y. The
INT4 recipe's per-tensor statistics are computed over the *whole* batch in one process; with a process group
(``Recipe.group``, passed explicitly, never a global) they are all-reduced here, so N processes compute what
one process computes on the concatenated batch:

* LSQ step initialisation of the activations (``init_step``: the paper's ``2·mean|x|/√7`` from the global
  sum and count; the MSE-best step from all-reduced squared errors of every candidate, the same search);
* the Hadamard block search (``search_block``: the global quantization error of XH per candidate block);
* LSQ's step-gradient scale ``1/√(numel·7)`` with the global element count (``row_layout``);
* the bit-split scale ``max|∇Y|`` (global max) and the counter of its stochastic rounding noise: the noise of
  element ``(i, j)`` is ``hash(i·C + j)``, so a shard whose rows start at global row ``o`` uses the seed
  shifted by ``o·C`` (``shifted_seed``) and draws the very numbers the single process draws for those rows;
* leverage-score normalisation (``lowbit.training.leverage``: sums over all rows) and the Bernoulli draws (the
  uniforms of all ``2N`` global rows drawn in every process, each taking its rows' ones).
* int4-naive's per-tensor absmax of X and ∇Y, and int8's weight-gradient scales (per channel of ∇Y and per
  feature of X, both over the batch rows) (``lowbit.training.functional``).

Every process draws the same seeds from identically seeded generators, so the integer codes agree with the
single process wherever the float inputs do; they differ only by float summation order (a sum of shards is
not bit-identical to one sum), which can move a value across a rounding boundary.

``group=None`` means one process: every function then reduces to the local computation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from lowbit.formats import INT4_RANGE
from lowbit.training.bit_split import _GOLDEN32, _M32
from lowbit.training.hadamard_quant import block_transform, candidate_blocks
from lowbit.training.lsq import (
    LSQ_QPOS,
    MSE_FINE_POINTS,
    MSE_GRID_OCTAVES,
    MSE_GRID_POINTS,
    MSE_REFINE_ITERS,
    quant_sse,
)
from lowbit.training.lsq import (
    init_step as _local_init_step,
)


def world_size(group: Any) -> int:
    """Processes in ``group`` (1 for None)."""
    return 1 if group is None else dist.get_world_size(group)


def all_sum(values: list[float] | torch.Tensor, group: Any) -> torch.Tensor:
    """Element-wise float64 sum over the processes of ``group`` (a copy; local values for None)."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def all_max(values: list[float] | torch.Tensor, group: Any) -> torch.Tensor:
    """Element-wise float64 max over the processes of ``group``."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def gather_rows(values: list[float], group: Any) -> torch.Tensor:
    """(world, len(values)) float64: every process's ``values``, in rank order."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(1, -1)
    if group is None:
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.cat(out)


def row_layout(n_local: int, group: Any, extra: float | None = None) -> tuple[int, int, float | None]:
    """``(offset, total, max extra)``: this shard's first global row, the global row count, and the global
    max of ``extra`` (e.g. a local max|∇Y|), in one collective. Shards are in rank order."""
    rows = gather_rows([float(n_local), -math.inf if extra is None else float(extra)], group)
    rank = 0 if group is None else dist.get_rank(group)
    offset = int(rows[:rank, 0].sum())
    return offset, int(rows[:, 0].sum()), (None if extra is None else float(rows[:, 1].max()))


def shifted_seed(seed: int, offset_elements: int) -> int:
    """The seed whose counter-based noise at flat index ``i`` equals ``seed``'s at ``i + offset_elements``
    (the hash input is ``i·φ + seed`` modulo 2³²)."""
    return (seed + offset_elements * _GOLDEN32) & _M32


# -- LSQ step initialisation ---------------------------------------------------------------------------------
def _paper_step(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``2·mean|x|/√7`` over every shard (float32; 1 for an all-zero tensor), as ``lsq.lsq_init``."""
    v = x.detach().float()
    total, count = all_sum([float(v.abs().sum(dtype=torch.float64)), float(v.numel())], group).tolist()
    mean = torch.tensor(total / count if count else math.nan, dtype=torch.float32)  # as lsq.lsq_init
    s = 2.0 * mean / math.sqrt(LSQ_QPOS)
    return torch.where(s > 0, s, torch.ones_like(s))


def _sse(v: torch.Tensor, steps: list[float], buf: torch.Tensor, group: Any) -> list[float]:
    """The global quantization SSE of ``v`` at every step of ``steps`` (one collective)."""
    local = [quant_sse(v, s, buf) if v.numel() else 0.0 for s in steps]
    return all_sum(local, group).tolist()


def _mse_step(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``lsq.lsq_init_mse`` over every shard: the same grid, fine grid and refinement, on global errors."""
    v = x.detach().float().reshape(-1)
    hi, lo = (float(v.max()), float(v.min())) if v.numel() else (-math.inf, math.inf)
    hi, neg_lo = all_max([hi, -lo], group).tolist()
    if not (math.isfinite(hi) and math.isfinite(neg_lo)):
        if math.isinf(hi) and math.isinf(neg_lo) and hi < 0 and neg_lo < 0:  # no element anywhere
            return torch.tensor(1.0)
        return _paper_step(x, group)
    s_full = max(hi / INT4_RANGE.hi, neg_lo / -INT4_RANGE.lo)
    if s_full <= 0:
        return torch.tensor(1.0)
    ratio = 2.0 ** (-MSE_GRID_OCTAVES / (MSE_GRID_POINTS - 1))
    f32 = lambda s: float(torch.tensor(s, dtype=torch.float32))  # noqa: E731 - the step is stored as float32
    buf = torch.empty_like(v)
    coarse = [f32(s_full * ratio**k) for k in range(MSE_GRID_POINTS)] + [f32(float(_paper_step(v, group)))]
    best_s, best_e = s_full, math.inf
    for candidates in (coarse, None):
        if candidates is None:
            n = MSE_FINE_POINTS
            candidates = [f32(best_s * ratio ** (2 * k / (n - 1) - 1)) for k in range(n)]
        for s, e in zip(candidates, _sse(v, candidates, buf, group), strict=True):
            if e < best_e:
                best_s, best_e = s, e
    s = best_s
    for _ in range(MSE_REFINE_ITERS):
        q = torch.round(v / s).clamp_(*INT4_RANGE).double()
        qq, qv = all_sum([float(torch.dot(q, q)), float(torch.dot(q, v.double()))], group).tolist()
        if qq == 0:
            break
        s_new = f32(qv / qq)
        if not s_new > 0 or s_new == s:
            break
        (e,) = _sse(v, [s_new], buf, group)
        if e >= best_e:
            break
        best_s, best_e, s = s_new, e, s_new
    return torch.tensor(best_s, dtype=torch.float32)


def init_step(x: torch.Tensor, method: str | None, group: Any = None) -> torch.Tensor:
    """The initial LSQ step of the tensor whose shards the processes of ``group`` hold (``lsq.init_step``
    for None)."""
    if group is None:
        return _local_init_step(x, method)
    if method is None or method == "paper":
        return _paper_step(x, group)
    if method == "mse":
        return _mse_step(x, group)
    return _local_init_step(x, method)  # raises on the unknown name


def search_block(x: torch.Tensor, w: torch.Tensor, group: Any = None) -> int:
    """``hadamard_quant.search_block`` with X's error over every shard (W is the same in every process)."""
    blocks = candidate_blocks(x.shape[-1])
    xhs = [block_transform(x, g) for g in blocks]
    steps = [_paper_step(xh, group) for xh in xhs]
    x_sse = all_sum(
        [float(torch.linalg.vector_norm((xh / s).round().clamp(*INT4_RANGE) * s - xh, dtype=torch.float64))
         ** 2 for xh, s in zip(xhs, steps, strict=True)],
        group,
    ).tolist()  # fmt: skip
    best, best_err = 1, math.inf
    for g, e2 in zip(blocks, x_sse, strict=True):
        wh = block_transform(w, g)
        s = _local_init_step(wh, "paper")
        err = math.sqrt(e2) * float(torch.linalg.vector_norm((wh / s).round().clamp(*INT4_RANGE) * s - wh))
        if err < best_err:
            best, best_err = g, err
    return best
