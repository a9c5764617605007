"""QuantLinear as a module: integer-only products, state dicts, block search, cold start, shapes, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit.training.functional as functional
from lowbit.training import QuantLinear, Recipe, get_recipe
from lowbit.training.hadamard_quant import block_transform, candidate_blocks, search_block
from lowbit.training.lsq import lsq_init

RECIPES = ["int8", "int4", "int4-sample", "int4-naive"]


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPES)
def test_all_products_on_the_integer_engine(recipe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = functional.int_matmul_scaled

    def spy(a, b, *args, layout: str, bits: int, **kwargs):
        assert a.dtype == b.dtype == torch.int8 and int(a.int().abs().max()) <= 2 ** (bits - 1)
        out = real(a, b, *args, layout=layout, bits=bits, **kwargs)
        calls.append(tuple(out.shape))
        return out

    def no_float_matmul(*args, **kwargs):
        raise AssertionError("float matmul on the quantized path")

    monkeypatch.setattr(functional, "int_matmul_scaled", spy)
    for name in ("matmul", "mm", "bmm", "addmm"):
        monkeypatch.setattr(torch, name, no_float_matmul)
    monkeypatch.setattr(torch.nn.functional, "linear", no_float_matmul)
    q = QuantLinear(64, 32, recipe=recipe)
    x = torch.randn(2, 8, 64, requires_grad=True)
    q(x).sum().backward()
    # every product ran on the engine: fprop Y (16, 32), dgrad ∇X (16, 64), wgrad ∇W (32, 64) (the int4
    # recipe takes layout "nt" for all three, on transposed code copies)
    assert {(16, 32), (16, 64), (32, 64)} <= set(calls)
    assert x.grad.shape == x.shape and q.weight.grad.shape == q.weight.shape and q.bias.grad.shape == (32,)


def test_linear_state_dict_loads_and_shares_parameters() -> None:
    lin = nn.Linear(64, 16)
    q = QuantLinear(64, 16, recipe="int4")
    q.load_state_dict(lin.state_dict())  # strict: quantizer state is rebuilt lazily
    x = torch.randn(8, 64)
    y1 = q(x)
    q2 = QuantLinear(64, 16, recipe="int4")
    q2.load_state_dict(q.state_dict())  # learned steps and block size travel with the state dict
    assert torch.equal(q2(x), y1)
    shared = QuantLinear.from_linear(lin, "int8")
    assert shared.weight is lin.weight and shared.bias is lin.bias


def test_block_search_and_fixed_block() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=gen)
    x[:, 7] *= 50.0  # one outlier channel: spreading it over a block helps
    w = torch.randn(16, 96, generator=gen)
    assert candidate_blocks(96) == [1, 2, 4, 8, 16, 32]
    g = search_block(x, w)
    assert g in candidate_blocks(96) and g > 1
    q = QuantLinear(96, 16, recipe="int4")  # the registered int4 searches (the paper's released script)
    assert get_recipe("int4").hadamard_block is None and int(q.hadamard_block) == 0  # unset until used
    q(x)
    assert int(q.hadamard_block) == search_block(x, q.weight)
    # a fixed block is capped to the largest power of two dividing D
    assert (
        int(
            QuantLinear(
                96, 16, recipe=Recipe("int4-64", **{**_int4_fields(), "hadamard_block": 64})
            ).hadamard_block
        )
        == 32
    )
    fixed32 = Recipe("int4-32", **{**_int4_fields(), "hadamard_block": 32})
    assert int(QuantLinear(100, 16, recipe=fixed32).hadamard_block) == 4


def _int4_fields() -> dict:
    r = get_recipe("int4")
    return {f: getattr(r, f) for f in ("kind", "fprop", "dgrad", "wgrad", "lss")}


def test_cold_start_resets_steps() -> None:
    q = QuantLinear(
        32, 8, recipe=Recipe("int4-cold", **_int4_fields(), hadamard_block=32, cold_start_steps=2)
    )
    for step in range(3):
        x = torch.randn(16, 32) * (step + 1)
        with torch.no_grad():
            q.x_step.fill_(123.0)  # as if an optimizer had moved it
        q(x)
        # reset to 2·mean|XH|/√7 during the first two training forwards, learned (left alone) afterwards
        expected = float(lsq_init(block_transform(x, 32))) if step < 2 else 123.0
        assert float(q.x_step.detach()) == pytest.approx(expected, rel=1e-6)
    assert int(q.steps_done) == 3


def test_errors() -> None:
    with pytest.raises(ValueError, match="fp32"):
        QuantLinear(4, 4, recipe="fp32")
    with pytest.raises(ValueError, match="in_features"):
        QuantLinear(32, 4, recipe="int8")(torch.randn(2, 16))


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPES)
@pytest.mark.parametrize("lead", [(0,), (3, 0)], ids=["0-rows", "3x0-rows"])
def test_zero_row_batch_forward_backward(recipe: str, lead: tuple[int, ...]) -> None:
    """Issue 14 #9: an INT4 forward+backward on a 0-row batch raised ZeroDivisionError (lsq_grad_scale(0))."""
    layer = QuantLinear(64, 16, recipe=recipe)
    x = torch.zeros(*lead, 64, requires_grad=True)
    y = layer(x)
    assert y.shape == (*lead, 16)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.equal(layer.weight.grad, torch.zeros(16, 64)) and torch.equal(
        layer.bias.grad, torch.zeros(16)
    )
    if get_recipe(recipe).kind == "int4":  # nothing learned from no data: the steps and block stay unset
        assert float(layer.x_step.grad) == float(layer.w_step.grad) == 0.0
        assert float(layer.x_step.detach()) == float(layer.w_step.detach()) == 0.0
        assert int(layer.steps_done) == 0
        real = layer(torch.randn(8, 64))  # the first real batch initialises them as usual
        assert real.shape == (8, 16) and float(layer.x_step.detach()) > 0 and int(layer.hadamard_block) > 0


def test_lsq_grad_scale_of_an_empty_tensor() -> None:
    from lowbit.training.lsq import lsq_grad_scale, lsq_step_grad

    assert lsq_grad_scale(0) == 0.0
    assert float(lsq_step_grad(torch.zeros(0, 4), torch.zeros(0, 4))) == 0.0
    with pytest.raises(ValueError, match="numel"):
        lsq_grad_scale(-1)


@pytest.mark.parametrize("recipe", ["int4", "int4-naive"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_is_named(recipe: str, value: float) -> None:
    """Issue 14: an int4 forward with NaN input said "a holds codes in [-128, 2], outside [-8, 7]"; Inf gave
    a step initialised from Inf (int4) or an all-NaN output (int4-naive)."""
    layer = QuantLinear(64, 16, recipe=recipe)
    x = torch.randn(8, 64)
    x[2, 5] = value
    with pytest.raises(ValueError, match=r"(input holds|NaN/Inf).*nan_to_num"):
        layer(x)


def test_nan_after_initialisation_is_named() -> None:
    layer = QuantLinear(64, 16, recipe="int4").eval()
    layer(torch.randn(8, 64))  # steps initialised
    x = torch.randn(8, 64)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="input holds 1 NaN and 0 infinite values"):
        layer(x)


def test_input_type_and_shape_errors() -> None:
    """Found by the fuzz suite: a 0-d input raised IndexError (x.shape[-1]); a non-float one reached torch."""
    layer = QuantLinear(32, 8, recipe="int4")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 32\)"):
        layer(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 32\)"):
        layer(torch.zeros(4, 31))
    with pytest.raises(TypeError, match="floating-point tensor"):
        layer(torch.zeros(4, 32, dtype=torch.int64))


def test_layer_built_on_meta_materializes_clean() -> None:
    """A QuantLinear constructed on the meta device keeps its quantizer state there too, runs meta inputs,
    and after to_empty starts unset (not with uninitialised memory as its block / steps)."""
    layer = QuantLinear(64, 16, recipe="int4", device="meta")
    assert layer.x_step.is_meta and layer.hadamard_block.is_meta
    assert layer(torch.empty(3, 64, device="meta")).shape == (3, 16)
    layer.to_empty(device="cpu")
    assert float(layer.x_step.detach()) == float(layer.w_step.detach()) == 0.0
    assert int(layer.hadamard_block) == 0 and int(layer.steps_done) == 0
    nn.init.normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    assert bool(torch.isfinite(layer(torch.randn(4, 64))).all())
