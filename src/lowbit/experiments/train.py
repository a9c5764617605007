"""``lowbit train --task T --recipe R``: train one task with one recipe (progress bar, checkpoints, --json).

Writes ``OUT/metrics.json`` (per-step loss, periodic evaluation) and ``OUT/checkpoint.pt`` (atomic, every
``--checkpoint-every`` steps and at the end); ``--resume`` continues from it so that the next loss is the one
an uninterrupted run would have had, bit for bit. Before any work the output paths are checked, ``OUT`` is
locked against a second process, and a folder holding a run is refused without ``--resume`` / ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from lowbit.experiments.checkpoint import CheckpointError
from lowbit.experiments.config import EVAL_SPLITS, TASK_DEFAULTS, TASKS, TrainConfig
from lowbit.experiments.guard import check_fresh_run, check_output_dir, check_output_file, locked_output

logger = logging.getLogger(__name__)

#: Errors that are the user's to fix (bad value, missing file, wrong checkpoint): reported without traceback.
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError)


def defaults_epilog() -> str:
    """The per-task defaults, for ``--help``."""
    lines = ["per-task defaults (each has a flag to change it):"]
    for task, d in TASK_DEFAULTS.items():
        sizes = ", ".join(
            f"{k}={v}" for k, v in vars(d).items() if v is not None and k not in ("max_train_examples",)
        )
        lines.append(f"  {task}: {sizes}")
    from lowbit.experiments.tasks import TASK_TYPES

    inits = ", ".join(f"{name} {t.lsq_init}" for name, t in TASK_TYPES.items())
    lines.append(f"LSQ step init of --recipe int4 / int4-sample (--lsq-init changes it): {inits}")
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``compare``; None means "the task's default"."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = defaults_epilog()
    _add_run_arguments(parser)
    _add_lsq_arguments(parser)
    _add_size_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from lowbit.experiments.torchrun import add_arguments as add_parallel_arguments

    add_parallel_arguments(parser)  # --fsdp, --dist-timeout: used under torchrun
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The run's task, length, seed, data, output handling and evaluation split (``--help``'s first block)."""
    parser.add_argument("--task", required=True, choices=TASKS, help="what to train")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: per task, see below)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for init, data order and rounding (default 0)"
    )
    parser.add_argument(
        "--data",
        help="gpt-shakespeare: any UTF-8 text file (last 10%% held out); bert-rt: a CSV of text,label; "
        "vit-fashion: a folder with the four Fashion-MNIST IDX .gz files",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an --out folder that already holds a run, replacing it (without this flag or "
        "--resume such a folder is refused)",
    )
    parser.add_argument(
        "--eval-split",
        choices=EVAL_SPLITS,
        help="evaluate on the test data (default) or on a validation part of the training data, for tuning: "
        "bert-rt/vit-fashion: the training examples the run never draws (same training data as with test); "
        "gpt-shakespeare: the last 10%% of the training text, carved off (the run trains on the rest)",
    )


def _add_lsq_arguments(parser: argparse.ArgumentParser) -> None:
    """``--lsq-init`` / ``--lsq-lr``: the LSQ step settings of the int4 recipes."""
    lsq = parser.add_argument_group("LSQ steps of the int4 recipes (default: the recipe's; others ignore)")
    lsq.add_argument(
        "--lsq-init",
        choices=("paper", "mse"),
        help="step initialisation: paper = 2*mean|x|/sqrt(7), mse = the per-tensor MSE-best step",
    )
    lsq.add_argument(
        "--lsq-lr", type=float, help="relative learning rate of the steps (each moves ~this share per update)"
    )


def _add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """Batch, optimizer, schedule, model and data sizes; None means "the task's default"."""
    size = parser.add_argument_group("sizes (default: per task)")
    size.add_argument("--batch-size", type=int, help="examples (GPT: windows) per step")
    size.add_argument("--lr", type=float, help="peak learning rate (AdamW, warmup then cosine to 10%%)")
    size.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices")
    size.add_argument("--warmup-steps", type=int, help="linear warmup steps")
    size.add_argument("--eval-every", type=int, help="evaluate every N steps (and at the end)")
    size.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default: --eval-every)")
    size.add_argument("--layers", type=int, help="Transformer blocks (GPT, ViT)")
    size.add_argument("--dim", type=int, help="model width (GPT, ViT)")
    size.add_argument("--heads", type=int, help="attention heads (GPT, ViT)")
    size.add_argument("--seq-len", type=int, help="GPT: context window; bert-rt: max tokens per snippet")
    size.add_argument("--patch-size", type=int, help="ViT patch size (must divide 28)")
    size.add_argument(
        "--max-train-examples", type=int, help="use only the first N training examples/characters"
    )
    size.add_argument(
        "--max-eval-examples", type=int, help="evaluate on the first N held-out examples/windows"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lowbit train`` flags."""
    add_common_arguments(parser)
    parser.add_argument(
        "--recipe",
        default="fp32",
        help="fp32, int8, int4, int4-paper, int4-mse, int4-sample or int4-naive (default fp32)",
    )
    parser.add_argument("--out", help="output folder (default runs/TASK-RECIPE)")
    parser.add_argument("--json", help="also write {task, recipe, steps, seconds, ...} to this JSON file")


def config_from_args(args: argparse.Namespace, recipe: str, out: str) -> TrainConfig:
    """The ``TrainConfig`` the flags describe (task defaults for every flag not given)."""
    return TrainConfig.from_overrides(
        args.task, recipe=recipe, out=out, steps=args.steps, seed=args.seed, data=args.data,
        resume=args.resume, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        layers=args.layers, dim=args.dim, heads=args.heads, seq_len=args.seq_len, patch_size=args.patch_size,
        max_train_examples=args.max_train_examples, max_eval_examples=args.max_eval_examples,
        progress=not args.no_progress, json=getattr(args, "json", None), threads=args.threads,
        eval_split=args.eval_split, lsq_init=args.lsq_init, lsq_lr=args.lsq_lr,
    )  # fmt: skip


def apply_threads(config: TrainConfig) -> None:
    """Set torch's CPU thread count when the config names one (process-wide: done by the CLI only)."""
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)


def report_user_error(command: str, err: Exception) -> int:
    """Print ``lowbit COMMAND: error: ...`` (no traceback) and return the exit status 2."""
    print(f"lowbit {command}: error: {err}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Train, print the result as JSON on stdout; 2 on a user error (message on stderr)."""
    from lowbit.experiments import torchrun
    from lowbit.experiments.runner import finish, prepare

    if torchrun.launched():  # under torchrun: data-parallel training
        return _run_distributed(args)

    with contextlib.ExitStack() as stack:
        try:
            config = config_from_args(args, args.recipe, args.out or f"runs/{args.task}-{args.recipe}")
            if config.json:
                check_output_file(config.json, "--json")
            check_output_dir(config.out)
            check_fresh_run([Path(config.out)], config.resume, getattr(args, "overwrite", False))
            apply_threads(config)
            prepared = prepare(config)  # data and model: every user error is raised here, before training
            stack.enter_context(locked_output(config.out))  # held until the run is written
            check_fresh_run([Path(config.out)], config.resume, getattr(args, "overwrite", False))
        except USER_ERRORS as err:
            return report_user_error("train", err)
        result = finish(prepared)  # errors from here on are bugs: shown with their traceback
    print(json.dumps(result.to_dict()))
    return 0


def _run_distributed(args: argparse.Namespace) -> int:
    """``lowbit train`` under torchrun; rank 0 prints the result JSON."""
    import torch.distributed as dist

    from lowbit.experiments.parallel import PeerFailure, agree, check_config, init
    from lowbit.experiments.runner import finish
    from lowbit.experiments.torchrun import close, prepare

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
                close(prepared)
        if par.main:
            print(json.dumps(result.to_dict()))
        return 0
    finally:
        dist.destroy_process_group()
