"""--eval-split val (a validation part of the training data) and the --lsq-init / --lsq-lr overrides."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit import cli
from lowbit.experiments.build import resolve_recipe
from lowbit.experiments.config import TrainConfig, derive_seed
from lowbit.experiments.runner import prepare, train
from lowbit.experiments.tasks.classifiers import BertRTTask, ViTFashionTask
from lowbit.experiments.tasks.gpt import GPT_VAL_FRACTION, GPTShakespeareTask
from lowbit.experiments.tasks.samplers import unused_training_examples
from lowbit.training import QuantLinear


def _drawn(task, config: TrainConfig) -> torch.Tensor:
    """Every training index the run's sampler draws in ``config.steps`` steps."""
    sampler = task.make_sampler(torch.Generator().manual_seed(derive_seed(config.seed, "data")))
    return torch.cat([sampler.next() for _ in range(config.steps)])


@pytest.mark.parametrize("seed", [0, 1])
def test_classifier_val_split_is_the_never_drawn_training_data(seed, tmp_path, tiny):
    config = tiny("vit-fashion", tmp_path, steps=2, seed=seed, max_eval_examples=None, eval_split="val")
    task = ViTFashionTask(config)
    drawn, val = _drawn(task, config), unused_training_examples(config, task.n_train)
    assert set(drawn.tolist()).isdisjoint(val.tolist())
    assert sorted(drawn.tolist() + val.tolist()) == list(range(task.n_train))  # 40 = 2 x 16 + 8
    assert torch.equal(task.x_test, task.x_train[val]) and torch.equal(task.y_test, task.y_train[val])
    assert task.describe()["eval_split"] == "val" and task.describe()["test_images"] == 8
    capped = ViTFashionTask(config.replace(max_eval_examples=5))
    assert torch.equal(capped.y_test, task.y_train[val[:5]])


def test_val_split_keeps_the_training_run_identical(tmp_path, tiny):
    test_result = train(tiny("vit-fashion", tmp_path / "test", steps=2, eval_every=2))
    val_result = train(tiny("vit-fashion", tmp_path / "val", steps=2, eval_every=2, eval_split="val"))
    test_losses = json.loads((tmp_path / "test" / "metrics.json").read_text())["train"]["loss"]
    val_metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert val_metrics["train"]["loss"] == test_losses  # same batches, same updates, bit for bit
    assert val_metrics["data"]["eval_split"] == "val" and val_metrics["config"]["eval_split"] == "val"
    assert test_result.final_train_loss == val_result.final_train_loss


def test_bert_val_split(tmp_path, csv_file, tiny):
    config = tiny("bert-rt", tmp_path, csv_file, max_eval_examples=None, eval_split="val")
    task = BertRTTask(config)
    val = unused_training_examples(config, task.n_train)
    assert len(task.test_ids) == task.n_train - config.steps * config.batch_size == 8
    assert task.test_ids == [task.train_ids[i] for i in val.tolist()]
    assert torch.equal(task.test_labels, task.train_labels[val])
    assert set(_drawn(task, config).tolist()).isdisjoint(val.tolist())


def test_val_split_needs_undrawn_examples(tmp_path, tiny):
    with pytest.raises(ValueError, match=r"6 steps x 16 examples = 96 >= the 40 training examples"):
        ViTFashionTask(tiny("vit-fashion", tmp_path, eval_split="val"))


def test_gpt_val_split_carves_the_tail_of_the_training_text(tmp_path, text_file, tiny):
    test_task = GPTShakespeareTask(tiny("gpt-shakespeare", tmp_path, text_file))
    val_task = GPTShakespeareTask(tiny("gpt-shakespeare", tmp_path, text_file, eval_split="val"))
    n = test_task.train_tokens.numel()
    n_val = int(n * GPT_VAL_FRACTION)
    assert torch.equal(val_task.train_tokens, test_task.train_tokens[: n - n_val])
    assert torch.equal(val_task.val_tokens, test_task.train_tokens[n - n_val :])
    assert val_task.describe()["eval_split"] == "val"
    with pytest.raises(ValueError, match="too few"):
        GPTShakespeareTask(tiny("gpt-shakespeare", tmp_path, text_file, eval_split="val", seq_len=1000))


def test_config_fields_and_identity():
    default = TrainConfig.from_overrides("bert-rt")
    # added later: at their defaults they stay out of the identity, so older checkpoints still resume
    assert not {"eval_split", "lsq_init", "lsq_lr"} & set(default.identity())
    tuned = TrainConfig.from_overrides("bert-rt", eval_split="val", lsq_init="mse", lsq_lr=0.05)
    assert tuned.identity()["eval_split"] == "val" and tuned.identity()["lsq_init"] == "mse"
    assert tuned.identity()["lsq_lr"] == 0.05
    with pytest.raises(ValueError, match="eval_split must be one of"):
        TrainConfig.from_overrides("bert-rt", eval_split="train")
    with pytest.raises(ValueError, match="lsq_init must be"):
        TrainConfig.from_overrides("bert-rt", lsq_init="max")
    with pytest.raises(ValueError, match="lsq_lr must be"):
        TrainConfig.from_overrides("bert-rt", lsq_lr=-1.0)


def test_int4_step_init_is_the_tasks_choice(tmp_path, csv_file, text_file, tiny):
    bert = BertRTTask(tiny("bert-rt", tmp_path, csv_file))
    gpt = GPTShakespeareTask(tiny("gpt-shakespeare", tmp_path, text_file))
    assert (bert.lsq_init, gpt.lsq_init, ViTFashionTask.lsq_init) == ("mse", "paper", "paper")
    for recipe, on_bert, on_gpt in [
        ("int4", "mse", "paper"),
        ("int4-sample", "mse", "paper"),
        ("int4-paper", "paper", "paper"),  # a recipe that names its init keeps it
        ("int4-mse", "mse", "mse"),
    ]:
        assert resolve_recipe(TrainConfig(task="bert-rt", recipe=recipe), bert).lsq_init == on_bert
        assert resolve_recipe(TrainConfig(task="gpt-shakespeare", recipe=recipe), gpt).lsq_init == on_gpt
        flag = TrainConfig(task="bert-rt", recipe=recipe, lsq_init="paper")  # --lsq-init wins
        assert resolve_recipe(flag, bert).lsq_init == "paper"
    assert resolve_recipe(TrainConfig(task="bert-rt", recipe="int4")).lsq_init == "paper"  # no task
    run = prepare(tiny("gpt-shakespeare", tmp_path / "g", text_file, recipe="int4"))
    metrics = run.metrics()["recipe"]
    assert metrics["name"] == "int4" and metrics["lsq_init"] == "paper" and metrics["lsq_lr"] == 0.01


def test_recipe_overrides_apply_to_int4_recipes_only():
    base = dict(task="vit-fashion", lsq_init="paper", lsq_lr=0.2)
    recipe = resolve_recipe(TrainConfig(recipe="int4-mse", **base))
    assert (recipe.name, recipe.lsq_init, recipe.lsq_lr) == ("int4-mse", "paper", 0.2)
    assert resolve_recipe(TrainConfig(recipe="int8", **base)).kind == "int8"  # nothing to override
    plain = resolve_recipe(TrainConfig(task="vit-fashion", recipe="int4-paper"))
    assert plain.lsq_init == "paper" and plain.lsq_lr == 0.01


def test_run_uses_the_overridden_recipe(tmp_path, text_file, tiny):
    run = prepare(tiny("gpt-shakespeare", tmp_path, text_file, recipe="int4", lsq_init="mse", lsq_lr=0.3))
    layers = [m for m in run.model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.recipe.lsq_init == "mse" and m.recipe.lsq_lr == 0.3 for m in layers)


def test_cli_flags(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    argv = [
        "train", "--task", "gpt-shakespeare", "--data", str(text_file), "--steps", "2", "--batch-size", "2",
        "--seq-len", "8", "--layers", "1", "--dim", "8", "--heads", "2", "--eval-every", "2",
        "--max-eval-examples", "4", "--out", str(out), "--no-progress", "--recipe", "int4",
        "--eval-split", "val", "--lsq-init", "mse", "--lsq-lr", "0.05",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["eval_split"], config["lsq_init"], config["lsq_lr"]) == ("val", "mse", 0.05)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["train", "--task", "gpt-shakespeare", "--eval-split", "train"])
    assert "invalid choice: 'train'" in capsys.readouterr().err
