"""``lowbit compare``: one shared task, several recipes, results.json + report.md + PNG curves."""

from __future__ import annotations

import json

import pytest

from lowbit import cli
from lowbit.experiments.compare import RESULTS_NAME, compare, parse_recipes
from lowbit.experiments.metrics import RunResult
from lowbit.experiments.report import EVAL_PNG, LOSS_PNG, REPORT_MD, delta_text, results_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_compare_writes_report_with_one_row_per_recipe(tmp_path, text_file, tiny):
    configs = [tiny("gpt-shakespeare", tmp_path / "cmp" / "fp32", text_file)]
    results, report = compare(configs, tmp_path / "cmp", "lowbit compare --task gpt-shakespeare")
    assert report == tmp_path / "cmp" / REPORT_MD
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| fp32 ")]
    assert len(rows) == 1 and f"{results[0].eval_metric:.4f}" in rows[0] and "—" in rows[0]
    assert "| recipe | steps | final train loss | held-out loss | seconds | Δ held-out loss vs fp32 |" in text
    for png in (LOSS_PNG, EVAL_PNG):
        assert (tmp_path / "cmp" / png).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({png})" in text
    saved = json.loads((tmp_path / "cmp" / RESULTS_NAME).read_text())
    assert [r["recipe"] for r in saved["results"]] == ["fp32"]
    assert saved["results"][0] == results[0].to_dict()
    assert (tmp_path / "cmp" / "fp32" / "metrics.json").is_file()


def _result(recipe, metric, name="accuracy %", loss=0.5):
    return RunResult("vit-fashion", recipe, 10, 1.0, loss, metric, name)


def test_table_deltas_against_fp32():
    table = results_table(
        [_result("fp32", 90.0), _result("int4", 89.25), _result("int4-naive", float("nan"))], False
    )
    lines = table.splitlines()
    assert lines[2].startswith("| fp32 |") and lines[2].endswith("| — |")
    assert "| 89.25 |" in lines[3] and lines[3].endswith("| -0.7500 |")
    assert "diverged" in lines[4] and lines[4].endswith("| n/a |")


def test_relative_delta_for_losses():
    assert delta_text(1.02, 1.0, relative=True) == "+0.0200 (+2.00%)"
    assert delta_text(1.0, None, relative=True) == "n/a"


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "names no recipe"), (" , ", "names no recipe"), ("fp32,int4,fp32", "more than once")],
    ids=["empty", "only-commas", "repeated"],
)
def test_bad_recipe_lists(text, message):
    with pytest.raises(ValueError, match=message):
        parse_recipes(text)


def test_parse_recipes_strips_spaces():
    assert parse_recipes("fp32, int8 ,int4") == ["fp32", "int8", "int4"]


def test_cli_compare_missing_data_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    code = cli.main(["compare", "--task", "gpt-shakespeare", "--recipes", "fp32", "--data", str(missing)])
    assert code == 2
    err = capsys.readouterr().err
    assert "lowbit compare: error: text file not found" in err and str(missing) in err


def test_cli_rejects_unknown_task(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--task", "gpt-wikipedia"])
    assert exc.value.code == 2
    assert "invalid choice: 'gpt-wikipedia'" in capsys.readouterr().err


def test_compare_resume_reuses_finished_runs_and_starts_missing_ones(tmp_path, text_file, tiny):
    (done,), _ = compare([tiny("gpt-shakespeare", tmp_path / "cmp" / "fp32", text_file)], tmp_path / "cmp")
    checkpoint = tmp_path / "cmp" / "fp32" / "checkpoint.pt"
    mtime = checkpoint.stat().st_mtime_ns
    resumed = tiny("gpt-shakespeare", tmp_path / "cmp" / "fp32", text_file, resume=True)
    (again,), _ = compare([resumed], tmp_path / "cmp")
    assert again == done  # nothing retrained: same numbers, same seconds
    assert checkpoint.stat().st_mtime_ns == mtime
    missing = tiny("gpt-shakespeare", tmp_path / "new" / "fp32", text_file, resume=True)
    (fresh,), _ = compare([missing], tmp_path / "new")  # no checkpoint yet: starts from step 0
    assert fresh.steps == 6 and fresh.final_train_loss == done.final_train_loss


def test_report_names_the_lsq_settings_of_int4_recipes():
    from lowbit.experiments.report import recipe_notes

    histories = {
        "fp32": {"recipe": {"name": "fp32", "kind": "fp32"}},
        "int4": {"recipe": {"name": "int4", "lsq_init": "mse", "lsq_lr": 0.01, "hadamard_block": None}},
        "int4-paper": {
            "recipe": {"name": "int4-paper", "lsq_init": "paper", "lsq_lr": 0.01, "hadamard_block": 32}
        },
        "old": {},
    }
    lines = recipe_notes(histories).splitlines()
    assert lines == [
        "- `int4`: LSQ step init mse, relative step lr 0.01, Hadamard block searched per layer",
        "- `int4-paper`: LSQ step init paper, relative step lr 0.01, Hadamard block 32",
    ]
