"""The CLI's contract (issue 14): a user error is one line on stderr and exit code 2, decided before any work;
Ctrl-C exits 130 naming the checkpoint to resume from; a bug keeps its traceback; ``--out`` is locked and an
existing run is replaced only on request; every recipe diverges the same way; progress lines without a tty."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lowbit import cli
from lowbit.experiments import runner
from lowbit.experiments.config import TrainConfig
from lowbit.experiments.guard import locked_output
from lowbit.experiments.metrics import METRICS_NAME
from lowbit.experiments.runner import train


def _train_argv(text_file: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--task", "gpt-shakespeare", "--data", str(text_file), "--steps", "2", "--batch-size", "2",
        "--seq-len", "8", "--layers", "1", "--dim", "8", "--heads", "2", "--eval-every", "2",
        "--max-eval-examples", "4", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def _one_line_error(capsys, command: str, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lowbit {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a run gets as far as building data and model."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(runner, "prepare", refuse)


# -- defect 3: the --out lock and overwriting ------------------------------------------------------------
def test_same_out_twice_needs_resume_or_overwrite(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_argv(text_file, out)) == 0
    first = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert cli.main(_train_argv(text_file, out, "--seed", "1")) == 2
    _one_line_error(capsys, "train", str(out), "--resume", "--overwrite")
    assert (out / "checkpoint.pt").read_bytes() == first  # nothing overwritten
    assert cli.main(_train_argv(text_file, out, "--resume", "--overwrite")) == 2
    _one_line_error(capsys, "train", "only one")
    assert cli.main(_train_argv(text_file, out, "--resume")) == 0
    assert cli.main(_train_argv(text_file, out, "--seed", "1", "--overwrite")) == 0
    assert json.loads((out / METRICS_NAME).read_text())["config"]["seed"] == 1


def test_out_in_use_by_another_process_is_refused(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    with locked_output(out):  # another holder of the lock (flock conflicts between open files)
        assert cli.main(_train_argv(text_file, out)) == 2
        _one_line_error(capsys, "train", "in use by another lowbit process")
        assert not (out / "checkpoint.pt").exists()
    assert cli.main(_train_argv(text_file, out)) == 0  # released


def test_compare_out_in_use_is_refused(tmp_path, text_file, capsys):
    out = tmp_path / "cmp"
    argv = _train_argv(text_file, out)
    argv[0], argv[argv.index("--no-progress")] = "compare", "--no-progress"
    argv += ["--recipes", "fp32"]
    with locked_output(out):
        assert cli.main(argv) == 2
        _one_line_error(capsys, "compare", "in use")


# -- defect 4: output paths checked before any work ---------------------------------------------------------
@pytest.mark.parametrize(
    "case", ["out-is-file", "out-in-proc", "json-is-dir", "json-under-file", "json-in-proc"]
)
def test_output_paths_checked_before_work(case, tmp_path, text_file, capsys, no_training):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out, extra, needle = tmp_path / "run", [], None
    if case == "out-is-file":
        out, needle = a_file, "--out"
    elif case == "out-in-proc":
        out, needle = Path("/proc/nope"), "--out"
    elif case == "json-is-dir":
        extra, needle = ["--json", str(tmp_path)], "--json"
    elif case == "json-under-file":
        extra, needle = ["--json", str(a_file / "r.json")], "--json"
    else:
        extra, needle = ["--json", "/proc/nope/r.json"], "--json"
    assert cli.main(_train_argv(text_file, out, *extra)) == 2
    _one_line_error(capsys, "train", needle)


def test_formats_json_unwritable(capsys):
    assert cli.main(["formats", "--json", "/proc/nope/formats.json"]) == 2
    _one_line_error(capsys, "formats", "--json")


def test_ptq_out_and_texts_checked_before_the_model_loads(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("one sentence\nanother\n")
    nowhere = str(tmp_path / "no-model")  # loading it would fail later with another message
    argv = ["ptq", "--model", nowhere, "--formats", "fp32,int8", "--texts", str(texts)]
    assert cli.main([*argv, "--out", "/proc/nope"]) == 2
    _one_line_error(capsys, "ptq", "--out", "/proc/nope")
    assert cli.main([*argv, "--json", str(tmp_path)]) == 2
    _one_line_error(capsys, "ptq", "--json")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert cli.main(["ptq", "--model", nowhere, "--texts", str(binary), "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "ptq", str(binary))


# -- defect 5: one divergence policy for every recipe -------------------------------------------------------
@pytest.mark.parametrize("recipe", ["fp32", "int8", "int4"])
def test_divergence_is_reported_the_same_for_every_recipe(recipe, tmp_path, text_file, tiny, caplog):
    config = tiny("gpt-shakespeare", tmp_path / "run", text_file, recipe=recipe, lr=1e6, steps=8)
    result = train(config)  # no exception for any recipe
    assert "training diverged" in caplog.text
    metrics = json.loads((tmp_path / "run" / METRICS_NAME).read_text())
    assert metrics["diverged_at"] == result.steps < config.steps
    assert metrics["train"]["loss"][-1] is None and metrics["eval"]["value"][-1] is None
    assert math.isnan(result.eval_metric)


def test_divergence_through_the_cli_writes_json(tmp_path, text_file, capsys):
    argv = _train_argv(text_file, tmp_path / "run", "--recipe", "int4", "--lr", "1e6", "--json",
                       str(tmp_path / "r.json"), "--dim", "32", "--steps", "8")  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["eval_metric"] is None


@pytest.mark.parametrize("lr", ["inf", "nan", "-1", "0"])
def test_non_finite_or_non_positive_lr_is_rejected(lr, tmp_path, text_file, capsys, no_training):
    assert cli.main(_train_argv(text_file, tmp_path / "run", "--lr", lr)) == 2
    _one_line_error(capsys, "train", "lr must be a finite number > 0")
    with pytest.raises(ValueError, match="lr must be"):
        TrainConfig.from_overrides("gpt-shakespeare", lr=float(lr))


# -- Ctrl-C and bugs ----------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_naming_the_checkpoint(tmp_path, text_file, capsys, monkeypatch):
    real_step = runner.Run.train_step

    def interrupted(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(runner.Run, "train_step", interrupted)
    out = tmp_path / "run"
    argv = _train_argv(text_file, out, "--steps", "4", "--checkpoint-every", "2")
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and str(out / "checkpoint.pt") in err and "--resume" in err
    assert "Traceback" not in err
    monkeypatch.setattr(runner.Run, "train_step", real_step)
    assert cli.main([*argv, "--resume"]) == 0  # and the hint works


def test_a_bug_keeps_its_traceback(tmp_path, text_file, capsys, monkeypatch):
    from lowbit.experiments.tasks.gpt import GPTShakespeareTask

    def broken(self, model, batch):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(GPTShakespeareTask, "loss", broken)
    assert cli.main(_train_argv(text_file, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "planted bug" in err and "bug in lowbit" in err


# -- progress without a terminal ----------------------------------------------------------------------------
def test_progress_is_plain_lines_without_a_terminal(tmp_path, text_file, tiny, capsys):
    train(tiny("gpt-shakespeare", tmp_path / "run", text_file, progress=True, steps=6))
    err = capsys.readouterr().err
    assert "\r" not in err  # no redrawn bar
    lines = [line for line in err.splitlines() if "step " in line]
    assert lines and len(lines) <= 2 and lines[-1].startswith("gpt-shakespeare fp32: step 6/6, loss ")


# -- poor messages -------------------------------------------------------------------------------------------
def test_seq_len_longer_than_the_text(tmp_path, text_file, capsys):
    assert cli.main(_train_argv(text_file, tmp_path / "run", "--seq-len", "100000")) == 2
    _one_line_error(capsys, "train", "--seq-len 100000")


def test_vit_with_corrupt_gz_files(tmp_path, capsys):
    folder = tmp_path / "fashion"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):  # fmt: skip
        (folder / name).write_bytes(b"\x1f\x8b garbage, not deflate data" * 10)
    argv = ["train", "--task", "vit-fashion", "--data", str(folder), "--out", str(tmp_path / "run"),
            "--steps", "1", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 2
    _one_line_error(capsys, "train", "train-images-idx3-ubyte.gz", "gzip")


def test_hugging_face_bars_are_off_without_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert cli.main(["formats"]) == 0  # capsys: stderr is not a terminal
    import os

    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
