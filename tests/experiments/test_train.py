"""``lowbit train``: tiny end-to-end runs of every task, the --json file, metrics.json, the progress bar."""

from __future__ import annotations

import json

import pytest

from lowbit import cli
from lowbit.experiments.config import TASK_DEFAULTS, TASKS, TrainConfig
from lowbit.experiments.metrics import METRICS_NAME
from lowbit.experiments.runner import prepare, train

JSON_KEYS = {"task", "recipe", "steps", "seconds", "final_train_loss", "eval_metric", "eval_name"}


def _data_for(task, text_file, csv_file):
    return {"gpt-shakespeare": text_file, "vit-fashion": None, "bert-rt": csv_file}[task]


@pytest.mark.parametrize("task", TASKS, ids=TASKS)
def test_tiny_end_to_end(task, tmp_path, text_file, csv_file, tiny):
    out = tmp_path / "run"
    config = tiny(task, out, _data_for(task, text_file, csv_file), json=str(tmp_path / "result.json"))
    result = train(config)
    summary = json.loads((tmp_path / "result.json").read_text())
    assert set(summary) == JSON_KEYS
    steps = config.steps
    assert summary["task"] == task and summary["recipe"] == "fp32" and summary["steps"] == steps
    assert summary["eval_name"] == ("held-out loss" if task == "gpt-shakespeare" else "accuracy %")
    assert summary == result.to_dict()
    if task == "gpt-shakespeare":
        assert 0 < summary["eval_metric"] < 10  # nats per character; log(vocab) is about 3
    else:
        assert 0 <= summary["eval_metric"] <= 100
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["train"]["step"] == list(range(1, steps + 1))
    assert len(metrics["train"]["loss"]) == steps and all(v > 0 for v in metrics["train"]["loss"])
    assert metrics["eval"]["step"] == list(range(config.eval_every, steps + 1, config.eval_every))
    assert metrics["eval"]["value"][-1] == summary["eval_metric"]
    assert (out / "checkpoint.pt").is_file()


def test_gpt_loss_goes_down(tmp_path, text_file, tiny):
    """Not just running: 25 steps on the tiny corpus must lower the training loss clearly."""
    config = tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=25, eval_every=25, lr=1e-2)
    train(config)
    losses = json.loads((tmp_path / "run" / METRICS_NAME).read_text())["train"]["loss"]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_same_seed_same_run_other_seed_differs(tmp_path, text_file, tiny):
    a = train(tiny("gpt-shakespeare", tmp_path / "a", text_file))
    b = train(tiny("gpt-shakespeare", tmp_path / "b", text_file))
    c = train(tiny("gpt-shakespeare", tmp_path / "c", text_file, seed=1))
    assert a.final_train_loss == b.final_train_loss and a.eval_metric == b.eval_metric
    assert a.final_train_loss != c.final_train_loss


def test_progress_bar_shows_loss_and_throughput(tmp_path, text_file, tiny, capsys):
    train(tiny("gpt-shakespeare", tmp_path / "run", text_file, progress=True))
    err = capsys.readouterr().err
    assert "loss " in err and "tok/s" in err


def test_cli_train_prints_json_and_writes_file(tmp_path, text_file, capsys):
    out, summary = tmp_path / "run", tmp_path / "s.json"
    argv = [
        "train", "--task", "gpt-shakespeare", "--data", str(text_file), "--steps", "2", "--batch-size", "2",
        "--seq-len", "8", "--layers", "1", "--dim", "8", "--heads", "2", "--eval-every", "2",
        "--max-eval-examples", "4", "--out", str(out), "--json", str(summary), "--no-progress",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(summary.read_text())
    assert printed["steps"] == 2


def test_defaults_are_complete_and_documented():
    for task in TASKS:
        config = TrainConfig.from_overrides(task)
        assert config.steps == TASK_DEFAULTS[task].steps
        assert config.checkpoint_every == config.eval_every
    assert TrainConfig.from_overrides("gpt-shakespeare", steps=7, lr=None).steps == 7


def test_unknown_recipe_is_a_clear_error(tmp_path, text_file, tiny):
    with pytest.raises(ValueError, match="unknown recipe 'int5'; known recipes: fp32, int8, int4"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, recipe="int5"))


def test_cli_unknown_recipe_exits_2(tmp_path, text_file, capsys):
    code = cli.main(["train", "--task", "gpt-shakespeare", "--recipe", "int5", "--data", str(text_file)])
    assert code == 2
    assert "lowbit train: error: unknown recipe 'int5'" in capsys.readouterr().err
