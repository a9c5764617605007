"""``lowbit main``: the main job — a fixed list of steps, each an existing subcommand run with set arguments.

The steps: ``formats`` (the format table, also saved as JSON), ``selfcheck`` (the numerics check), then
``compare`` — the INT4 training comparison of Xi et al. on the Shakespeare GPT (fp32, int8, int4, int4-naive
with one seed and data order; report.md, curves and JSON under ``{out}/compare-gpt-shakespeare``). ``{out}``
defaults to ``results/main/<cpu>`` (``lowbit.ops.backends.cpu_slug()``), the layout of the repository's
``results/`` (one folder per experiment, one run per CPU).
To add a step, append a :class:`Step` to :data:`STEPS`; its ``argv`` may use ``{out}`` for the output folder.
Every step runs even if an earlier one failed; the job's exit code is non-zero if any step failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lowbit.experiments.guard import UserError, check_output_dir


@dataclass(frozen=True)
class Step:
    """One step of the main job: run subcommand module ``module`` (under lowbit.experiments) with ``argv``."""

    name: str
    module: str
    argv: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.module:
            raise ValueError(f"a Step needs a name and a module, got {self.name!r}, {self.module!r}")


STEPS: tuple[Step, ...] = (
    Step("formats", "formats_table", ("--json", "{out}/formats.json")),
    Step("selfcheck", "selfcheck", ("--seed", "0")),
    Step(
        "compare",
        "compare",
        (
            "--task",
            "gpt-shakespeare",
            "--recipes",
            "fp32,int8,int4,int4-naive",
            "--out",
            "{out}/compare-gpt-shakespeare",
            "--overwrite",  # the main job regenerates its results
        ),
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the job's outputs (default: results/main/<cpu>, e.g. results/main/amd-epyc_avx2)",
    )
    parser.add_argument(
        "--steps",
        default=",".join(s.name for s in STEPS),
        help=f"comma-separated steps to run, in order (default: all of {[s.name for s in STEPS]})",
    )


def select_steps(names: str) -> list[Step]:
    """The steps named in the comma-separated ``names``, in the job's order (unknown names: ValueError)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name for s in STEPS}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise UserError(
            f"--steps: unknown or empty step names {unknown or wanted}; known steps: {sorted(known)}"
        )
    return [s for s in STEPS if s.name in wanted]


def run_step(step: Step, out: Path) -> int:
    """Parse ``step.argv`` with the step module's own arguments and run it; returns its exit code."""
    module = importlib.import_module(f"lowbit.experiments.{step.module}")
    parser = argparse.ArgumentParser(prog=f"lowbit main / {step.name}")
    module.add_arguments(parser)
    args = parser.parse_args([a.format(out=out) for a in step.argv])
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"lowbit main / {step.name}: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    steps = select_steps(args.steps)
    if args.out is None:
        from lowbit.ops import backends  # only here: reading the CPU is not needed to parse the arguments

        args.out = Path("results") / "main" / backends.cpu_slug()
    check_output_dir(args.out, "--out", create=True)
    codes: dict[str, int] = {}
    for i, step in enumerate(steps, 1):
        print(f"\n=== step {i}/{len(steps)}: {step.name} ===", flush=True)
        start = time.perf_counter()
        codes[step.name] = run_step(step, args.out)
        status = "ok" if codes[step.name] == 0 else f"FAILED (exit code {codes[step.name]})"
        print(f"=== {step.name}: {status} in {time.perf_counter() - start:.1f}s ===", flush=True)
    failed = [name for name, code in codes.items() if code]
    print(
        f"\nmain job: {len(codes) - len(failed)} of {len(codes)} steps ok"
        + (f"; failed: {failed}" if failed else "")
    )
    return 1 if failed else 0
