"""``QuantLinear``: a drop-in ``nn.Linear`` whose three products run on lowbit's integer engine per a recipe.

Parameters keep ``nn.Linear``'s names (``weight``, ``bias``), so an ``nn.Linear`` state dict loads (strict)
into a ``QuantLinear``. INT4 (Hadamard + LSQ) layers add ``x_step``/``w_step`` (learned LSQ step sizes) and
buffers ``hadamard_block`` and ``steps_done``; when those are missing from a loaded state dict they are
(re)initialised at the next forward. The other way, an INT4 state dict holds those extra keys: load it into
a plain FP32 model through :func:`lowbit.training.fp32_state_dict` (which drops them; then strict works) or
with ``strict=False``. A layer on the meta device runs on meta inputs (shapes only); materialized with
``to_empty`` its quantizer state is reset to "initialise at the next forward" (not left uninitialised).
The layer owns a ``torch.Generator`` (``self.generator``) for stochastic rounding and row sampling, seeded
from ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from lowbit.training import distributed as sharded
from lowbit.training.functional import Int4HQLinearFn, Int4NaiveLinearFn, Int8LinearFn
from lowbit.training.hadamard_quant import block_transform, resolve_block
from lowbit.training.recipes import Recipe, get_recipe

_LAZY_KEYS = ("x_step", "w_step", "hadamard_block", "steps_done")
_UNSET = 0  # hadamard_block / step value meaning "initialise at the next forward"


def _usable_step(step: float) -> bool:
    """A learned step size the quantizer can use: finite and > 0 (0 is the "unset" marker)."""
    return step > _UNSET and math.isfinite(step)


def _raise_if_non_finite(x2d: torch.Tensor, weight: torch.Tensor, err: Exception | None) -> None:
    """Turn an engine error caused by NaN/Inf input or weight into a ValueError naming that cause."""
    for name, t in (("input", x2d), ("weight", weight)):
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            n_nan = int(torch.isnan(t.detach()).sum())
            raise ValueError(
                f"QuantLinear {name} holds {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values: the "
                "INT4 quantizer needs finite values (a diverged training or bad data upstream: lower the "
                "learning rate, clip gradients, or torch.nan_to_num the input)"
            ) from err


class QuantLinear(nn.Linear):
    """``y = x Wᵀ + b`` with quantized forward, activation-gradient and weight-gradient products.

    ``recipe``: a registered name or a :class:`Recipe` (not ``fp32``). Inputs of any shape ``(..., D)``;
    float32 compute. ``seed`` seeds the layer's own generator.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        recipe: str | Recipe = "int4",
        seed: int = 0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = get_recipe(recipe)
        if not self.recipe.converts:
            raise ValueError("recipe 'fp32' has nothing to quantize; use torch.nn.Linear")
        self.generator = torch.Generator().manual_seed(seed)
        if self.recipe.kind == "int4":
            fixed = resolve_block(self.recipe.hadamard_block, in_features)
            self.x_step = nn.Parameter(torch.tensor(float(_UNSET), device=device))
            self.w_step = nn.Parameter(torch.tensor(float(_UNSET), device=device))
            self.register_buffer(
                "hadamard_block", torch.tensor(fixed or _UNSET, dtype=torch.int64, device=device)
            )
            self.register_buffer("steps_done", torch.tensor(0, dtype=torch.int64, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: str | Recipe, seed: int = 0) -> QuantLinear:
        """A ``QuantLinear`` sharing ``linear``'s weight and bias Parameters (optimizers keep working)."""
        q = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            recipe=recipe,
            seed=seed,
            device="meta",
        )
        q.weight, q.bias = linear.weight, linear.bias
        if q.recipe.kind == "int4":  # the meta-device placeholders of __init__ → real tensors
            q.x_step = nn.Parameter(torch.tensor(float(_UNSET), device=linear.weight.device))
            q.w_step = nn.Parameter(torch.tensor(float(_UNSET), device=linear.weight.device))
            fixed = resolve_block(q.recipe.hadamard_block, q.in_features)
            q.hadamard_block = torch.tensor(fixed or _UNSET, dtype=torch.int64, device=linear.weight.device)
            q.steps_done = torch.tensor(0, dtype=torch.int64, device=linear.weight.device)
        return q

    def _reset_quant_state(self) -> None:
        """INT4: steps, block and step count back to "initialise at the next forward"."""
        with torch.no_grad():
            self.x_step.fill_(_UNSET)
            self.w_step.fill_(_UNSET)
            self.hadamard_block.fill_(resolve_block(self.recipe.hadamard_block, self.in_features) or _UNSET)
            self.steps_done.zero_()

    def _apply(self, fn, recurse: bool = True):
        # materializing a meta layer (``to_empty``) leaves every tensor uninitialised: the weights are the
        # caller's to load, but the quantizer state must not be garbage (a random block or step size)
        was_meta = self.recipe.kind == "int4" and (self.weight.is_meta or self.x_step.is_meta)
        out = super()._apply(fn, recurse)
        if was_meta and not (self.weight.is_meta or self.x_step.is_meta):
            self._reset_quant_state()
        return out

    def _prepare_int4(self, x2d: torch.Tensor) -> int:
        """Search the block size and initialise the LSQ steps when unset or not positive; cold-start reset."""
        with torch.no_grad():
            if int(self.hadamard_block) == _UNSET:
                # X's statistics over every process's rows (recipe.group; None: this batch alone)
                self.hadamard_block.fill_(sharded.search_block(x2d, self.weight, self.recipe.group))
            block = int(self.hadamard_block)
            cold = self.training and int(self.steps_done) < self.recipe.cold_start_steps
            # a step that is unset (0), was pushed to or through zero by the optimizer, or is not finite is
            # (re)initialised: a step near zero clips the whole tensor to ±8 (sign quantization)
            init = self.recipe.lsq_init  # "paper" (2·mean|·|/√7) or "mse" (the MSE-best step)
            if cold or not _usable_step(float(self.x_step)):
                # (only here, on the rare initialising steps, is the input checked for NaN/Inf: a step
                # initialised from them would be garbage; later a NaN fails in the engine, caught in forward)
                _raise_if_non_finite(x2d, self.weight, None)
                self.x_step.copy_(sharded.init_step(block_transform(x2d, block), init, self.recipe.group))
            if cold or not _usable_step(float(self.w_step)):
                self.w_step.copy_(sharded.init_step(block_transform(self.weight, block), init))
            if self.training:
                self.steps_done += 1
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(
                f"QuantLinear input must be a floating-point tensor (..., {self.in_features}), got {got}"
            )
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"QuantLinear input must have shape (..., {self.in_features}) (last dim = in_features), got "
                f"shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features).float()  # (N, D)
        kind = self.recipe.kind
        if self.weight.is_meta or x2d.is_meta:
            if not x2d.is_meta:
                raise ValueError(
                    "this QuantLinear's weights are on the meta device (shapes only): materialize the model "
                    "first (model.to_empty(device='cpu'), then load a state dict) or pass a meta input"
                )
            bias = None if self.bias is None else self.bias.to("meta")
            y = torch.nn.functional.linear(x2d, self.weight.to("meta"), bias)  # shapes only
        elif kind == "int4" and x2d.shape[0] == 0:
            # no rows: nothing to multiply, and nothing to search the Hadamard block or initialise the LSQ
            # steps from (they stay unset until real data arrives); an empty output, zero gradients
            y = torch.nn.functional.linear(x2d, self.weight, self.bias) + 0.0 * (self.x_step + self.w_step)
        elif kind == "int4":
            block = self._prepare_int4(x2d)
            try:
                y = Int4HQLinearFn.apply(
                    x2d, self.weight, self.bias, self.x_step, self.w_step, block, self.recipe, self.generator
                )
            except ValueError as err:  # NaN input reaches the engine as out-of-range codes: say what it is
                _raise_if_non_finite(x2d, self.weight, err)
                raise
        elif kind == "int4-naive":
            y = Int4NaiveLinearFn.apply(x2d, self.weight, self.bias, self.recipe)
        else:
            y = Int8LinearFn.apply(x2d, self.weight, self.bias, self.recipe)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for key in _LAZY_KEYS:  # an nn.Linear state dict: the quantizer state is rebuilt lazily
            if prefix + key in missing_keys:
                missing_keys.remove(prefix + key)
                if key in ("x_step", "w_step"):
                    getattr(self, key).data.fill_(_UNSET)
                elif key == "hadamard_block":
                    fixed = resolve_block(self.recipe.hadamard_block, self.in_features)
                    self.hadamard_block.fill_(fixed or _UNSET)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"


def attach_group(model: torch.nn.Module, group: Any) -> int:
    """Give every ``QuantLinear`` of ``model`` a recipe whose statistics reduce over ``group``; the count."""
    n = 0
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.recipe = dataclasses.replace(module.recipe, group=group)
            n += 1
    return n
