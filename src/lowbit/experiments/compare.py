"""``lowbit compare --task T --recipes fp32,int8,int4,int4-naive``: same seed, same data order, one report.

Each recipe trains in ``OUT/<recipe>/`` (its own metrics.json and checkpoint, so ``--resume`` picks up an
interrupted comparison where it stopped); then ``OUT/results.json`` holds every result and ``OUT/report.md``
the table and the curves (``OUT/loss.png``, ``OUT/eval.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lowbit.experiments.build import check_recipe
from lowbit.experiments.checkpoint import CHECKPOINT_NAME, CheckpointError
from lowbit.experiments.config import TrainConfig
from lowbit.experiments.guard import check_fresh_run, check_output_dir, locked_output
from lowbit.experiments.metrics import RunResult, write_json
from lowbit.experiments.runner import finish, prepare
from lowbit.experiments.tasks import make_task
from lowbit.experiments.tasks.base import Task
from lowbit.experiments.train import (
    USER_ERRORS,
    add_common_arguments,
    apply_threads,
    config_from_args,
    report_user_error,
)

logger = logging.getLogger(__name__)

DEFAULT_RECIPES = "fp32,int8,int4,int4-naive"
RESULTS_NAME = "results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lowbit compare`` flags (the ``lowbit train`` ones, with --recipes instead of --recipe)."""
    add_common_arguments(parser)
    parser.add_argument(
        "--recipes", default=DEFAULT_RECIPES, help=f"comma-separated recipes (default {DEFAULT_RECIPES})"
    )
    parser.add_argument("--out", help="output folder (default runs/compare-TASK)")


def parse_recipes(text: str) -> list[str]:
    """``"fp32, int4"`` -> ``["fp32", "int4"]``; ValueError on an empty list or a repeated recipe."""
    recipes = [r.strip() for r in text.split(",") if r.strip()]
    if not recipes:
        raise ValueError(f"--recipes {text!r} names no recipe; e.g. --recipes {DEFAULT_RECIPES}")
    repeated = sorted({r for r in recipes if recipes.count(r) > 1})
    if repeated:
        raise ValueError(f"--recipes names {repeated} more than once")
    return recipes


def command_line(args: argparse.Namespace) -> str:
    """The ``lowbit compare`` command the parsed flags amount to (for the report)."""
    parts = ["lowbit", "compare"]
    for key, value in vars(args).items():
        if key.startswith("_") or key in ("command", "verbose") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


def compare(
    configs: Sequence[TrainConfig],
    out: str | Path,
    command: str = "lowbit compare",
    task: Task | None = None,
    *,
    prepare_run: Callable[[TrainConfig, Task], Any] = prepare,
    write: bool = True,
) -> tuple[list[RunResult], Path]:
    """Train every config (same task, different recipes) on one shared task; write results.json and report.md.

    Returns the RunResults and the report's path. ``task`` (default: built from the first config) is shared,
    so the data is loaded once. ``prepare_run`` builds each run (data parallelism passes its own) and
    ``write`` False skips results.json and the report (the processes other than rank 0).
    """
    from lowbit.experiments.report import write_report

    task = task if task is not None else setup(configs)
    results, histories = [], {}
    for config in configs:
        logger.info("compare %s: recipe %s", config.task, config.recipe)
        if config.resume and not (Path(config.out) / CHECKPOINT_NAME).is_file():
            # compare --resume continues the recipes that have a checkpoint and starts the others
            logger.info("no checkpoint in %s yet: %s starts from step 0", config.out, config.recipe)
            config = config.replace(resume=False)
        run = prepare_run(config, task)
        results.append(finish(run))
        histories[config.recipe] = run.metrics()
    out = Path(out)
    first = configs[0]
    settings = {k: v for k, v in first.identity().items() if k not in ("task", "recipe") and v is not None}
    summary = {"task": first.task, "command": command, "settings": settings}
    if not write:
        return results, out / "report.md"
    write_json(out / RESULTS_NAME, {**summary, "results": [r.to_dict() for r in results]})
    report = write_report(out, results, histories, command, settings, task.higher_is_better)
    return results, report


def setup(configs: Sequence[TrainConfig]) -> Task:
    """Check the configs (one task, known recipes) and load the task's data once; raises on user errors."""
    if not configs:
        raise ValueError("compare needs at least one recipe")
    if len({c.task for c in configs}) != 1:
        raise ValueError(f"compare runs one task at a time, got {sorted({c.task for c in configs})}")
    for config in configs:
        check_recipe(config.recipe)
    return make_task(configs[0])


def run(args: argparse.Namespace) -> int:
    """Run the comparison; print the results table on stdout; 2 on a user error (message on stderr)."""
    from lowbit.experiments import torchrun
    from lowbit.experiments.report import results_table

    if torchrun.launched():  # under torchrun: data-parallel training
        return _run_distributed(args)
    out = args.out or f"runs/compare-{args.task}"
    with contextlib.ExitStack() as stack:
        try:
            recipes = parse_recipes(args.recipes)
            configs = [config_from_args(args, r, str(Path(out) / r)) for r in recipes]
            folders = [Path(c.out) for c in configs]
            for folder in (Path(out), *folders):
                check_output_dir(folder)
            check_fresh_run(folders, args.resume, getattr(args, "overwrite", False))
            apply_threads(configs[0])
            task = setup(configs)  # the data, loaded once
            for folder in (Path(out), *folders):  # held until the comparison is written
                stack.enter_context(locked_output(folder))
            check_fresh_run(folders, args.resume, getattr(args, "overwrite", False))
        except USER_ERRORS as err:
            return report_user_error("compare", err)
        try:
            results, report = compare(configs, out, command_line(args), task)
        except CheckpointError as err:
            return report_user_error("compare", err)
    print(results_table(results, relative_delta=not task.higher_is_better))
    print(f"\nreport: {report}")
    print(json.dumps([r.to_dict() for r in results]))
    return 0


def _run_distributed(args: argparse.Namespace) -> int:
    """``lowbit compare`` under torchrun; rank 0 writes the report and prints the table."""
    import torch.distributed as dist

    from lowbit.experiments.distributed import DistributedRun
    from lowbit.experiments.parallel import PeerFailure, agree, check_config, init
    from lowbit.experiments.report import results_table
    from lowbit.experiments.torchrun import close, prepare

    par = init(args.fsdp, args.dist_timeout)
    out = args.out or f"runs/compare-{args.task}"
    try:
        with contextlib.ExitStack() as stack:
            err: Exception | None = None
            try:
                recipes = parse_recipes(args.recipes)
                configs = [config_from_args(args, r, str(Path(out) / r)) for r in recipes]
                check_config(configs[0], par)
                if par.main:
                    folders = [Path(c.out) for c in configs]
                    for folder in (Path(out), *folders):  # as compare.run: the comparison and each recipe
                        stack.enter_context(locked_output(folder))
                    check_fresh_run(folders, args.resume, getattr(args, "overwrite", False))
                    for folder in folders:
                        check_output_dir(folder)
                apply_threads(configs[0])
                task = setup(configs)
            except USER_ERRORS as e:
                err = e
            if (err := agree(err, par)) is not None:
                return report_user_error("compare", err) if par.main else 2
            runs: list[DistributedRun] = []

            def prepare_run(config: TrainConfig, task: Task) -> DistributedRun:
                runs.append(prepare(config, task, par))
                return runs[-1]

            try:
                results, report = compare(
                    configs, out, command_line(args), task, prepare_run=prepare_run, write=par.main
                )
            except PeerFailure as failure:
                print(f"lowbit compare: error: {failure}", file=sys.stderr)
                return 1
            finally:
                for r in runs:
                    close(r)
        if par.main:
            print(results_table(results, relative_delta=not task.higher_is_better))
            print(f"\nreport: {report}")
            print(json.dumps([r.to_dict() for r in results]))
        return 0
    finally:
        dist.destroy_process_group()
