"""Data-parallel ``lowbit train`` / ``lowbit compare`` under ``torchrun`` (torch.distributed, gloo on CPU).

``torchrun --nproc_per_node N -m lowbit train ...`` (or the ``lowbit`` script under torchrun) starts N
processes; ``launched()`` sees torchrun's environment and the commands go to ``lowbit.experiments.torchrun``
instead of the one-process path. What a run does with N processes:

* **Same global batch.** Every process holds the same seeded sampler and draws the same global batch (the
  ``--batch-size`` of one process); process r trains on rows ``[r·B/N, (r+1)·B/N)`` (B must divide by N).
  The per-process losses are means over equal shards, so averaging the gradients (DDP, or FSDP2's
  reduce-scatter) gives the gradient of the global mean loss. The logged loss is the all-reduced mean.
* **Same statistics.** The converted layers' recipes get ``group`` (a process group of their own): LSQ step
  initialisation and gradient scale, the Hadamard block search, the bit-split scale and its noise counter,
  leverage-score normalisation and draws are those of the whole batch (``lowbit.training.distributed``).
  The result equals one process's up to float summation order (a sum of shards is not bit-identical to one
  sum, and a quantizer can round a value that moved by one ulp the other way).
* **Seeds.** Model init, data order and the layers' generators come from the run seed as in one process
  (identical in every process); the torch global stream (dropout) of process r > 0 is reseeded from
  ``(seed, r, step)`` at each step, so a run is reproducible and resumes exactly, but dropout masks of
  r > 0 are independent draws, not one process's (no registered task uses dropout in training but bert-rt).
* **Rank 0 speaks.** Progress, logs, metrics.json, checkpoints, --json and reports come from rank 0 only.
  Evaluation batches are dealt round-robin to the processes and the sums all-reduced.
* **FSDP2** (``--fsdp``): each ``nn.ModuleList`` element (Transformer block) and the root are
  ``fully_shard``-ed, so weights, biases and their AdamW moments are sharded over the processes exactly like
  nn.Linear's. FSDP2 cannot shard 0-dim parameters: the LSQ steps (one scalar per tensor) stay replicated
  and their gradients are all-reduced here. Gradient clipping uses the global norm.
* **Checkpoints** are gathered to rank 0 and written by it (atomic, the one-process format: a checkpoint
  resumes under any world size, or in one plain process, with the identical next loss); every process reads
  the file on ``--resume`` (multi-node: the --out folder must be on a shared file system).
* **Failures.** Collectives time out after ``--dist-timeout`` seconds (gloo raises instead of hanging), and
  torchrun stops the other workers when one exits: a dead rank takes the run down with its error.

The process group is ``lowbit.experiments.parallel``; this module is the run of one process
(``DistributedRun``) and the sharded evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lowbit.experiments.build import lr_factor, make_optimizer
from lowbit.experiments.config import TrainConfig, derive_seed
from lowbit.experiments.divergence import TrainingDiverged
from lowbit.experiments.parallel import Parallel, PeerFailure, check_config, collective_error, shard
from lowbit.experiments.runner import Run
from lowbit.experiments.tasks.base import Task
from lowbit.training.distributed import all_sum
from lowbit.training.layers import attach_group
from lowbit.training.optim import STEP_NAMES, sync_step_lrs

logger = logging.getLogger(__name__)


# -- FSDP2 helpers -------------------------------------------------------------------------------------------
def _step_params(model: nn.Module) -> set[nn.Parameter]:
    return {p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in STEP_NAMES}


def _param_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names in the optimizer's state-dict order (the integer ids of ``state_dict()``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _by_name(state: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """An optimizer state dict keyed by integer ids → keyed by parameter names (torch.distributed form)."""
    return {
        "state": {order[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def _by_id(state: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """The inverse of :func:`_by_name`: the one-process ``optimizer.state_dict()`` layout."""
    index = {n: i for i, n in enumerate(order)}
    return {
        "state": {index[n]: v for n, v in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def _clip_grad_norm(params: list[nn.Parameter], max_norm: float, group: Any) -> None:
    """``clip_grad_norm_`` over sharded (DTensor) and replicated gradients: the global 2-norm."""
    from torch.distributed.tensor import DTensor

    sharded = replicated = 0.0
    for p in params:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            sharded += float(torch.linalg.vector_norm(p.grad.to_local(), dtype=torch.float64)) ** 2
        else:
            replicated += float(torch.linalg.vector_norm(p.grad, dtype=torch.float64)) ** 2
    total = math.sqrt(float(all_sum([sharded], group)[0]) + replicated)
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)


# -- the run -------------------------------------------------------------------------------------------------
class DistributedRun(Run):
    """A :class:`~lowbit.experiments.runner.Run` whose steps train on this process's shard of each batch."""

    def __init__(self, config: TrainConfig, task: Task | None, par: Parallel) -> None:
        check_config(config, par)
        self.par = par
        self._state_cache: dict[str, Any] | None = None
        super().__init__(config, task)
        attach_group(self.model, par.group)  # the quantizers' statistics over every process's rows
        self.train_model: nn.Module = self.model
        self._order: list[str] = []
        self._replicated: list[nn.Parameter] = []

    def wrap(self) -> None:
        """Wrap the (restored) model: DDP, or FSDP2 with a fresh optimizer holding the restored state."""
        if not self.par.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            # static graph: a model may hold parameters no step uses (e.g. a pooler), found once
            ddp = DistributedDataParallel
            self.train_model = ddp(self.model, forward_sync_buffers=False, static_graph=True)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        from torch.distributed.fsdp import fully_shard

        order = _param_order(self.model, self.optimizer)
        opt_state, sched_state = self.optimizer.state_dict(), self.scheduler.state_dict()
        ignored = _step_params(self.model)  # 0-dim: FSDP2 cannot shard them; replicated, reduced by hand
        for module in list(self.model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block, ignored_params=ignored)
        fully_shard(self.model, ignored_params=ignored)
        self._replicated = sorted(ignored, key=lambda p: order.index(_name_of(self.model, p)))
        self.optimizer = make_optimizer(self.model, self.config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.config)
        )
        self._order = _param_order(self.model, self.optimizer)
        if opt_state["state"]:  # resumed: shard the restored full optimizer state
            set_optimizer_state_dict(
                self.model,
                self.optimizer,
                _by_name(opt_state, order),
                options=StateDictOptions(full_state_dict=True),
            )
        self.scheduler.load_state_dict(sched_state)

    # -- checkpoints: gathered on rank 0, the one-process layout --------------------------------------------
    def state(self) -> dict[str, Any]:
        if self._state_cache is not None:
            return self._state_cache
        state = super().state()
        if self.par.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state["model"] = get_model_state_dict(self.model, options=options)
            optim = get_optimizer_state_dict(self.model, self.optimizer, options=options)
            state["optimizer"] = _by_id(optim, self._order) if self.par.main else {}
        return state

    def save(self) -> None:
        state = self.state()  # every process: FSDP gathers the shards
        if self.par.main:
            self._state_cache = state
            try:
                super().save()
            finally:
                self._state_cache = None
        dist.barrier(group=self.par.group)

    # -- the loop --------------------------------------------------------------------------------------------
    def loop(self, on_step: Callable[[int, float], None] | None = None) -> Any:
        """The runner's loop; a failed collective becomes a :class:`PeerFailure` that says what happened."""
        try:
            return super().loop(on_step)
        except RuntimeError as err:
            if not collective_error(err):
                raise
            par = self.par
            raise PeerFailure(
                f"rank {par.rank} of {par.world}: a collective with the other processes failed at step "
                f"{self.step + 1}: another process died or did not answer within --dist-timeout "
                f"({type(err).__name__}: {str(err).splitlines()[0][:300]}); the run stops. The last "
                f"checkpoint is in {self.config.out}: run the same command with --resume (any process count)"
            ) from err

    def train_step(self) -> tuple[float, int]:
        par, cfg = self.par, self.config
        if par.rank:  # the torch stream of ranks > 0 (dropout): a function of (seed, rank, step)
            torch.manual_seed(derive_seed(cfg.seed, f"torch:rank{par.rank}:step{self.step}"))
        batch = self.task.batch(shard(self.sampler.next(), par))
        loss = self.task.loss(self.train_model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        local = float(loss.detach())
        mean = float(torch.tensor(float(all_sum([local], par.group)[0]) / par.world, dtype=torch.float32))
        if not math.isfinite(mean):
            raise TrainingDiverged(f"the loss is {mean}")
        if par.fsdp:
            for p in self._replicated:  # the LSQ steps FSDP2 leaves alone: average their gradients
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=par.group)
                    p.grad.div_(par.world)
        if cfg.grad_clip > 0:
            params = list(self.model.parameters())
            if par.fsdp:
                _clip_grad_norm(params, cfg.grad_clip, par.group)
            else:  # DDP: every process holds the averaged gradients
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        sync_step_lrs(self.optimizer, lr_factor(self.step, cfg))
        self.optimizer.step()
        self.scheduler.step()
        return mean, self.task.units(batch) * par.world

    def evaluate(self) -> float:
        self.model.eval()
        try:
            value = evaluate(self.task, self.model, self.par)
        finally:
            self.model.train()
        self.history.eval_steps.append(self.step)
        self.history.eval_values.append(value)
        logger.info("%s/%s step %d: %s = %.4f", self.config.task, self.config.recipe, self.step,
                    self.task.eval_name, value)  # fmt: skip
        return value


def _name_of(model: nn.Module, param: nn.Parameter) -> str:
    return next(n for n, p in model.named_parameters() if p is param)


# -- sharded evaluation --------------------------------------------------------------------------------------
def _eval_plan(task: Task) -> tuple[list[Any], Callable[[nn.Module, Any], tuple[float, float]], float] | None:
    """(batches, batch → (sum, count), scale of sum/count) of the task's evaluation; None: not shardable."""
    from lowbit.experiments.tasks import classifiers as c
    from lowbit.experiments.tasks import gpt

    if isinstance(task, gpt.GPTShakespeareTask):
        from lowbit.data import sequential_batches

        cfg = task.config
        max_batches = None
        if cfg.max_eval_examples is not None:
            max_batches = math.ceil(cfg.max_eval_examples / gpt.EVAL_WINDOWS_PER_BATCH)
        batches = list(
            sequential_batches(task.val_tokens, cfg.seq_len, gpt.EVAL_WINDOWS_PER_BATCH, max_batches)
        )

        def loss_sum(model: nn.Module, b: Any) -> tuple[float, float]:
            _, loss = model(*b)
            return float(loss) * b[1].numel(), float(b[1].numel())

        return batches, loss_sum, 1.0
    if isinstance(task, (c.ViTFashionTask, c.BertRTTask)):
        batches: list[Any] = []
        step = c.EVAL_EXAMPLES_PER_BATCH
        if isinstance(task, c.ViTFashionTask):
            batches = [
                (task.x_test[i : i + step], task.y_test[i : i + step])
                for i in range(0, len(task.y_test), step)
            ]
        else:
            order = sorted(range(len(task.test_ids)), key=lambda i: len(task.test_ids[i]))
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                batches.append(task._collate([task.test_ids[i] for i in idx], task.test_labels[idx]))

        def correct(model: nn.Module, b: Any) -> tuple[float, float]:
            *inputs, labels = b
            return float((model(*inputs).argmax(dim=-1) == labels).sum()), float(labels.shape[0])

        return batches, correct, 100.0
    return None


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, par: Parallel) -> float:
    """The task's metric with its evaluation batches dealt round-robin to the processes, sums all-reduced.

    Under FSDP every process runs the same number of forwards (each forward all-gathers the weights): a
    process without a batch left repeats its first one and discards it.
    """
    plan = _eval_plan(task)
    if plan is None:  # an unknown task: every process evaluates everything (same forwards for FSDP)
        return float(task.evaluate(model))
    batches, score, scale = plan
    rounds = math.ceil(len(batches) / par.world)
    total = count = 0.0
    for k in range(rounds):
        i = k * par.world + par.rank
        if i < len(batches):
            s, c = score(model, batches[i])
            total, count = total + s, count + c
        elif par.fsdp:
            score(model, batches[0])
    total, count = all_sum([total, count], par.group).tolist()
    return scale * total / count
