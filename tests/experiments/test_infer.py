"""``lowbit infer`` (issue 14): any ``--data`` file works (the prompt comes from the data or ``--prompt``),
and every bad flag or ``--checkpoint`` file is a one-line error before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit import cli


def _argv(text_file: Path, *extra: str) -> list[str]:
    return [
        "infer", "--data", str(text_file), "--train-steps", "2", "--layers", "1", "--dim", "32", "--heads",
        "2", "--seq-len", "16", "--batch-size", "2", "--eval-batches", "1", "--calib-batches", "1",
        "--sample-tokens", "4", "--threads", "1", *extra,
    ]  # fmt: skip


def _one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lowbit infer: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_infer_on_a_text_without_romeo(tmp_path, text_file, capsys):
    from lowbit.experiments.infer import sample_prompt

    assert "ROMEO" not in text_file.read_text()
    out = tmp_path / "r.json"
    assert cli.main(_argv(text_file, "--json", str(out))) == 0
    result = json.loads(out.read_text())
    held_out = text_file.read_text()[-int(len(text_file.read_text()) * 0.1) :]
    assert result["sample"].startswith(sample_prompt(held_out)) and len(result["sample"]) > 4
    capsys.readouterr()
    assert cli.main(_argv(text_file, "--json", str(out), "--prompt", "to be")) == 0
    assert json.loads(out.read_text())["sample"].startswith("to be")


def test_sample_prompt_is_the_first_held_out_line():
    from lowbit.experiments.infer import sample_prompt

    assert sample_prompt("HAMLET:\nTo be\n") == "HAMLET:\n"
    assert sample_prompt("x" * 100) == "x" * 32
    assert sample_prompt("whatever", "given") == "given"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--train-steps", "-5"], "--train-steps must be >= 0"),
        (["--act-qmax", "1000"], "--act-qmax must be in [1, 127]"),
        (["--prompt", "ROMEO:\n"], "--prompt holds characters that never occur"),
        (["--seq-len", "100000"], "--seq-len 100000"),
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--json", "/proc/nope/r.json"], "--json"),
    ],
    ids=["negative-steps", "act-qmax", "prompt", "seq-len", "lr-inf", "json"],
)
def test_bad_flags_are_one_line_errors_before_training(extra, needle, text_file, capsys, monkeypatch):
    from lowbit.experiments import infer

    monkeypatch.setattr(infer, "train_gpt", lambda *a: pytest.fail("trained before checking the flags"))
    assert cli.main(_argv(text_file, *extra)) == 2
    _one_line_error(capsys, needle)


def test_checkpoint_files(tmp_path, text_file, capsys, monkeypatch):
    from safetensors.torch import save_file

    from lowbit.experiments import infer

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    assert cli.main(_argv(text_file, "--checkpoint", str(garbage))) == 2
    _one_line_error(capsys, str(garbage), "corrupt")
    ptq_file = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(ptq_file))
    assert cli.main(_argv(text_file, "--checkpoint", str(ptq_file))) == 2
    _one_line_error(capsys, "safetensors")
    good = tmp_path / "gpt.pt"
    assert cli.main(_argv(text_file, "--checkpoint", str(good))) == 0  # trains, saves
    capsys.readouterr()
    monkeypatch.setattr(infer, "train_gpt", lambda *a: pytest.fail("should load, not train"))
    assert cli.main(_argv(text_file, "--checkpoint", str(good))) == 0  # loads
    capsys.readouterr()
    assert cli.main(_argv(text_file, "--checkpoint", str(good), "--dim", "64")) == 2
    _one_line_error(capsys, "other sizes")
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    good.write_bytes(bytes(data))
    assert cli.main(_argv(text_file, "--checkpoint", str(good))) == 2
    _one_line_error(capsys, "damaged")
