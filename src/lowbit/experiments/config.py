"""The training configuration (one frozen dataclass the CLI parses into) and each task's default sizes.

Defaults are chosen so one ``lowbit train`` run finishes in a few minutes on 2 CPU cores; every size has a
flag to scale it up. Seeds: one ``--seed`` is split into independent streams (model init, data order,
quantizer stochastic rounding, dropout) with ``derive_seed``, so every recipe run with the same seed starts
from the same weights and sees the same batches in the same order.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

TASKS = ("gpt-shakespeare", "vit-fashion", "bert-rt")
#: What a run evaluates on: the task's test data (default) or a validation part of its training data.
EVAL_SPLITS = ("test", "val")
#: Fields added after checkpoints were first written, with the value they implicitly had before: left out of
#: the identity at that value, so older checkpoints still resume.
_LATER_FIELDS = {"eval_split": "test", "lsq_init": None, "lsq_lr": None}
#: The fields that describe where and how a run is written, not what it computes (excluded from identity).
_RUN_PLACEMENT_FIELDS = ("out", "resume", "progress", "checkpoint_every", "json")


@dataclass(frozen=True)
class TaskDefaults:
    """Default sizes of one task (documented in ``lowbit train --help``)."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    eval_every: int
    weight_decay: float = 0.01
    layers: int | None = None
    dim: int | None = None
    heads: int | None = None
    seq_len: int | None = None
    patch_size: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


#: gpt-shakespeare: 4 blocks x 128 wide char GPT, 64-character windows, 16 windows (1024 tokens) per step, 500
#:   steps; held-out loss over the first 512 windows (32k characters) of Hamlet.
#: vit-fashion: 4 blocks x 64 wide ViT (FFN 128) on 7x7 patches (16 tokens + class token), 64 images per step,
#:   900 steps (about one epoch); accuracy on all 10k test images.
#: bert-rt: all-MiniLM-L6-v2 (6 x 384, fixed) fine-tuned, snippets cut at 48 tokens, 16 per step, 150 steps;
#:   accuracy on the whole held-out split (2,550 snippets), measured at the end.
#: Sized for a few minutes per run on 2 busy CPU cores (with --threads 1); flags scale every size up.
TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "gpt-shakespeare": TaskDefaults(
        steps=500, batch_size=16, lr=3e-3, warmup_steps=30, eval_every=100, weight_decay=0.1,
        layers=4, dim=128, heads=4, seq_len=64, max_eval_examples=512,
    ),
    "vit-fashion": TaskDefaults(
        steps=900, batch_size=64, lr=2e-3, warmup_steps=50, eval_every=300, weight_decay=0.05,
        layers=4, dim=64, heads=4, patch_size=7,
    ),
    "bert-rt": TaskDefaults(
        steps=150, batch_size=16, lr=5e-5, warmup_steps=15, eval_every=150, weight_decay=0.01, seq_len=48,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; ``lowbit train`` parses its flags into this (``from_overrides``)."""

    task: str
    recipe: str = "fp32"
    steps: int = 600
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    checkpoint_every: int = 100
    layers: int | None = None
    dim: int | None = None
    heads: int | None = None
    seq_len: int | None = None
    patch_size: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    threads: int | None = None  # torch CPU threads; None = torch's default (set by the CLI, not the runner)
    data: str | None = None
    eval_split: str = "test"
    lsq_init: str | None = None  # overrides the int4 recipes' Recipe.lsq_init ("paper" | "mse")
    lsq_lr: float | None = None  # overrides the int4 recipes' Recipe.lsq_lr
    out: str = "runs/train"
    json: str | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        sizes = ("layers", "dim", "heads", "seq_len", "patch_size", "max_train_examples", "max_eval_examples")
        for name in (*sizes, "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 < self.lr < float("inf"):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            if not abs(getattr(self, name)) < float("inf"):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"warmup_steps, weight_decay and grad_clip must be >= 0, got "
                f"{self.warmup_steps}, {self.weight_decay}, {self.grad_clip}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"eval_split must be one of {EVAL_SPLITS}, got {self.eval_split!r}")
        if self.lsq_init is not None and self.lsq_init not in ("paper", "mse"):
            raise ValueError(f"lsq_init must be 'paper' or 'mse', got {self.lsq_init!r}")
        if self.lsq_lr is not None and not (self.lsq_lr >= 0 and self.lsq_lr < float("inf")):
            raise ValueError(f"lsq_lr must be a finite number >= 0, got {self.lsq_lr!r}")
        if self.dim is not None and self.heads is not None and self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")

    @classmethod
    def from_overrides(cls, task: str, **overrides: Any) -> TrainConfig:
        """The task's defaults (``TASK_DEFAULTS``) with every override that is not None applied."""
        if task not in TASK_DEFAULTS:
            raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"unknown TrainConfig fields {unknown}; known: {sorted(fields)}")
        values = dataclasses.asdict(TASK_DEFAULTS[task])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "checkpoint_every" not in overrides or overrides["checkpoint_every"] is None:
            values["checkpoint_every"] = values["eval_every"]
        return cls(task=task, **values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """The settings that determine the computation; a checkpoint resumes only under the same identity."""
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in _RUN_PLACEMENT_FIELDS and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])
        }


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one random stream of a run (``"init"``, ``"data"``, ``"quant"``, ``"torch"``)."""
    return (zlib.crc32(f"{stream}:{seed}".encode()) << 31 ^ (seed & 0x7FFFFFFF)) & 0x7FFF_FFFF_FFFF_FFFF
