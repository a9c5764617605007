"""Recipes: registry, validation, every product named."""

from __future__ import annotations

import dataclasses

import pytest

from lowbit.training import RECIPES, OperandSpec, Recipe, get_recipe


def test_registered_names() -> None:
    assert {"fp32", "int8", "int4", "int4-naive", "int4-sample"} <= set(RECIPES)
    assert get_recipe("int4").lss == "nonzero" and get_recipe("int4-sample").lss == "sample"
    assert not get_recipe("fp32").converts and get_recipe("int8").converts


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="int4-naive"):
        get_recipe("int3")
    with pytest.raises(TypeError):
        get_recipe(4)  # type: ignore[arg-type]


def test_recipe_object_passes_through_and_is_frozen() -> None:
    r = get_recipe("int4")
    assert get_recipe(r) is r
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lss = "sample"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="int5"), "kind"),
        (dict(kind="int4", lss="maybe"), "lss"),
        (dict(kind="int4", grad_rounding="up"), "grad_rounding"),
        (dict(kind="int4", hadamard_block=24), "power of two"),
        (dict(kind="int4", cold_start_steps=-1), "cold_start"),
        (dict(kind="int4", split_clamp=8), "split_clamp"),
    ],
    ids=["kind", "lss", "rounding", "block", "cold-start", "clamp"],
)
def test_recipe_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Recipe("bad", **kwargs)


def test_operand_validation() -> None:
    with pytest.raises(ValueError, match="bits"):
        OperandSpec(3, "per-tensor")
    with pytest.raises(ValueError, match="algorithm"):
        OperandSpec(4, "magic")
    with pytest.raises(ValueError, match="float"):
        OperandSpec(0, "per-tensor")


@pytest.mark.parametrize("name", ["int8", "int4", "int4-naive"])
def test_every_product_quantized(name: str) -> None:
    r = get_recipe(name)
    for product in (r.fprop, r.dgrad, r.wgrad):
        assert product.lhs.bits in (4, 8) and product.rhs.bits in (4, 8)
