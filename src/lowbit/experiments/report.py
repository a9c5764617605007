"""``report.md`` for ``lowbit compare``: a results table (with the difference to fp32) and PNG curves.

Plots use ``matplotlib.figure.Figure`` directly (no pyplot, so no global backend or figure state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowbit.experiments.build import REFERENCE_RECIPE
from lowbit.experiments.metrics import RunResult
from lowbit.files import atomic_savefig, atomic_write_text

LOSS_PNG = "loss.png"
EVAL_PNG = "eval.png"
REPORT_MD = "report.md"
#: Moving-average window for the plotted training loss (the raw per-step loss is noisy).
SMOOTH_WINDOW = 10


def _fmt(value: float | None, digits: int = 4) -> str:
    """A number for the table; 'n/a' for missing, 'diverged' for NaN/inf."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "diverged"
    return f"{value:.{digits}f}"


def delta_text(value: float | None, reference: float | None, relative: bool) -> str:
    """``value - reference`` with its sign (and the relative change in % when ``relative``)."""
    if value is None or reference is None or not (math.isfinite(value) and math.isfinite(reference)):
        return "n/a"
    diff = value - reference
    text = f"{diff:+.4f}"
    if relative and reference != 0:
        text += f" ({100 * diff / reference:+.2f}%)"
    return text


def results_table(results: Sequence[RunResult], relative_delta: bool) -> str:
    """Markdown table: recipe, final train loss, eval metric, seconds, delta of the eval metric vs fp32."""
    eval_name = results[0].eval_name
    ref = next((r for r in results if r.recipe == REFERENCE_RECIPE), None)
    lines = [
        f"| recipe | steps | final train loss | {eval_name} | seconds | Δ {eval_name} vs fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        delta = delta_text(r.eval_metric, ref.eval_metric, relative_delta) if ref is not None else "n/a"
        if ref is r:
            delta = "—"
        metric = _fmt(r.eval_metric, 4 if relative_delta else 2)
        lines.append(
            f"| {r.recipe} | {r.steps} | {_fmt(r.final_train_loss)} | {metric} | {r.seconds:.1f} | {delta} |"
        )
    return "\n".join(lines)


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (NaN stays NaN)."""
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_curves(out: Path, task: str, eval_name: str, histories: dict[str, dict[str, Any]]) -> list[Path]:
    """loss.png (training loss vs step, smoothed) and eval.png (eval metric vs step), one line per recipe."""
    from matplotlib.figure import Figure

    paths = []
    curves = ((LOSS_PNG, "training loss", "train", "loss"), (EVAL_PNG, eval_name, "eval", "value"))
    for filename, ylabel, key, field in curves:
        fig = Figure(figsize=(7, 4.2), dpi=110)
        ax = fig.add_subplot()
        for recipe, metrics in histories.items():
            steps = metrics[key]["step"]
            values = [float("nan") if v is None else v for v in metrics[key][field]]
            if key == "train":
                values = _smooth(values, SMOOTH_WINDOW)
            ax.plot(steps, values, label=recipe, marker="o" if key == "eval" else None, linewidth=1.4)
        title_extra = f" (moving average over {SMOOTH_WINDOW} steps)" if key == "train" else ""
        ax.set(xlabel="step", ylabel=ylabel, title=f"{task}: {ylabel}{title_extra}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / filename
        atomic_savefig(fig, path)
        paths.append(path)
    return paths


def recipe_notes(histories: dict[str, dict[str, Any]]) -> str:
    """One line per INT4 recipe naming its LSQ settings (the step init can be the task's choice)."""
    lines = []
    for name, history in histories.items():
        r = history.get("recipe") or {}
        if r.get("lsq_init") is not None:
            block = r.get("hadamard_block") or "searched per layer"
            lines.append(
                f"- `{name}`: LSQ step init {r['lsq_init']}, relative step lr {r.get('lsq_lr')}, "
                f"Hadamard block {block}"
            )
    return "\n".join(lines)


def write_report(
    out: str | Path,
    results: Sequence[RunResult],
    histories: dict[str, dict[str, Any]],
    command: str,
    settings: dict[str, Any],
    higher_is_better: bool,
) -> Path:
    """Write ``out/report.md`` with the table and the two PNG curves; returns the report's path."""
    if not results:
        raise ValueError("no results to report; give at least one recipe")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task, eval_name = results[0].task, results[0].eval_name
    plot_curves(out, task, eval_name, histories)
    better = "higher" if higher_is_better else "lower"
    shown = ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
    notes = recipe_notes(histories)
    if notes:
        shown += "\n\nINT4 recipes as run:\n" + notes
    text = f"""# lowbit compare: {task}

Command: `{command}`

Settings: {shown}

Every recipe starts from the same initial weights and sees the same batches in the same order (same seed).
*final train loss* is the mean training loss of the last 20 steps; *{eval_name}* is measured on the held-out
data at the last step ({better} is better); *seconds* is the wall time of the training loop including the
periodic evaluations.

{results_table(results, relative_delta=not higher_is_better)}

## Curves

![training loss]({LOSS_PNG})

![{eval_name}]({EVAL_PNG})
"""
    path = out / REPORT_MD
    atomic_write_text(path, text)
    return path
