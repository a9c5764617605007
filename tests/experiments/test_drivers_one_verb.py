"""The package's own drivers (``lowbit.experiments``, ``lowbit.bench``) convert models through the one verb,
``lowbit.convert`` (issue 13), not through the workflows' own entry points."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import lowbit.bench
import lowbit.conversion
import lowbit.experiments
from lowbit import cli
from lowbit.integer import IntegerConfig

# the workflows' own conversion entry points, which the drivers leave to the verb
ENTRY_POINTS = {"quantize", "convert", "convert_bert"}
WORKFLOWS = ("lowbit.ptq", "lowbit.integer", "lowbit.training")


def _driver_files() -> list[Path]:
    files = []
    for package in (lowbit.experiments, lowbit.bench):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            spec = info.module_finder.find_spec(info.name)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                files.append(Path(spec.origin))
    return files


def test_drivers_import_no_workflow_entry_point() -> None:
    files = _driver_files()
    assert any(f.name == "ptq.py" for f in files) and any(f.name == "inference.py" for f in files)
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(WORKFLOWS):
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                          if a.name in ENTRY_POINTS]  # fmt: skip
            elif isinstance(node, ast.Attribute) and node.attr in ENTRY_POINTS:
                value = node.value
                if isinstance(value, ast.Name) and value.id in ("ptq", "integer", "training", "bert"):
                    found.append(f"{path.name}: {value.id}.{node.attr}")
    assert not found, found


def test_infer_converts_through_lowbit_convert(text_file: Path, tmp_path: Path, monkeypatch) -> None:
    """``lowbit infer`` (gpt-shakespeare) calls ``lowbit.convert`` with an IntegerConfig and runs the
    summary's model (a spy on the verb sees the call; without the verb the spy stays empty)."""
    real = lowbit.conversion.convert
    calls = []

    def spy(model, config, calibration=None, **options):
        summary = real(model, config, calibration, **options)
        calls.append((config, summary))
        return summary

    monkeypatch.setattr(lowbit.conversion, "convert", spy)
    argv = [
        "infer", "--data", str(text_file), "--train-steps", "2", "--layers", "1", "--dim", "32", "--heads",
        "2", "--seq-len", "16", "--batch-size", "2", "--eval-batches", "1", "--calib-batches", "1",
        "--sample-tokens", "4", "--threads", "1", "--weight-qmax", "64", "--json", str(tmp_path / "r.json"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert len(calls) == 1
    config, summary = calls[0]
    assert config == IntegerConfig(act_qmax=127, weight_qmax=64) and summary.workflow == "integer"
    assert type(summary.model).__name__ == "IntegerGPT"
