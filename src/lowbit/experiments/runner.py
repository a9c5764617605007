"""The training loop behind ``lowbit train`` and ``lowbit compare``: seeded build, recipe conversion, AdamW
with warmup + cosine, progress bar, periodic evaluation, metrics.json, atomic checkpoints and exact resume.

Divergence is handled alike for every recipe: a non-finite loss, or a layer refusing non-finite activations
(the integer kernels do), stops the run with a "training diverged" warning; metrics.json records
``diverged_at`` and the last checkpoint before it stays. Any other exception is a bug and propagates. The
progress bar is drawn only when stderr is a terminal; otherwise a plain line every ``PROGRESS_LOG_SECONDS``
(``lowbit.experiments.progress``).
Checkpoints also hold a digest of the task's data, so a resume on edited data is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lowbit.experiments.build import (
    REFERENCE_RECIPE,
    apply_recipe,
    check_recipe,
    lr_factor,
    make_optimizer,
    module_generators,
    recipe_settings,
    resolve_recipe,
)
from lowbit.experiments.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from lowbit.experiments.config import TrainConfig, derive_seed
from lowbit.experiments.divergence import TrainingDiverged, nonfinite_site
from lowbit.experiments.guard import note_checkpoint
from lowbit.experiments.metrics import METRICS_NAME, History, RunResult, json_number, write_json
from lowbit.experiments.progress import Progress
from lowbit.experiments.tasks import make_task
from lowbit.experiments.tasks.base import Task
from lowbit.training.optim import sync_step_lrs

logger = logging.getLogger(__name__)


class Run:
    """One training run: everything the loop needs, built in a fixed order so seeds always mean the same."""

    def __init__(self, config: TrainConfig, task: Task | None = None) -> None:
        check_recipe(config.recipe)
        self.config = config
        self.out = Path(config.out)
        self.task = task if task is not None else make_task(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "init"))
            self.model = self.task.build_model()
        self.recipe = (
            config.recipe if config.recipe == REFERENCE_RECIPE else resolve_recipe(config, self.task)
        )
        self.convert_summary = apply_recipe(self.model, self.recipe, config.seed, self.task.keep_fp32)
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.sampler = self.task.make_sampler(torch.Generator().manual_seed(derive_seed(config.seed, "data")))
        self.torch_rng = torch.Generator().manual_seed(derive_seed(config.seed, "torch")).get_state()
        self.history = History()
        self.step, self.seconds = 0, 0.0
        self.diverged_at: int | None = None

    # -- checkpoints -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The full training state (see lowbit.experiments.checkpoint for the layout)."""
        return {
            "identity": self.config.identity(), "step": self.step, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "modules": {k: g.get_state() for k, g in module_generators(self.model).items()},
            },
            "sampler": self.sampler.state_dict(), "history": self.history.state(), "seconds": self.seconds,
            "data": self.task.data_fingerprint(),
        }  # fmt: skip

    def restore(self) -> None:
        """Load ``out/checkpoint.pt`` (CheckpointError when absent, corrupt or from a different run)."""
        path = self.out / CHECKPOINT_NAME
        state = load_checkpoint(path, self.config.identity())
        saved_data, data = state.get("data"), self.task.data_fingerprint()
        if saved_data is not None and saved_data != data:
            sizes = [
                f"{k.replace('_', ' ')} {saved_data.get(k)} in the checkpoint, {data[k]} now"
                for k in ("vocab_size", "n_classes")
                if saved_data.get(k) != data[k]
            ]
            raise CheckpointError(
                f"the data changed since checkpoint {path} was written (content digest differs"
                + (f"; {', '.join(sizes)}" if sizes else "")
                + "): resume with the original --data, or start again with --overwrite"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:  # size mismatch: other data (vocabulary, classes) or model sizes
            lines = str(err).splitlines()
            detail = next((ln.strip() for ln in lines if "size mismatch" in ln), str(err)[:200])
            raise CheckpointError(
                f"checkpoint {path} holds a model of other shapes than this run's ({detail}); the data's "
                "vocabulary or classes changed: resume with the original --data, or start again with "
                "--overwrite"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        generators = module_generators(self.model)
        saved = state["rng"].get("modules", {})
        if set(saved) != set(generators):
            raise CheckpointError(
                f"checkpoint {self.out / CHECKPOINT_NAME} has random generators {sorted(saved)}, the model "
                f"has {sorted(generators)}; it was written by another lowbit version, run without --resume"
            )
        for key, generator in generators.items():
            generator.set_state(saved[key])
        self.torch_rng = state["rng"]["torch"]
        self.history = History(state["history"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        logger.info(
            "resumed %s/%s from %s at step %d", self.config.task, self.config.recipe, self.out, self.step
        )

    def save(self) -> None:
        """Checkpoint and metrics.json, both written atomically."""
        save_checkpoint(self.out / CHECKPOINT_NAME, self.state())
        note_checkpoint(self.out / CHECKPOINT_NAME)
        write_json(self.out / METRICS_NAME, self.metrics())

    def metrics(self) -> dict[str, Any]:
        """The content of metrics.json: config, data sizes, conversion summary, per-step loss, evaluations."""
        h = self.history
        return {
            "config": dataclasses.asdict(self.config), "data": self.task.describe(),
            "recipe": recipe_settings(self.recipe),
            "convert": str(self.convert_summary), "eval_name": self.task.eval_name,
            "step": self.step, "seconds": self.seconds,
            "train": {"step": h.steps, "loss": [json_number(v) for v in h.losses], "lr": h.lrs},
            "eval": {"step": h.eval_steps, "value": [json_number(v) for v in h.eval_values]},
            "diverged_at": self.diverged_at,
        }  # fmt: skip

    def result(self) -> RunResult:
        """The run's summary (after the loop)."""
        h = self.history
        return RunResult(
            task=self.config.task,
            recipe=self.config.recipe,
            steps=self.step,
            seconds=round(self.seconds, 3),
            final_train_loss=h.final_train_loss(),
            eval_metric=h.eval_values[-1] if h.eval_values else None,
            eval_name=self.task.eval_name,
        )

    # -- the loop ----------------------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Evaluate in eval mode (no grad), record it, return to train mode."""
        self.model.eval()
        try:
            value = float(self.task.evaluate(self.model))
        except (ValueError, RuntimeError) as err:
            site = nonfinite_site(self.model, lambda: self.task.evaluate(self.model))
            if site is None:
                raise
            raise TrainingDiverged(f"evaluation met a non-finite value at {site} ({err})") from err
        finally:
            self.model.train()
        self.history.eval_steps.append(self.step)
        self.history.eval_values.append(value)
        logger.info(
            "%s/%s step %d: %s = %.4f",
            self.config.task,
            self.config.recipe,
            self.step,
            self.task.eval_name,
            value,
        )
        return value

    def train_step(self) -> tuple[float, int]:
        """One optimizer step; (loss, units processed)."""
        batch = self.task.batch(self.sampler.next())
        try:
            loss = self.task.loss(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except (ValueError, RuntimeError) as err:  # e.g. a quantized layer refusing non-finite activations
            site = nonfinite_site(self.model, lambda: self.task.loss(self.model, batch))
            if site is None:
                raise  # not a divergence: a bug, shown with its traceback
            raise TrainingDiverged(f"a non-finite value reached {site} ({err})") from err
        if not math.isfinite(float(loss.detach())):
            raise TrainingDiverged(f"the loss is {float(loss.detach())}")
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        sync_step_lrs(self.optimizer, lr_factor(self.step, self.config))  # LSQ steps: lsq_lr·|s|·schedule
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), self.task.units(batch)

    def loop(self, on_step: Callable[[int, float], None] | None = None) -> RunResult:
        """Train from ``self.step`` to ``config.steps``; ``on_step(step, loss)`` is called after each step."""
        cfg = self.config
        torch.set_rng_state(self.torch_rng)
        self.model.train()
        progress = Progress(cfg, self.step, self.task.unit)
        try:
            while self.step < cfg.steps:
                loss = self._advance(progress)
                if loss is None:  # diverged
                    break
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                if on_step is not None:
                    on_step(self.step, loss)
        finally:
            progress.close()
        if self.diverged_at is None and (
            not self.history.eval_steps or self.history.eval_steps[-1] != self.step
        ):
            self.evaluate()  # a resumed run that had already finished without its final evaluation
            self.save()
        write_json(self.out / METRICS_NAME, self.metrics())
        return self.result()

    def _advance(self, progress: Progress) -> float | None:
        """One step of the loop: train, record, show progress and evaluate when due; the step's loss, or
        None when training diverged (recorded by ``_diverged``)."""
        cfg = self.config
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            loss, n = self.train_step()
        except TrainingDiverged as err:
            self._diverged(err, lr)
            return None
        dt = time.perf_counter() - t0
        self.step += 1
        self.history.steps.append(self.step)
        self.history.losses.append(loss)
        self.history.lrs.append(lr)
        progress.update(self.step, loss, n, dt)
        if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
            t1 = time.perf_counter()
            try:
                self.evaluate()
            except TrainingDiverged as err:
                self._diverged(err, None)
                return None
            dt += time.perf_counter() - t1
        self.seconds += dt
        return loss

    def _diverged(self, err: TrainingDiverged, lr: float | None) -> None:
        """Record a divergence (every recipe alike): a NaN loss at the step it happened (unless that step's
        loss was recorded already), a NaN evaluation, and a warning; the loop then stops. The last checkpoint
        (before the divergence) is kept; metrics.json records ``diverged_at``."""
        if lr is not None:
            self.step += 1
            self.history.steps.append(self.step)
            self.history.losses.append(math.nan)
            self.history.lrs.append(lr)
        if not self.history.eval_steps or self.history.eval_steps[-1] != self.step:
            self.history.eval_steps.append(self.step)
            self.history.eval_values.append(math.nan)
        self.diverged_at = self.step
        logger.warning(
            "%s/%s: training diverged at step %d: %s; stopped (lower --lr)",
            self.config.task,
            self.config.recipe,
            self.step,
            err,
        )


def prepare(config: TrainConfig, task: Task | None = None) -> Run:
    """Build a run (data, model, recipe, optimizer) and, with ``config.resume``, restore its checkpoint.

    Every error a user can cause (unknown recipe, missing --data file, incompatible checkpoint) is raised
    here, before training starts.
    """
    for folder in {Path(config.out), *([Path(config.json).parent] if config.json else [])}:
        remove_stale_temps(folder)  # temp files of saves killed mid-write
    run = Run(config, task)
    if config.resume:
        run.restore()
    return run


def finish(run: Run, on_step: Callable[[int, float], None] | None = None) -> RunResult:
    """Train a prepared run to the end; writes out/ and the --json file."""
    config = run.config
    result = run.loop(on_step)
    if config.json:
        write_json(config.json, result.to_dict())
    logger.info(
        "%s/%s: %d steps in %.1f s, final train loss %s, %s %s",
        config.task,
        config.recipe,
        result.steps,
        result.seconds,
        result.final_train_loss,
        result.eval_name,
        result.eval_metric,
    )
    return result


def train(
    config: TrainConfig, task: Task | None = None, on_step: Callable[[int, float], None] | None = None
) -> RunResult:
    """Run (or, with ``config.resume``, continue) one training run: ``finish(prepare(config, task))``."""
    return finish(prepare(config, task), on_step)
