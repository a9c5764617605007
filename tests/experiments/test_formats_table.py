"""`lowbit formats`: every format with its range and steps, and one format's codes (run through
lowbit.cli.main; output checked)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import lowbit.formats as F
from lowbit.cli import main


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
