"""The runner with the quantized training recipes (lowbit.convert): same start, exact resume, clear errors."""

from __future__ import annotations

import pytest
import torch

from lowbit.experiments.compare import compare
from lowbit.experiments.runner import finish, prepare, train

QUANTIZED = ["int8", "int4", "int4-naive"]


@pytest.mark.parametrize("recipe", QUANTIZED, ids=QUANTIZED)
def test_every_recipe_starts_from_the_fp32_weights(recipe, tmp_path, text_file, tiny):
    """Same seed => same initial weights: every parameter both models share by name is equal at step 0."""
    reference = prepare(tiny("gpt-shakespeare", tmp_path / "fp32", text_file)).model.state_dict()
    converted = prepare(
        tiny("gpt-shakespeare", tmp_path / recipe, text_file, recipe=recipe)
    ).model.state_dict()
    shared = [name for name in reference if name in converted]
    assert any(name.endswith("blocks.0.mlp.fc_in.weight") for name in shared), sorted(converted)[:10]
    for name in shared:
        assert torch.equal(reference[name], converted[name]), name


@pytest.mark.parametrize("recipe", ["int4", "int4-naive"], ids=["int4", "int4-naive"])
def test_quantized_resume_is_bit_identical(recipe, tmp_path, text_file, tiny):
    """Stochastic rounding, LSQ step sizes and block-size choices must all survive a checkpoint."""

    def config_of(out, **kw):
        return tiny("gpt-shakespeare", out, text_file, recipe=recipe, checkpoint_every=3, **kw)

    full = []
    finish(prepare(config_of(tmp_path / "full")), on_step=lambda step, loss: full.append(loss))
    part = []

    class Interrupted(Exception):
        pass

    def stop_at_3(step, loss):
        part.append(loss)
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config_of(tmp_path / "resumed"), on_step=stop_at_3)
    finish(
        prepare(config_of(tmp_path / "resumed", resume=True)), on_step=lambda step, loss: part.append(loss)
    )
    assert part == full


def test_compare_two_recipes_rows_and_deltas(tmp_path, text_file, tiny):
    configs = [tiny("gpt-shakespeare", tmp_path / "cmp" / r, text_file, recipe=r) for r in ("fp32", "int4")]
    results, report = compare(configs, tmp_path / "cmp")
    assert [r.recipe for r in results] == ["fp32", "int4"]
    lines = [
        line
        for line in report.read_text().splitlines()
        if line.startswith("| fp32 ") or line.startswith("| int4 ")
    ]
    assert len(lines) == 2 and "%)" in lines[1]  # relative delta vs fp32 for the held-out loss
