"""What a run records: its per-step history, its ``RunResult`` summary, and strict-JSON writing of both."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.files import atomic_write_text

METRICS_NAME = "metrics.json"
#: final_train_loss is the mean training loss of the last this-many steps (single batches are noisy).
FINAL_LOSS_WINDOW = 20


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
        return {k: json_number(v) for k, v in dataclasses.asdict(self).items()}


def json_number(value: Any) -> Any:
    """None for NaN/inf floats (strict JSON has no such numbers), the value otherwise."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


class History:
    """Per-step training losses and periodic evaluations; plain lists, so they fit a checkpoint."""

    def __init__(self, state: dict[str, list] | None = None) -> None:
        state = state or {}
        self.steps: list[int] = list(state.get("steps", []))
        self.losses: list[float] = list(state.get("losses", []))
        self.lrs: list[float] = list(state.get("lrs", []))
        self.eval_steps: list[int] = list(state.get("eval_steps", []))
        self.eval_values: list[float] = list(state.get("eval_values", []))

    def state(self) -> dict[str, list]:
        """The lists, for a checkpoint (``History(state)`` restores them)."""
        return {
            "steps": self.steps, "losses": self.losses, "lrs": self.lrs,
            "eval_steps": self.eval_steps, "eval_values": self.eval_values,
        }  # fmt: skip

    def final_train_loss(self) -> float | None:
        """Mean loss of the last ``FINAL_LOSS_WINDOW`` steps; None before the first step."""
        tail = self.losses[-FINAL_LOSS_WINDOW:]
        return sum(tail) / len(tail) if tail else None
