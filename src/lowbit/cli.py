"""The ``lowbit`` command: argument parsing only; each subcommand lives in ``lowbit.experiments``.

Every subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when
its subcommand runs, so ``lowbit formats`` does not pay for importing transformers.

The contract: a user error (``lowbit.experiments.guard.UserError``) prints one line ``lowbit COMMAND: error:
...`` naming the problem and the fix and exits 2; Ctrl-C exits 130 with a line naming the checkpoint to resume
from; any other exception is a bug in lowbit: its traceback, a line saying where to report it, exit 1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback

from lowbit.experiments.guard import UserError, forget_checkpoints, interrupt_hint
from lowbit.experiments.runtime import keep_freed_memory

#: OS errors that are the machine's state, not a bug: a full disk or quota, a size limit, a read-only or
#: forbidden folder (reported in one line like a user error).
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)
#: Where a traceback (a bug, never the user's fault) should be reported.
REPORT_BUGS = "the lowbit issue tracker"

# subcommand -> (module under lowbit.experiments, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "main": ("main_job", "the main job: format table, numerics self-check, INT4 training comparison"),
    "formats": ("formats_table", "print every number format with its range and step sizes"),
    "selfcheck": ("selfcheck", "check the numerics (quantizers, Hadamard, integer GEMM) against references"),
    "bench": ("bench", "run a benchmark of lowbit.bench (gemm, ceiling, train-step, inference, ptq)"),
    "train": ("train", "train one task with one recipe"),
    "compare": ("compare", "train one task with several recipes and write report.md with curves"),
    "ptq": ("ptq", "post-training quantization of a BERT-family model: FP8 vs INT8 fidelity"),
    "infer": ("infer", "integer-only inference of the Integer Transformer GPT"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep glibc's default malloc, which unmaps large freed buffers (lowbit otherwise keeps them for "
        "reuse: page faults cost ~1 s of a training step; see lowbit.experiments.runtime)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module_name)
        # Arguments are added lazily (below) so unrelated heavy imports are not paid for at start-up.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: find the subcommand; second pass: parse with that subcommand's own arguments.
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    if command is not None:
        module = importlib.import_module(f"lowbit.experiments.{SUBCOMMANDS[command][0]}")
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module.add_arguments(subparsers.choices[command])
    args = parser.parse_args(argv)
    if args.command not in ("train", "compare") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(  # N copies of a one-process command would race on its output
            f"lowbit {args.command}: error: only train and compare run data-parallel under torchrun; run "
            f"{args.command} as one process",
            file=sys.stderr,
        )
        return 2
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.system_malloc:
        keep_freed_memory()
    forget_checkpoints()
    if not getattr(sys.stderr, "isatty", lambda: False)():
        # progress bars only on a terminal: also Hugging Face's (model loading), read when transformers loads
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        module = importlib.import_module(f"lowbit.experiments.{args._module}")
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"lowbit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlowbit {args.command}: interrupted; {interrupt_hint()}", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:  # the machine's state, not a bug
            where = f": {err.filename}" if err.filename else ""
            print(
                f"lowbit {args.command}: error: {err.strerror}{where}; free space or use a folder you can "
                f"write to, then run again ({interrupt_hint()})",
                file=sys.stderr,
            )
            return 2
        traceback.print_exc()
        print(
            f"lowbit {args.command}: internal error: this is a bug in lowbit, not in your input; please "
            f"report it with the traceback above to {REPORT_BUGS}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
