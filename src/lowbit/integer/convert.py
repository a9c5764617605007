"""``convert(model, calib_batches)``: calibrate activation ranges on FP32 runs, fold every scale into integer
constants, and build the integer-only graph (lowbit's Integer-Transformer GPT; MiniLM in ``convert_bert``).

Scales (conversion-time floats, never used at run time): weights symmetric int8 per output channel
(absmax/127); activations int8 per tensor (calibrated absmax/127); the residual stream int32 at one scale with
``RESIDUAL_BITS`` of headroom-adjusted resolution. Every ratio of scales becomes a :class:`Dyadic`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.formats import INT8_SYMMETRIC, PROB_RANGE, CodeRange
from lowbit.integer import kernels
from lowbit.integer.graph import IntAttention, IntegerGPT, IntGPTBlock, IntLinear, IntNorm
from lowbit.integer.scaled import Dyadic
from lowbit.modules import RunningAbsmax, capture
from lowbit.quantizers import absmax, symmetric_codes, symmetric_scale

logger = logging.getLogger(__name__)

#: The residual stream's calibrated absmax (times RESIDUAL_HEADROOM) maps to 2^RESIDUAL_BITS.
RESIDUAL_BITS = 20
RESIDUAL_HEADROOM = 2.0
#: Fractional bits of the P·V per-row constant (row_const ≈ 2^ROW_CONST_BITS · s_v / (127 · s_y)).
ROW_CONST_BITS = 20
#: Zero policy of the conversion's scales (kept from before lowbit.quantizers.symmetric_scale named them):
#: weight scales are floored at 1e-12 (float64), calibrated activation ranges at 1e-8 before ``/ qmax``.
WEIGHT_SCALE_FLOOR = 1e-12
ACT_ABSMAX_FLOOR = 1e-8


@dataclass(frozen=True)
class IntegerConfig:
    """The integer-only conversion's config: ``lowbit.convert(model, IntegerConfig(), calibration=batches)``.

    Weights become int8 codes with one scale per output channel, activations int8 codes with one calibrated
    scale per tensor; the two fields bound the codes' magnitude, which fixes their resolution and so which
    integer GEMM kernel runs (``docs/DESIGN.md``, "integer/").

    Attributes:
        act_qmax: largest activation code: every activation tensor maps its calibrated absmax to ``act_qmax``
            (codes in ``[-act_qmax, act_qmax]``). An int in [1, 127]; 127 (default) is full int8.
        weight_qmax: largest weight code, per output channel (absmax -> ``weight_qmax``). An int in [1, 127];
            127 (default) is full int8; 64 or less makes 7-bit weights, which take the faster fused u8 x s8
            GEMM (``vpmaddubsw``) instead of the exact int16 one. ``lowbit infer`` converts the GPT with 64.
    """

    act_qmax: int = INT8_SYMMETRIC.hi
    weight_qmax: int = INT8_SYMMETRIC.hi

    def __post_init__(self) -> None:
        for name in ("act_qmax", "weight_qmax"):
            v, top = getattr(self, name), INT8_SYMMETRIC.hi
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"IntegerConfig.{name} must be an int in [1, {top}], got {v!r}")
            if not 1 <= v <= top:
                raise ValueError(f"IntegerConfig.{name} must be in [1, {top}], got {getattr(self, name)}")


ConvertConfig = IntegerConfig  # its name before lowbit.convert took every workflow's config


def check_finite_model(model: nn.Module, what: str) -> None:
    """ValueError naming the first parameter/buffer holding NaN/Inf (and the count), not the tensor."""
    bad = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not t.is_meta:
            n = int((~torch.isfinite(t.detach())).sum())
            if n:
                bad.append((name, n, t.numel()))
    if bad:
        name, n, total = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise ValueError(
            f"{what}: {name} holds {n} NaN/Inf values of {total}{more}; the FP32 model must be finite to "
            "convert (a diverged training: load an earlier checkpoint)"
        )
    meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(
            f"{what}: {meta[0]} (and {len(meta) - 1} more) are on the meta device (shapes only); load the "
            "weights first (model.to_empty(device='cpu'), then load_state_dict)"
        )


def check_finite_ranges(ranges: dict[str, float | torch.Tensor], what: str) -> None:
    """ValueError naming the calibrated activations that are not finite."""
    bad = [k for k, v in ranges.items() if not bool(torch.isfinite(torch.as_tensor(v)).all())]
    if bad:
        raise ValueError(
            f"{what}: calibration saw NaN/Inf activations at {', '.join(bad[:5])}"
            f"{' and more' if len(bad) > 5 else ''}; the calibration batches overflow the FP32 model"
        )


def _weight_codes(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes and float64 scales of a (N, K) weight."""
    w64 = w.detach().to(torch.float64)
    # float64 scales floored at 1e-12 (an all-zero row keeps 1e-12, not 1: it enters the bias and multiplier)
    scale = symmetric_scale(absmax(w64, 1), qmax, floor=WEIGHT_SCALE_FLOOR, zero_scale=None)
    codes = symmetric_codes(w64, scale[:, None], CodeRange(-qmax, qmax))
    return codes, scale


def _dyadic32(ratio: torch.Tensor | float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = Dyadic.from_ratio(torch.as_tensor(ratio, dtype=torch.float64).expand(n).contiguous())
    return d.mult.to(torch.int32).contiguous(), d.shift.to(torch.int32).contiguous()


def fold_linear(
    lin: nn.Linear,
    s_x: float | torch.Tensor,
    s_y: float | torch.Tensor,
    cfg: IntegerConfig,
    relu: bool = False,
) -> IntLinear:
    """Fold an FP32 linear with int8 input at ``s_x`` and output at ``s_y`` (int8, or the int32 residual).

    A per-input-channel ``s_x`` (float64 (K,)) is folded into the weight's columns before its quantization
    (``W·diag(s_x)``: the integer product then needs no input scale).
    """
    w = lin.weight.detach().to(torch.float64)
    if isinstance(s_x, torch.Tensor):
        w, s_x = w * s_x, 1.0
    codes, s_w = _weight_codes(w, cfg.weight_qmax)
    bias = None
    if lin.bias is not None:
        b = torch.round(lin.bias.detach().to(torch.float64) / (s_x * s_w))
        bias = b.clamp(-(2**31), 2**31 - 1).to(torch.int32).contiguous()
    mult, shift = _dyadic32(s_x * s_w / s_y, codes.shape[0])
    return IntLinear(codes.contiguous(), bias, mult, shift, relu)


def _act_scale(amax: float | torch.Tensor, qmax: int) -> float | torch.Tensor:
    """Calibrated activation scale: the absmax floored at ACT_ABSMAX_FLOOR *before* the division."""
    return symmetric_scale(amax, qmax, min_absmax=ACT_ABSMAX_FLOOR, floor=None, zero_scale=None)


def fold_norm(
    norm: nn.Module, kind: str, s_res: float, res_absmax: float, s_out: float | torch.Tensor
) -> IntNorm:
    """Fold an L1LayerNorm/LayerNorm on the int32 residual at ``s_res`` into an int8-output integer norm."""
    k = kernels.norm_constants(kind, s_res, res_absmax, norm.weight, norm.bias, norm.eps, s_out)
    k = kernels.NormConstants(
        k.pre_shift, k.eps, k.gamma.to(torch.int32), k.gamma_shift, k.beta.to(torch.int32)
    )
    return IntNorm(kind, k)


def calibrate_ranges(
    watches: Iterable[tuple[nn.Module, str, str, bool]],
    batches: Iterable[object],
    run: Callable[[object], object],
    what: str,
    name: str,
) -> dict[str, float | torch.Tensor]:
    """Run each batch (``run(batch)``) through the FP32 model and return the running absmax recorded at every
    watch ``(module, key, "in" | "out", per_channel)``: the module's input or output, one float or (per
    channel) a float64 ``(C,)``; several watches may feed one key. ``ValueError`` for no batch (``name``
    needs at least one) or non-finite ranges (named after ``what``)."""
    watches = list(watches)
    absmax = RunningAbsmax([key for _, key, _, per_channel in watches if per_channel])
    inputs = [(key, module) for module, key, where, _ in watches if where == "in"]
    outputs = [(key, module) for module, key, where, _ in watches if where == "out"]
    n_batches = 0
    with capture(inputs, absmax), capture(outputs, absmax, what="output"):
        for batch in batches:
            run(batch)
            n_batches += 1
    if n_batches == 0:
        raise ValueError(f"{name} needs at least one calibration batch")
    check_finite_ranges(absmax.values, what)
    return absmax.values


def _check_gpt(model: nn.Module) -> None:
    from lowbit.models.gpt import GPT

    if not isinstance(model, GPT):
        raise TypeError(
            f"convert takes lowbit.models.gpt.GPT (MiniLM: convert_bert), got {type(model).__name__}"
        )
    mc = model.config
    if (mc.attention, mc.norm, mc.activation) != ("poly", "l1", "relu"):
        raise ValueError(
            "convert needs the Integer Transformer (attention='poly', norm='l1', activation='relu'), got "
            f"attention={mc.attention!r}, norm={mc.norm!r}, activation={mc.activation!r}"
        )
    check_finite_model(model, "integer.convert")


def _gpt_watches(model: nn.Module) -> Iterator[tuple[nn.Module, str, str, bool]]:
    """Where the GPT's activation ranges are calibrated: (module, key, "in" | "out", per_channel)."""
    for i, blk in enumerate(model.blocks):
        yield blk, "residual", "in", False
        yield blk, "residual", "out", False
        for nm in ("norm1", "norm2"):
            yield getattr(blk, nm), f"{i}.{nm}", "out", False
        for nm in ("q_proj", "k_proj", "v_proj"):
            yield getattr(blk.attn, nm), f"{i}.{nm}", "out", False
        yield blk.attn.out_proj, f"{i}.attn_y", "in", False
        yield blk.mlp.fc_out, f"{i}.hidden", "in", False
    yield model.ln_f, "ln_f", "out", False


def _fold_block(
    blk: nn.Module, i: int, a: dict, s_res: float, res_absmax: float, cfg: IntegerConfig
) -> IntGPTBlock:
    """Block ``i`` of the GPT folded into integers, from the calibrated ranges ``a``."""
    qa = cfg.act_qmax
    s_n1, s_n2 = (_act_scale(a[f"{i}.{nm}"], qa) for nm in ("norm1", "norm2"))
    s_q, s_k, s_v = (_act_scale(a[f"{i}.{nm}"], qa) for nm in ("q_proj", "k_proj", "v_proj"))
    s_y, s_h = _act_scale(a[f"{i}.attn_y"], qa), _act_scale(a[f"{i}.hidden"], qa)
    att = blk.attn
    s_sc = s_q * s_k / math.sqrt(att.head_dim)
    bias = torch.round(att.poly_b.detach().to(torch.float64) / s_sc).to(torch.int64)
    delta = round(abs(float(att.poly_delta)) / s_sc**2)
    row_const = round(2**ROW_CONST_BITS * s_v / (PROB_RANGE.hi * s_y))
    if att.poly_power != 2:
        raise ValueError(f"integer poly attention implements n=2, got {att.poly_power}")
    return IntGPTBlock(
        norm1=fold_norm(blk.norm1, "l1", s_res, res_absmax, s_n1),
        q=fold_linear(att.q_proj, s_n1, s_q, cfg),
        k=fold_linear(att.k_proj, s_n1, s_k, cfg),
        v=fold_linear(att.v_proj, s_n1, s_v, cfg),
        attn=IntAttention(
            att.n_head,
            "poly",
            row_const,
            kernels.ROW_FRAC_BITS + ROW_CONST_BITS,
            bias=bias,
            delta=max(delta, 0),
        ),
        out=fold_linear(att.out_proj, s_y, s_res, cfg),
        norm2=fold_norm(blk.norm2, "l1", s_res, res_absmax, s_n2),
        fc_in=fold_linear(blk.mlp.fc_in, s_n2, s_h, cfg, relu=True),
        fc_out=fold_linear(blk.mlp.fc_out, s_h, s_res, cfg),
    )


@torch.no_grad()
def convert(
    model: nn.Module, calib_batches: Iterable[torch.Tensor], config: IntegerConfig | None = None
) -> IntegerGPT:
    """Convert lowbit's Integer-Transformer ``GPT`` (attention "poly", norm "l1", activation "relu").

    ``calib_batches``: token-id tensors (B, T) run through the FP32 model to calibrate activation ranges.
    ``lowbit.convert(model, IntegerConfig(...), calibration=calib_batches)`` is the same conversion.
    """
    cfg = config or IntegerConfig()
    _check_gpt(model)
    model.eval()
    a = calibrate_ranges(_gpt_watches(model), calib_batches, model, "integer.convert", "convert")
    res_absmax = a["residual"] * RESIDUAL_HEADROOM
    s_res = res_absmax / 2**RESIDUAL_BITS
    qa = cfg.act_qmax

    mc = model.config
    c = mc.n_embd
    wte, s_wte = _weight_codes(model.wte.weight.t(), cfg.weight_qmax)  # per embedding channel
    wpe, s_wpe = _weight_codes(model.wpe.weight.t(), cfg.weight_qmax)
    wte_mult, wte_shift = _dyadic32(s_wte / s_res, c)
    wpe_mult, wpe_shift = _dyadic32(s_wpe / s_res, c)

    blocks = [_fold_block(blk, i, a, s_res, res_absmax, cfg) for i, blk in enumerate(model.blocks)]
    s_f = _act_scale(a["ln_f"], qa)
    head, s_head = _weight_codes(model.lm_head.weight, cfg.weight_qmax)
    logger.info("converted GPT: residual scale %.3g (absmax %.3g), %d blocks", s_res, res_absmax, len(blocks))
    return IntegerGPT(
        wte=wte.t().contiguous(),
        wte_mult=wte_mult,
        wte_shift=wte_shift,
        wpe=wpe.t().contiguous(),
        wpe_mult=wpe_mult,
        wpe_shift=wpe_shift,
        blocks=tuple(blocks),
        ln_f=fold_norm(model.ln_f, "l1", s_res, res_absmax, s_f),
        lm_head=head.contiguous(),
        logit_scale=(s_f * s_head).to(torch.float32),
        block_size=mc.block_size,
    )
