"""Integer-only BERT encoders (all-MiniLM-L6-v2): ``convert_bert(model, calib_batches) -> IntegerBert``.

An unmodified Hugging Face ``BertModel`` runs integer-only with I-BERT-style kernels: embedding codes summed
in int32, integer LayerNorm (Newton square root), softmax attention by i-exp, GELU by i-GELU (on an int32
input re-scaled to ``GELU_BITS`` so the polynomial stays in int32), post-norm residuals in int32, and mean
pooling summed in int32 — the output dequantization is the pooled sum times its scale over the token count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.formats import PROB_RANGE
from lowbit.integer import kernels
from lowbit.integer.convert import (
    RESIDUAL_BITS,
    RESIDUAL_HEADROOM,
    ROW_CONST_BITS,
    IntegerConfig,
    _act_scale,
    _dyadic32,
    _weight_codes,
    calibrate_ranges,
    check_finite_model,
    fold_linear,
    fold_norm,
)
from lowbit.integer.fast import PackedLinear, gelu_requant, requant_channels
from lowbit.integer.graph import DtypeTrace, IntAttention, IntLinear, IntNorm, _packed, _rec
from lowbit.models.gpt import check_token_ids

logger = logging.getLogger(__name__)

#: The GELU input is re-scaled so its calibrated absmax maps to 2^GELU_BITS (i-GELU products < 2^31).
GELU_BITS = 10


@dataclass(frozen=True, eq=False)
class IntBertLayer:
    """Post-norm encoder layer: r1 = x + out(attn(x)) → ln1; r2 = x1 + fc_out(gelu(fc_in(x1))) → ln2."""

    q: IntLinear
    k: IntLinear
    v: IntLinear
    attn: IntAttention
    x_to_r1: tuple[torch.Tensor, torch.Tensor]  # int32 (C,) mult, shift: int8 input -> residual scale
    out: IntLinear
    ln1: IntNorm
    fc_in: IntLinear  # int32 output at the GELU input scale (residual mode into zeros)
    gelu: kernels.GeluConstants
    gelu_pre_shift: int  # right shift of the int64 i-GELU result so it fits int32
    gelu_mult: torch.Tensor
    gelu_shift: torch.Tensor
    x1_to_r2: tuple[torch.Tensor, torch.Tensor]
    fc_out: IntLinear
    ln2: IntNorm

    def __call__(
        self, x: torch.Tensor, b: int, t: int, key_mask: torch.Tensor, trace, name: str
    ) -> torch.Tensor:
        """x int8 (B·T, C) → int8 (B·T, C)."""
        c = x.shape[1]
        fused = self.packed_qkv() if trace is None else None
        if fused is not None:  # fused GEMM + requantize (int16 path: 8-bit weights): the same integers
            q, k, v = fused(x).view(b, t, 3 * c).split(c, dim=2)
        else:
            q, k, v = (
                lin(x, trace, f"{name}.{nm}").view(b, t, c)
                for nm, lin in (("q", self.q), ("k", self.k), ("v", self.v))
            )
        ctx = self.attn(q, k, v, False, key_mask, trace, f"{name}.attn").view(b * t, c)
        r = _to_residual(x, self.x_to_r1)
        if fused is not None:
            self.out.packed_wide()(ctx, residual=r)
        else:
            self.out(ctx, trace, f"{name}.out_proj", residual=r)
        x1 = self.ln1(_rec(trace, f"{name}.residual1", r), trace, f"{name}.ln1")
        g_in = torch.zeros(b * t, self.fc_in.weight.shape[0], dtype=torch.int32)
        if fused is not None:
            self.fc_in.packed_wide()(x1, residual=g_in)
        else:
            self.fc_in(x1, trace, f"{name}.fc_in", residual=g_in)
        if trace is None:  # fused native i-GELU + requantization (the same integers)
            h = gelu_requant(g_in, self.gelu, self.gelu_pre_shift, self.gelu_mult, self.gelu_shift)
        else:
            g64 = kernels.i_gelu(g_in, self.gelu)
            if self.gelu_pre_shift:
                g64 = (g64 + (1 << (self.gelu_pre_shift - 1))) >> self.gelu_pre_shift
            g = _rec(trace, f"{name}.gelu", g64.clamp(-(2**31), 2**31 - 1).to(torch.int32))
            h = _rec(trace, f"{name}.hidden", requant_channels(g, None, self.gelu_mult, self.gelu_shift))
        r = _to_residual(x1, self.x1_to_r2)
        if fused is not None:
            self.fc_out.packed_wide()(h, residual=r)
        else:
            self.fc_out(h, trace, f"{name}.fc_out", residual=r)
        return self.ln2(_rec(trace, f"{name}.residual2", r), trace, f"{name}.ln2")

    def packed_qkv(self) -> PackedLinear | None:
        """q, k, v as one packed (3C, C) linear on the fused kernel's int16 path, when every linear of the
        layer can run there (8-bit weights, even K, native kernels); else None."""
        lins = (self.q, self.k, self.v, self.out, self.fc_in, self.fc_out)
        if any(lin.packed_wide() is None for lin in lins):
            return None

        def parts() -> tuple:
            qkv = (self.q, self.k, self.v)
            bias = [lin.bias if lin.bias is not None else torch.zeros_like(lin.mult) for lin in qkv]
            cat = torch.cat
            return (cat([lin.weight for lin in qkv]), cat(bias), cat([lin.mult for lin in qkv]),
                    cat([lin.shift for lin in qkv]), False)  # fmt: skip

        return _packed(self, -1, parts)

    def nbytes(self) -> int:
        lins = (self.q, self.k, self.v, self.out, self.fc_in, self.fc_out)
        return sum(p.nbytes() for p in lins) + self.ln1.nbytes() + self.ln2.nbytes()


def _to_residual(x: torch.Tensor, md: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """int8 (M, C) → int32 (M, C) at the residual scale (dyadic per channel)."""
    out = torch.zeros(x.shape, dtype=torch.int32)
    return requant_channels(x.to(torch.int32), None, md[0], md[1], residual=out)


@dataclass(frozen=True, eq=False)
class IntegerBert:
    """Integer-only BERT encoder; ``forward(input_ids, attention_mask)`` → mean-pooled float32 embeddings."""

    embeddings: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]  # (codes, mult, shift) x 3
    ln_emb: IntNorm
    layers: tuple[IntBertLayer, ...]
    out_scale: torch.Tensor  # float32 (C,): per-channel scale of the last LayerNorm's int8 output

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        trace: DtypeTrace | None = None,
    ) -> torch.Tensor:
        """(B, T) ids and mask → (B, C) mean-pooled embeddings (the output dequantization).

        ``input_ids`` / ``token_type_ids``: (batch, seq) ids inside their tables (checked: ``ValueError``);
        ``attention_mask``: the same shape.
        """
        (wte, wm, ws), (wpe, pm, ps), (wtt, tm, ts) = self.embeddings
        input_ids = check_token_ids(input_ids, wte.shape[0], wpe.shape[0], "input_ids")
        b, t = input_ids.shape
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (b, t):
            m = attention_mask
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"attention_mask must be a tensor of input_ids' shape {(b, t)}, got {got}")
        if token_type_ids is not None:
            token_type_ids = check_token_ids(token_type_ids, wtt.shape[0], wpe.shape[0], "token_type_ids")
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"token_type_ids must have input_ids' shape {(b, t)}, got {tuple(token_type_ids.shape)}"
                )
        c = wte.shape[1]
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        r = torch.zeros(b * t, c, dtype=torch.int32)
        pos = torch.arange(t).repeat(b)
        for table, ids, m, s in ((wte, input_ids.reshape(-1), wm, ws), (wpe, pos, pm, ps),
                                 (wtt, types.reshape(-1), tm, ts)):  # fmt: skip
            requant_channels(_rec(trace, "embed.codes", table[ids]).to(torch.int32), None, m, s, residual=r)
        x = self.ln_emb(_rec(trace, "embed", r), trace, "embed.ln")
        key_mask = attention_mask.to(torch.bool)
        for i, layer in enumerate(self.layers):
            x = layer(x, b, t, key_mask, trace, f"layers.{i}")
        x3 = x.view(b, t, c).to(torch.int32) * key_mask.view(b, t, 1)
        pooled = _rec(trace, "pool.sum", x3.sum(1, dtype=torch.int32))  # (B, C) int32
        count = key_mask.sum(1, keepdim=True).clamp_min(1)
        return pooled.to(torch.float32) * self.out_scale / count  # output dequantization

    __call__ = forward

    def weight_bytes(self) -> int:
        emb = sum(t.nbytes for trip in self.embeddings for t in trip)
        return emb + self.ln_emb.nbytes() + sum(layer.nbytes() for layer in self.layers)


def _embed_codes(table: nn.Embedding, s_res: float, qmax: int) -> tuple[torch.Tensor, ...]:
    codes, scale = _weight_codes(table.weight.t(), qmax)  # per hidden channel
    mult, shift = _dyadic32(scale / s_res, codes.shape[0])
    return codes.t().contiguous(), mult, shift


def _bert_watches(model: nn.Module) -> Iterator[tuple[nn.Module, str, str, bool]]:
    """Where the encoder's activation ranges are calibrated: (module, key, "in" | "out", per_channel)."""
    emb = model.embeddings
    yield emb.LayerNorm, "emb_sum", "in", False
    yield emb.LayerNorm, "emb_ln", "out", True
    for i, lay in enumerate(model.encoder.layer):
        for nm in ("query", "key", "value"):
            yield getattr(lay.attention.self, nm), f"{i}.{nm}", "out", False
        yield lay.attention.output.dense, f"{i}.ctx", "in", False
        yield lay.attention.output.LayerNorm, f"{i}.r1", "in", False
        yield lay.attention.output.LayerNorm, f"{i}.ln1", "out", True
        yield lay.intermediate.dense, f"{i}.gelu_in", "out", False
        yield lay.output.dense, f"{i}.hidden", "in", True
        yield lay.output.LayerNorm, f"{i}.r2", "in", False
        yield lay.output.LayerNorm, f"{i}.ln2", "out", True


def _res_scale(a: dict, key: str) -> tuple[float, float]:
    """The int32 residual's scale and (headroom-widened) absmax for calibrated key ``key``."""
    absmax = a[key] * RESIDUAL_HEADROOM
    return absmax / 2**RESIDUAL_BITS, absmax


def _fold_layer(
    lay: nn.Module, i: int, a: dict, s_x: float | torch.Tensor, cfg: IntegerConfig
) -> IntBertLayer:
    """Encoder layer ``i`` folded into integers, its int8 input at scale ``s_x``, from the ranges ``a``."""
    qa = cfg.act_qmax
    att = lay.attention.self
    n_head = att.num_attention_heads
    hd = att.attention_head_size
    s_q, s_k, s_v = (_act_scale(a[f"{i}.{nm}"], qa) for nm in ("query", "key", "value"))
    s_ctx = _act_scale(a[f"{i}.ctx"], qa)
    s_r1, r1_abs = _res_scale(a, f"{i}.r1")
    s_r2, r2_abs = _res_scale(a, f"{i}.r2")
    s_x1 = _act_scale(a[f"{i}.ln1"], qa)
    s_g = a[f"{i}.gelu_in"] / 2**GELU_BITS
    s_h = _act_scale(a[f"{i}.hidden"], qa)
    s_x2 = _act_scale(a[f"{i}.ln2"], qa)
    c = lay.output.dense.out_features
    g = kernels.gelu_constants(s_g)
    # |i-GELU| <= q_max · 2·|1/S_L| with q_max = 2^(GELU_BITS+2) (4x calibration headroom)
    bound = 2 ** (GELU_BITS + 2) * 2 * abs(g.one)
    pre = max(0, math.ceil(math.log2(bound)) - 30)
    gm, gs = _dyadic32(g.out_scale * 2**pre / s_h, lay.intermediate.dense.out_features)
    return IntBertLayer(
        q=fold_linear(att.query, s_x, s_q, cfg), k=fold_linear(att.key, s_x, s_k, cfg),
        v=fold_linear(att.value, s_x, s_v, cfg),
        attn=IntAttention(n_head, "softmax", round(2**ROW_CONST_BITS * s_v / (PROB_RANGE.hi * s_ctx)),
                          kernels.ROW_FRAC_BITS + ROW_CONST_BITS,
                          exp=kernels.exp_constants(s_q * s_k / math.sqrt(hd))),
        x_to_r1=_dyadic32(s_x / s_r1, c),
        out=fold_linear(lay.attention.output.dense, s_ctx, s_r1, cfg),
        ln1=fold_norm(lay.attention.output.LayerNorm, "layer", s_r1, r1_abs, s_x1),
        fc_in=fold_linear(lay.intermediate.dense, s_x1, s_g, cfg),
        gelu=g, gelu_pre_shift=pre, gelu_mult=gm, gelu_shift=gs,
        x1_to_r2=_dyadic32(s_x1 / s_r2, c),
        fc_out=fold_linear(lay.output.dense, s_h, s_r2, cfg),
        ln2=fold_norm(lay.output.LayerNorm, "layer", s_r2, r2_abs, s_x2),
    )  # fmt: skip


@torch.no_grad()
def convert_bert(
    model: nn.Module, calib_batches: Iterable[dict[str, torch.Tensor]], config: IntegerConfig | None = None
) -> IntegerBert:
    """Convert a Hugging Face ``BertModel`` (GELU, LayerNorm, softmax); calib batches: tokenizer outputs.

    ``lowbit.convert(model, IntegerConfig(...), calibration=calib_batches)`` is the same conversion.
    """
    cfg = config or IntegerConfig()
    check_finite_model(model, "convert_bert")
    emb = model.embeddings
    act = getattr(model.config, "hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"convert_bert implements hidden_act='gelu' (erf), got {act!r}")
    a = calibrate_ranges(
        _bert_watches(model), calib_batches, lambda b: model(**b), "convert_bert", "convert_bert"
    )
    s_e, e_abs = _res_scale(a, "emb_sum")
    s_x = _act_scale(a["emb_ln"], cfg.act_qmax)
    embeddings = tuple(_embed_codes(t, s_e, cfg.weight_qmax) for t in
                       (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings))  # fmt: skip
    ln_emb = fold_norm(emb.LayerNorm, "layer", s_e, e_abs, s_x)
    out_layers = []
    for i, lay in enumerate(model.encoder.layer):
        out_layers.append(_fold_layer(lay, i, a, s_x, cfg))
        s_x = _act_scale(a[f"{i}.ln2"], cfg.act_qmax)
    logger.info("converted BERT: %d layers integer-only", len(out_layers))
    return IntegerBert(embeddings, ln_emb, tuple(out_layers), torch.as_tensor(s_x).to(torch.float32))
