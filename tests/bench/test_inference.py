"""``lowbit bench inference`` keeps each run in a file per model and CPU under results/inference/."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.bench import inference
from lowbit.ops import backends


def test_results_file_is_named_by_model_and_cpu_unless_given() -> None:
    parser = argparse.ArgumentParser()
    inference.add_arguments(parser)
    args = parser.parse_args([])
    slug = backends.cpu_slug()
    assert inference.results_path(args, "gpt") == Path("results") / "inference" / f"gpt_{slug}.json"
    assert inference.results_path(args, "minilm") == Path("results") / "inference" / f"minilm_{slug}.json"
    args = parser.parse_args(["--results", "elsewhere/run.json"])
    assert inference.results_path(args, "gpt") == Path("elsewhere/run.json")
