"""``lowbit train`` / ``lowbit compare`` under ``torchrun``: detecting it, its flags, each process's run,
the processes agreeing on user errors, and rank 0 reporting (``lowbit.experiments.distributed``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch.distributed as dist

from lowbit.experiments.config import TrainConfig
from lowbit.experiments.distributed import DistributedRun
from lowbit.experiments.parallel import DEFAULT_TIMEOUT, Parallel, PeerFailure, agree, check_config, init
from lowbit.experiments.runner import finish
from lowbit.experiments.tasks.base import Task

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True in a process started by ``torchrun`` (or with its environment variables set by hand)."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The data-parallel flags of ``train`` / ``compare`` (used only under torchrun)."""
    group = parser.add_argument_group("data parallel (under torchrun; see the README)")
    group.add_argument(
        "--fsdp",
        action="store_true",
        help="shard weights and optimizer state with FSDP2 (fully_shard) instead of replicating them (DDP)",
    )
    group.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds a collective waits for the other processes before it fails (default %(default)g)",
    )


def prepare(config: TrainConfig, task: Task | None, par: Parallel) -> DistributedRun:
    """Build (and with ``config.resume`` restore) this process's run, then wrap its model (DDP / FSDP2)."""
    if not par.main:  # rank 0 writes, reports and shows progress
        config = config.replace(progress=False, json=None)
    else:
        from lowbit.experiments.checkpoint import remove_stale_temps

        for folder in {Path(config.out), *([Path(config.json).parent] if config.json else [])}:
            remove_stale_temps(folder)  # temp files of saves killed mid-write (as runner.prepare)
    run = DistributedRun(config, task, par)
    if config.resume:
        run.restore()
    if not par.main:  # the loop's closing metrics.json of ranks > 0 goes to a scratch folder
        run.out = Path(tempfile.mkdtemp(prefix=f"lowbit-rank{par.rank}-"))
    run.wrap()
    return run


def _close(run: DistributedRun) -> None:
    """Remove the scratch folder of a rank > 0 (its closing metrics.json)."""
    if not run.par.main:
        shutil.rmtree(run.out, ignore_errors=True)


def run_train(args: argparse.Namespace) -> int:
    """``lowbit train`` under torchrun; rank 0 prints the result JSON."""
    from lowbit.experiments.guard import check_fresh_run, check_output_file, locked_output
    from lowbit.experiments.train import USER_ERRORS, apply_threads, config_from_args, report_user_error

    par = init(args.fsdp, args.dist_timeout)
    try:
        with contextlib.ExitStack() as stack:
            err: Exception | None = None
            try:
                config = config_from_args(args, args.recipe, args.out or f"runs/{args.task}-{args.recipe}")
                check_config(config, par)
                if par.main:
                    if config.json:
                        check_output_file(config.json, "--json")
                    stack.enter_context(locked_output(config.out))
                    check_fresh_run([Path(config.out)], config.resume, getattr(args, "overwrite", False))
                apply_threads(config)
            except USER_ERRORS as e:
                err = e
            if (err := agree(err, par)) is None:
                try:
                    prepared = prepare(config, None, par)
                except USER_ERRORS as e:
                    err = e
                err = agree(err, par)
            if err is not None:
                return report_user_error("train", err) if par.main else 2
            try:
                result = finish(prepared)
            except PeerFailure as failure:
                print(f"lowbit train: error: {failure}", file=sys.stderr)
                return 1
            finally:
                _close(prepared)
        if par.main:
            print(json.dumps(result.to_dict()))
        return 0
    finally:
        dist.destroy_process_group()


def run_compare(args: argparse.Namespace) -> int:
    """``lowbit compare`` under torchrun; rank 0 writes the report and prints the table."""
    from lowbit.experiments import compare as cmp
    from lowbit.experiments.guard import check_fresh_run, check_output_dir, locked_output
    from lowbit.experiments.report import results_table
    from lowbit.experiments.train import USER_ERRORS, apply_threads, config_from_args, report_user_error

    par = init(args.fsdp, args.dist_timeout)
    out = args.out or f"runs/compare-{args.task}"
    try:
        with contextlib.ExitStack() as stack:
            err: Exception | None = None
            try:
                recipes = cmp.parse_recipes(args.recipes)
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
                task = cmp.setup(configs)
            except USER_ERRORS as e:
                err = e
            if (err := agree(err, par)) is not None:
                return report_user_error("compare", err) if par.main else 2
            runs: list[DistributedRun] = []

            def prepare_run(config: TrainConfig, task: Task) -> DistributedRun:
                runs.append(prepare(config, task, par))
                return runs[-1]

            try:
                results, report = cmp.compare(
                    configs, out, cmp.command_line(args), task, prepare_run=prepare_run, write=par.main
                )
            except PeerFailure as failure:
                print(f"lowbit compare: error: {failure}", file=sys.stderr)
                return 1
            finally:
                for r in runs:
                    _close(r)
        if par.main:
            print(results_table(results, relative_delta=not task.higher_is_better))
            print(f"\nreport: {report}")
            print(json.dumps([r.to_dict() for r in results]))
        return 0
    finally:
        dist.destroy_process_group()
