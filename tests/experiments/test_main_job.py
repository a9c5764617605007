"""`lowbit formats`, `lowbit selfcheck` and `lowbit main` run through lowbit.cli.main; output checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lowbit.formats as F
from lowbit.cli import main
from lowbit.experiments import main_job, selfcheck


def test_formats_prints_every_format_with_range_and_steps(tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "sub" / "formats.json"
    assert main(["formats", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["name", "bits", "max"] and "min step" in lines[0]
    names = [
        line.split()[0] for line in lines[2:] if line.strip() and not line.startswith(("values", "wrote"))
    ]
    assert {f.name for f in F.ALL_FORMATS} <= set(names)
    assert "int8-narrow" in names
    row = {line.split()[0]: line.split() for line in lines[2:] if line.strip()}
    # fp8-e4m3: bits 8, max 448, min normal 2^-6, min subnormal 2^-9, 253 distinct values, steps 2^-9 .. 32
    assert row["fp8-e4m3"][1:8] == ["8", "448", "2^-6", "2^-9", "253", "2^-9", "32"]
    assert row["fp8-e5m2"][1:3] == ["8", "57344"] and row["fp4-e2m1"][1:3] == ["4", "6"]
    rows = {r["name"]: r for r in json.loads(out_json.read_text())}
    # JSON numbers against torch's own FP8 dtypes (an independent enumeration of the code set)
    for name, dtype in (("fp8-e4m3", torch.float8_e4m3fn), ("fp8-e5m2", torch.float8_e5m2)):
        values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).double()
        finite = torch.unique(values[torch.isfinite(values)])
        gaps = torch.diff(finite)
        assert rows[name]["values"] == finite.numel() and rows[name]["max"] == finite.max().item()
        assert (rows[name]["min_step"], rows[name]["max_step"]) == (gaps.min().item(), gaps.max().item())
        assert rows[name]["min_subnormal"] == finite[finite > 0].min().item()
    assert rows["mxfp4"]["notes"].startswith("32 x fp4-e2m1") and rows["int4"]["values"] == 16


def test_formats_codes_lists_one_format(capsys) -> None:
    assert main(["formats", "--codes", "fp4_e2m1"]) == 0
    head, values = capsys.readouterr().out.splitlines()
    assert head == "fp4-e2m1: 15 values from -6 to 6"
    assert [float(v) for v in values.split()] == F.FP4_E2M1.codes().tolist()
    # a user error: one line on stderr naming the problem, exit code 2 (the CLI contract), no exception
    assert main(["formats", "--codes", "fp5"]) == 2
    err = capsys.readouterr().err
    assert "unknown format name" in err and err.startswith("lowbit formats: error:") and err.count("\n") == 1


def test_selfcheck_passes_every_check(capsys) -> None:
    assert main(["selfcheck", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    for name, _ in selfcheck.CHECKS:
        status = next(line.split()[0] for line in text.splitlines() if name in line)
        assert status in ("PASS", "SKIP"), f"{name}: {status}"
    assert "0 failed" in text


def test_selfcheck_reports_failures_and_errors(monkeypatch, capsys) -> None:
    def fails(gen):
        raise selfcheck.CheckFailed("planted mismatch")

    def errors(gen):
        raise RuntimeError("planted error")

    def skips(gen):
        raise selfcheck.CheckSkipped("planted reason")

    checks = (("ok", lambda g: "fine"), ("bad", fails), ("broken", errors), ("absent", skips))
    monkeypatch.setattr(selfcheck, "CHECKS", checks)
    assert main(["selfcheck"]) == 1
    text = capsys.readouterr().out
    assert "PASS  ok" in text and "FAIL  bad" in text and "planted mismatch" in text
    assert "FAIL  broken" in text and "RuntimeError: planted error" in text
    assert "SKIP  absent" in text and "1 passed, 2 failed, 1 skipped" in text


def test_main_runs_its_steps_and_writes_outputs(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(selfcheck, "CHECKS", (("quick", lambda g: "fine"),))  # the full check runs above
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
