"""`lowbit main` (its steps: formats, selfcheck, compare) run through lowbit.cli.main; output checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.experiments import main_job, selfcheck


def test_main_runs_its_steps_and_writes_outputs(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(selfcheck, "CHECKS", (("quick", lambda g: "fine"),))  # full check: test_selfcheck
    # the training comparison step is exercised by tests/experiments/test_compare.py; here only the first two
    assert [s.name for s in main_job.STEPS] == ["formats", "selfcheck", "compare"]
    assert main(["main", "--out", str(tmp_path), "--steps", "formats,selfcheck"]) == 0
    text = capsys.readouterr().out
    assert "step 1/2: formats" in text and "step 2/2: selfcheck" in text and "2 of 2 steps ok" in text
    assert "fp8-e4m3" in text and "PASS  quick" in text
    assert json.loads((tmp_path / "formats.json").read_text())[0]["name"] == "int2"


def test_main_fails_when_a_step_fails_and_checks_step_names(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(selfcheck, "CHECKS", (("bad", lambda g: selfcheck._expect(False, "nope")),))
    assert main(["main", "--out", str(tmp_path), "--steps", "selfcheck"]) == 1
    text = capsys.readouterr().out
    assert (
        "step 1/1: selfcheck" in text and "FAILED (exit code 1)" in text and "failed: ['selfcheck']" in text
    )
    assert main(["main", "--out", str(tmp_path), "--steps", "formats,bogus"]) == 2
    err = capsys.readouterr().err
    assert "known steps" in err and err.startswith("lowbit main: error:") and err.count("\n") == 1
    with pytest.raises(ValueError, match="name and a module"):
        main_job.Step("", "selfcheck")


def test_main_writes_under_results_main_per_cpu_by_default(tmp_path: Path, monkeypatch) -> None:
    from lowbit.ops import backends

    monkeypatch.chdir(tmp_path)  # the default is relative to the working directory, like every lowbit output
    assert main(["main", "--steps", "formats"]) == 0
    assert (tmp_path / "results" / "main" / backends.cpu_slug() / "formats.json").is_file()
