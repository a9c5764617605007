"""Fuzz the CLI entries not covered by test_cli_fuzz.py (issue 14): ``lowbit ptq --formats`` and its flags
(the format entries and the configs built from them), ``lowbit main --steps`` and ``lowbit bench``'s choices.
Each input gives a result or a ValueError / UserError naming the problem — never another exception."""

from __future__ import annotations

import argparse

from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import check_error, fuzz_settings

from lowbit.experiments import bench, main_job, ptq_formats
from lowbit.experiments import ptq as ptq_cli
from lowbit.experiments.guard import UserError

PIECES = ["fp32", "int8", "int4", "fp8-e4m3", "fp8-e5m2", "mxfp8-e4m3", "mxfp4", "fp3", "",
          "int8/channel/token", "int8@mse", "int8+exact", "fp8-e4m3/channel", "int8/bogus", "@", "+", "/",
          "int8+gptq", "fp8-e4m3@max", "int4/group", "w4", "int8/channel/token@percentile+gptq"]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    ptq_cli.add_arguments(parser)
    return parser


@given(
    entries=st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), min_size=0, max_size=4),
    granularity=st.sampled_from(["tensor", "channel"]),
    act=st.sampled_from(["tensor", "token"]),
    fp8=st.sampled_from(["auto", "bf16_dot", "emulated", "scaled_mm"]),
    observer=st.sampled_from(["max", "percentile", "mse"]),
)
@fuzz_settings(200)
def test_ptq_formats_give_configs_or_named_errors(entries, granularity, act, fp8, observer):
    args = _parser().parse_args(
        ["--granularity", granularity, "--act-granularity", act, "--fp8-compute", fp8, "--observer", observer]
    )
    try:
        for entry in ptq_formats.parse_formats(",".join(entries), args):
            if entry.name != "fp32":
                ptq_formats.config_for(entry, args)
    except (ValueError, TypeError, UserError) as err:
        check_error(err if not isinstance(err, UserError) else ValueError(str(err)))


STEP_NAMES = st.one_of(st.sampled_from(["formats", "selfcheck", "compare", "x", ""]), st.text(max_size=8))


@given(names=st.lists(STEP_NAMES, max_size=4))
@fuzz_settings(100)
def test_main_steps_select_or_name_the_known_steps(names):
    try:
        steps = main_job.select_steps(",".join(names))
    except ValueError as err:
        check_error(err)
        assert "known steps" in str(err)
    else:
        assert steps and all(s.name in names for s in steps)


@given(name=st.one_of(st.sampled_from(sorted(bench.BENCHMARKS)), st.text(max_size=10)))
@fuzz_settings(60)
def test_bench_names_are_choices(name):
    parser = argparse.ArgumentParser(exit_on_error=False)
    bench.add_arguments(parser)
    try:
        args = parser.parse_args([name])
    except argparse.ArgumentError as err:
        assert "invalid choice" in str(err)
    except SystemExit as done:  # argparse's own usage error (e.g. a name that looks like a flag): exit 2
        assert done.code == 2
    else:
        assert args.benchmark in bench.BENCHMARKS
