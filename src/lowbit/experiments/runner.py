"""The training loop behind ``lowbit train`` and ``lowbit compare``: seeded build, recipe conversion, AdamW
with warmup + cosine, progress bar, periodic evaluation, metrics.json, atomic checkpoints and exact resume.

Divergence is handled alike for every recipe: a non-finite loss, or a layer refusing non-finite activations
(the integer kernels do), stops the run with a "training diverged" warning; metrics.json records
``diverged_at`` and the last checkpoint before it stays. Any other exception is a bug and propagates. The
progress bar is drawn only when stderr is a terminal; otherwise a plain line every ``PROGRESS_LOG_SECONDS``.
Checkpoints also hold a digest of the task's data, so a resume on edited data is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.experiments.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from lowbit.experiments.config import TrainConfig, derive_seed
from lowbit.experiments.guard import note_checkpoint
from lowbit.experiments.tasks import make_task
from lowbit.experiments.tasks.base import Task
from lowbit.training.optim import sync_step_lrs

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
REFERENCE_RECIPE = "fp32"
#: final_train_loss is the mean training loss of the last this-many steps (single batches are noisy).
FINAL_LOSS_WINDOW = 20
#: Without a terminal on stderr: one progress line every this many seconds (and at the first and last step).
PROGRESS_LOG_SECONDS = 10.0


class TrainingDiverged(Exception):
    """Training blew up (non-finite loss, or non-finite values reaching a layer): the run stops there."""


def _nonfinite_site(model: nn.Module, forward: Callable[[], Any]) -> str | None:
    """Where a diverged model first meets a non-finite value: a parameter or gradient, or a module whose
    floating input is not finite while ``forward()`` runs (which may raise); None when everything is finite.
    Tells a divergence (e.g. a quantized layer refusing NaN activations) from a bug."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"parameter {name}"
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return f"gradient of {name}"
    found: list[str] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if not found and any(
            isinstance(a, torch.Tensor) and a.is_floating_point() and not bool(torch.isfinite(a).all())
            for a in args
        ):
            found.append(f"the input of {names.get(module, type(module).__name__)}")

    names = {m: n or "the model" for n, m in model.named_modules()}
    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            forward()
    except Exception:  # the forward that failed before fails again; the hooks have seen its inputs
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


@dataclass(frozen=True)
class RunResult:
    """What one run produced; ``to_dict`` is the ``--json`` file's content."""

    task: str
    recipe: str
    steps: int
    seconds: float
    final_train_loss: float | None
    eval_metric: float | None
    eval_name: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (non-finite numbers become null)."""
        return {k: _json_number(v) for k, v in dataclasses.asdict(self).items()}


def _json_number(value: Any) -> Any:
    """None for NaN/inf floats (strict JSON has no such numbers), the value otherwise."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then cosine decay to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases or norms); LSQ step sizes without decay in groups
    of their own, whose relative learning rate ``train_step`` sets (``lowbit.training.optim``)."""
    from lowbit.training.optim import param_groups

    groups = param_groups(model, config.lr, config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` a submodule holds as an attribute (e.g. a quantizer's stochastic rounding),
    keyed ``"module.path:attribute"``, so checkpoints can save and restore their states."""
    found: dict[str, torch.Generator] = {}
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{module_name}:{attr}"] = value
    return found


def resolve_recipe(config: TrainConfig, task: Task | None = None) -> Any:
    """The recipe a run converts with: ``config.recipe`` (a name), with ``config.lsq_init`` and
    ``config.lsq_lr`` applied when given and the recipe has LSQ steps (kind "int4"; others ignore them); a
    recipe that leaves its step initialisation open (``lsq_init`` None) gets ``task.lsq_init`` ("paper" when
    no task is given)."""
    from lowbit.training.recipes import get_recipe

    recipe = get_recipe(config.recipe)
    if recipe.kind != "int4":
        return recipe
    changes = {k: getattr(config, k) for k in ("lsq_init", "lsq_lr") if getattr(config, k) is not None}
    if recipe.lsq_init is None and "lsq_init" not in changes:
        changes["lsq_init"] = task.lsq_init if task is not None else "paper"
    return dataclasses.replace(recipe, **changes)


def apply_recipe(model: nn.Module, recipe: Any, seed: int, skip: tuple[str, ...] = ()) -> Any:
    """Convert ``model`` in place with ``lowbit.convert`` (head kept in FP32 by its default); its summary.

    ``fp32`` is the reference: the plain torch model, left as built. The converted layers' own generators
    (stochastic rounding, row sampling) are seeded by ``convert`` from the run's ``"quant"`` seed stream and
    each layer's name, independently of init and data order.
    """
    if recipe == REFERENCE_RECIPE or getattr(recipe, "name", None) == REFERENCE_RECIPE:
        return "fp32 reference: model left unconverted"
    import lowbit

    return lowbit.convert(model, recipe, skip=skip, seed=derive_seed(seed, "quant"))


def check_recipe(recipe: str) -> None:
    """ValueError naming the known recipes when ``recipe`` is not one (before any data is loaded)."""
    if recipe == REFERENCE_RECIPE:
        return
    from lowbit.training.recipes import get_recipe

    get_recipe(recipe)


def _recipe_settings(recipe: Any) -> Any:
    """What metrics.json records of the recipe: its name, and for kind int4 the LSQ settings it ran with."""
    if isinstance(recipe, str):
        return {"name": recipe}
    out = {"name": recipe.name, "kind": recipe.kind}
    if recipe.kind == "int4":
        out.update(lsq_init=recipe.lsq_init, lsq_lr=recipe.lsq_lr, hadamard_block=recipe.hadamard_block)
    return out


class _History:
    """Per-step training losses and periodic evaluations; plain lists, so they fit a checkpoint."""

    def __init__(self, state: dict[str, list] | None = None) -> None:
        state = state or {}
        self.steps: list[int] = list(state.get("steps", []))
        self.losses: list[float] = list(state.get("losses", []))
        self.lrs: list[float] = list(state.get("lrs", []))
        self.eval_steps: list[int] = list(state.get("eval_steps", []))
        self.eval_values: list[float] = list(state.get("eval_values", []))

    def state(self) -> dict[str, list]:
        return {
            "steps": self.steps, "losses": self.losses, "lrs": self.lrs,
            "eval_steps": self.eval_steps, "eval_values": self.eval_values,
        }  # fmt: skip

    def final_train_loss(self) -> float | None:
        tail = self.losses[-FINAL_LOSS_WINDOW:]
        return sum(tail) / len(tail) if tail else None


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
        self.history = _History()
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
        self.history = _History(state["history"])
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
            "recipe": _recipe_settings(self.recipe),
            "convert": str(self.convert_summary), "eval_name": self.task.eval_name,
            "step": self.step, "seconds": self.seconds,
            "train": {"step": h.steps, "loss": [_json_number(v) for v in h.losses], "lr": h.lrs},
            "eval": {"step": h.eval_steps, "value": [_json_number(v) for v in h.eval_values]},
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
            site = _nonfinite_site(self.model, lambda: self.task.evaluate(self.model))
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
            site = _nonfinite_site(self.model, lambda: self.task.loss(self.model, batch))
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
        from tqdm.auto import tqdm

        cfg = self.config
        torch.set_rng_state(self.torch_rng)
        self.model.train()
        units, train_time = 0, 0.0
        # a redrawn bar only on a terminal; otherwise (logs, pipes) a plain line every few seconds
        use_bar = cfg.progress and getattr(sys.stderr, "isatty", lambda: False)()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=f"{cfg.task} {cfg.recipe}",
            unit="step",
            disable=not use_bar,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        last_line = -math.inf
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                try:
                    loss, n = self.train_step()
                except TrainingDiverged as err:
                    self._diverged(err, lr)
                    break
                dt = time.perf_counter() - t0
                self.step += 1
                units, train_time = units + n, train_time + dt
                self.history.steps.append(self.step)
                self.history.losses.append(loss)
                self.history.lrs.append(lr)
                rate = f"loss {loss:.4f}, {units / max(train_time, 1e-9):,.0f} {self.task.unit}/s"
                bar.update(1)
                bar.set_postfix_str(rate)
                now = time.monotonic()
                if (
                    cfg.progress
                    and not use_bar
                    and (now - last_line >= PROGRESS_LOG_SECONDS or self.step == cfg.steps)
                ):
                    print(f"{cfg.task} {cfg.recipe}: step {self.step}/{cfg.steps}, {rate}", file=sys.stderr)
                    sys.stderr.flush()
                    last_line = now
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    t1 = time.perf_counter()
                    try:
                        self.evaluate()
                    except TrainingDiverged as err:
                        self._diverged(err, None)
                        break
                    dt += time.perf_counter() - t1
                self.seconds += dt
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                if on_step is not None:
                    on_step(self.step, loss)
        finally:
            bar.close()
        if self.diverged_at is None and (
            not self.history.eval_steps or self.history.eval_steps[-1] != self.step
        ):
            self.evaluate()  # a resumed run that had already finished without its final evaluation
            self.save()
        write_json(self.out / METRICS_NAME, self.metrics())
        return self.result()

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
