"""The autograd Functions of the quantized linear layer, one per recipe kind; all products on ``lowbit.ops``.

Each Function takes 2-D float32 ``x`` (N, D), ``weight`` (C, D), ``bias`` (C,) or None, and the recipe as an
argument; ``forward`` returns ``Y = X Wᵀ + b`` (N, C) computed by ``int_matmul_scaled`` (layout "nt"), and
``backward`` computes grad_input with layout "nn" (``∇Y · W``) and grad_weight with layout "tn"
(``∇Yᵀ · X``) — the INT4 Hadamard recipe instead passes contiguous transposed code copies with layout "nt"
(the same integer products; the engine packs contiguous rows much faster than strided columns). No float
matmul runs on the quantized path; the float work is quantization, the Hadamard butterflies and the O(N·C)
bit splitting.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from lowbit.formats import INT4_SYMMETRIC
from lowbit.ops import int_matmul_scaled, quantize_rows
from lowbit.quantizers import absmax, symmetric_codes, symmetric_scale
from lowbit.training._kernels import hq_grad_x_, hq_quantize, native_reason, transpose_i8
from lowbit.training.bit_split import SPLIT_RADIX, bit_split, bit_split_merged
from lowbit.training.distributed import all_max, gather_rows, row_layout
from lowbit.training.hadamard_quant import block_transform
from lowbit.training.leverage import select_rows
from lowbit.training.lsq import clip_mask, lsq_grad_scale, lsq_quantize, lsq_step_grad
from lowbit.training.recipes import Recipe


def _row_norms(codes: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(codes.float(), dim=1)


def _empty_safe_scaled(a, b, sa, sb, *, bits: int, layout: str, shape: tuple[int, int]) -> torch.Tensor:
    """``int_matmul_scaled`` that returns zeros of ``shape`` when the reduction or row set is empty."""
    if a.shape[0] == 0:
        return torch.zeros(shape, dtype=torch.float32)
    return int_matmul_scaled(a, b, sa, sb, bits=bits, layout=layout)


def _hq_quantize(t: torch.Tensor, block: int, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block Hadamard + LSQ INT4 codes and what :func:`_hq_grad` needs: the torch path returns ∂t̂/∂s; the
    fused native kernel returns the float32 input itself, from which the backward kernel recomputes ∂t̂/∂s
    (same values; no fresh 4-byte-per-element buffer, and a float layer saves its input anyway)."""
    if native_reason():
        return lsq_quantize(block_transform(t, block), step)
    t32 = t.detach().float().contiguous()
    codes, _ = hq_quantize(t32, block, float(step), with_dq=False)
    return codes, t32


def _codes_t(codes: torch.Tensor) -> torch.Tensor:
    """Contiguous transpose of int8 codes (the native blocked transpose, or torch's copy: the same bytes)."""
    return codes.t().contiguous() if native_reason() else transpose_i8(codes)


def _hq_grad(
    grad_q: torch.Tensor, saved: torch.Tensor, step: torch.Tensor, block: int, numel: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H(grad ⊙ clip mask), LSQ step gradient) from ∂L/∂(TH)^ and ``saved`` of :func:`_hq_quantize`;
    native in one pass, else torch. ``numel``: the element count of LSQ's gradient scale (default: the
    tensor's own; data parallelism passes the whole batch's)."""
    numel = saved.numel() if numel is None else numel
    if native_reason():  # saved = ∂t̂/∂s
        if numel == saved.numel():
            g_step = lsq_step_grad(grad_q, saved)
        else:
            g_step = (grad_q.float() * saved).sum() * lsq_grad_scale(numel)
        return block_transform(grad_q * clip_mask(saved), block), g_step
    grad = grad_q.contiguous()
    total = hq_grad_x_(grad, saved, float(step), block)  # saved = t
    return grad, torch.full((), total * lsq_grad_scale(numel), dtype=torch.float32)


class Int4HQLinearFn(torch.autograd.Function):
    """Xi et al.: Hadamard + LSQ forward, bit-split ∇Y with leverage-score row selection backward."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, x_step, w_step, block: int, recipe: Recipe, generator):
        sx, sw = x_step.detach().float().reshape(()), w_step.detach().float().reshape(())
        x_int4, x_saved = _hq_quantize(x, block, sx)  # codes of XH (N, D); ∂x̂/∂s_x or x
        w_int4, w_saved = _hq_quantize(weight, block, sw)  # codes of WH (C, D); ∂ŵ/∂s_w or W
        y = int_matmul_scaled(
            x_int4,
            w_int4,
            sx,
            sw,
            None if bias is None else bias.detach().float(),
            bits=4,
            layout="nt",
        )  # (N, C) = s_x s_w · int(XH) int(WH)ᵀ + b
        ctx.save_for_backward(x_int4, w_int4, x_saved, w_saved, sx, sw)
        ctx.block, ctx.recipe, ctx.generator, ctx.has_bias = block, recipe, generator, bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad_out):
        x_int4, w_int4, x_saved, w_saved, sx, sw = ctx.saved_tensors
        recipe: Recipe = ctx.recipe
        need_x = ctx.needs_input_grad[0] or ctx.needs_input_grad[3]
        need_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[4]
        grad_x = grad_w = grad_b = gx_step = gw_step = None
        # data parallelism (recipe.group): this process holds rows [offset, offset + N) of the whole batch's
        # ∇Y; the bit-split scale is the global max|∇Y| and LSQ's gradient scale counts the global rows
        amax = None
        offset, n_total = 0, grad_out.shape[0]
        if recipe.group is not None:
            local = float(grad_out.detach().abs().max()) if grad_out.numel() else 0.0
            offset, n_total, amax = row_layout(grad_out.shape[0], recipe.group, local)
        if recipe.lss == "sample":
            grad_xh, grad_wh = _sampled_backward(
                grad_out, x_int4, w_int4, sx, sw, recipe, ctx.generator, need_x, need_w, amax, offset, n_total
            )
        else:
            # "nonzero" keeps every non-zero row of hi and of lo, and zero rows add nothing: the two INT4
            # products ∇Y↕ Ŵ = 14u·hi·Ŵ + u·lo·Ŵ are one exact integer product of the code 14·hi + lo
            # (|·| <= 105, an 8-bit operand), computed in one pass instead of two. Both products take layout
            # "nt" on contiguous transposed copies (reduction dim last), which the engine packs fastest
            grad_xh = grad_wh = None
            merged, unit = bit_split_merged(
                grad_out,
                clamp=recipe.split_clamp,
                rounding=recipe.grad_rounding,
                generator=ctx.generator,
                amax=amax,
                row_offset=offset,
            )  # (N, C)
            unit_t = torch.full((), unit, dtype=torch.float32)
            if need_x:  # ∇(XH)^ (N, D) = merged (N, C) · (WH)^ (C, D) = merged · ((WH)^ᵀ (D, C))ᵀ
                grad_xh = int_matmul_scaled(merged, _codes_t(w_int4), unit_t, sw, bits=8, layout="nt")
            if need_w:  # ∇(WH)^ (C, D) = mergedᵀ (C, N) · (XH)^ (N, D)
                grad_wh = int_matmul_scaled(
                    _codes_t(merged), _codes_t(x_int4), unit_t, sx, bits=8, layout="nt"
                )
        if need_x:  # grad_input = H (∇(XH)^ ⊙ clip mask) (STE, H⁻¹ = H); ∂L/∂s_x = Σ ∇(XH)^ ⊙ ∂x̂/∂s_x · scale
            grad_x, gx_step = _hq_grad(grad_xh, x_saved, sx, ctx.block, n_total * x_int4.shape[1])
            gx_step = gx_step.reshape(sx.shape)
        if need_w:  # grad_weight: likewise
            grad_w, gw_step = _hq_grad(grad_wh, w_saved, sw, ctx.block)
            gw_step = gw_step.reshape(sw.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, gx_step, gw_step, None, None, None


class _SampledRows(NamedTuple):
    """The bit-split ∇Y↕ rows [hi; lo] the sampled backward draws from, with their scales and scores."""

    g_stack: torch.Tensor  # (2N, C) int codes
    row_unit: torch.Tensor  # (2N,) scale of each row
    g_norm: torch.Tensor  # (2N,) ‖∇Y↕_r‖
    positions: torch.Tensor | None  # global stack index of each row (data parallelism), else None
    total: int  # rows of the whole batch's stack


def _sampled_grad_xh(rows: _SampledRows, w_int4, sw, generator, group: Any) -> torch.Tensor:
    """∇(XH) = Σ_kept (∇Y↕_r / p_r) Ŵ, rows kept by ‖∇Y↕_r‖; the 1/p weights are output-row scales."""
    n, d = rows.g_stack.shape[0] // 2, w_int4.shape[1]
    idx, weight = select_rows(
        rows.g_norm, "sample", generator, group=group, positions=rows.positions, total=rows.total
    )
    part = _empty_safe_scaled(
        rows.g_stack[idx], w_int4, rows.row_unit[idx] * weight, sw, bits=4, layout="nn", shape=(0, d)
    )  # (R, D)
    return torch.zeros((n, d), dtype=torch.float32).index_add_(0, idx % n, part)


def _sampled_grad_wh(rows: _SampledRows, x_int4, sx, recipe: Recipe, generator) -> torch.Tensor:
    """∇(WH) = Σ_kept ∇Y↕_rᵀ X̂↕_r / p_r, rows kept by ‖∇Y↕_r‖·‖X̂↕_r‖; the 1/p weights sit on the reduction
    dim, so the weighted rows are bit-split again (stochastic, unbiased) into INT4 hi/lo."""
    group = recipe.group
    n, c, d = rows.g_stack.shape[0] // 2, rows.g_stack.shape[1], x_int4.shape[1]
    x_norm = _row_norms(x_int4)
    idx, weight = select_rows(
        rows.g_norm * torch.cat([x_norm, x_norm]),
        "sample",
        generator,
        group=group,
        positions=rows.positions,
        total=rows.total,
    )
    x_rows = x_int4[idx % n]  # (R, D)
    weighted = rows.g_stack[idx].float() * (rows.row_unit[idx] * weight)[:, None]  # (R, C)
    amax2, rows2 = _kept_rows_layout(idx, weighted, n, group) if group is not None else (None, None)
    hi2, lo2, unit2 = bit_split(
        weighted,
        clamp=recipe.split_clamp,
        rounding=recipe.grad_rounding,
        generator=generator,
        amax=amax2,
        rows=rows2,
    )
    grad_wh = torch.zeros((c, d), dtype=torch.float32)
    for g_rows, u in ((hi2, SPLIT_RADIX * unit2), (lo2, unit2)):
        if g_rows.shape[0]:
            grad_wh += int_matmul_scaled(g_rows, x_rows, u, sx, bits=4, layout="tn")  # (C, D)
    return grad_wh


def _kept_rows_layout(
    idx: torch.Tensor, weighted: torch.Tensor, n: int, group: Any
) -> tuple[float, torch.Tensor]:
    """Data parallelism: the global max|weighted| and the kept rows' place among all processes' kept rows
    (hi ones, then lo ones), for the second bit split."""
    k_hi = int((idx < n).sum())
    local = float(weighted.abs().max()) if weighted.numel() else 0.0
    counts = gather_rows([float(k_hi), float(idx.numel() - k_hi), local], group)
    rank = int(torch.distributed.get_rank(group))
    hi_start = int(counts[:rank, 0].sum())
    lo_start = int(counts[:, 0].sum() + counts[:rank, 1].sum())
    j = torch.arange(idx.numel(), dtype=torch.int64)
    return float(counts[:, 2].max()), torch.where(j < k_hi, hi_start + j, lo_start + j - k_hi)


def _sampled_backward(
    grad_out,
    x_int4,
    w_int4,
    sx,
    sw,
    recipe: Recipe,
    generator,
    need_x: bool,
    need_w: bool,
    amax: float | None = None,
    offset: int = 0,
    n_total: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """∂L/∂(XH)^ and ∂L/∂(WH)^ with the paper's Bernoulli leverage score sampling over rows [hi; lo].

    Data parallelism (``recipe.group``): this process holds rows ``[offset, offset + N)`` of ``n_total``;
    scales, normalisation, the uniforms and the noise counters are those of the whole batch."""
    n = grad_out.shape[0]
    group = recipe.group
    n_total = n if n_total is None else n_total
    local_rows = torch.arange(offset, offset + n, dtype=torch.int64)
    # global index of each stacked row [hi; lo] in the whole batch's stack (hi rows 0..N-1, lo rows N..2N-1)
    positions = torch.cat([local_rows, local_rows + n_total]) if group is not None else None
    hi, lo, unit = bit_split(
        grad_out,
        clamp=recipe.split_clamp,
        rounding=recipe.grad_rounding,
        generator=generator,
        amax=amax,
        rows=local_rows if group is not None else None,
    )
    g_stack = torch.cat([hi, lo])  # (2N, C): ∇Y↕, rows [hi; lo]
    row_unit = torch.cat([torch.full((n,), SPLIT_RADIX * unit), torch.full((n,), unit)])  # (2N,)
    g_norm = _row_norms(g_stack) * row_unit
    sampled = _SampledRows(g_stack, row_unit, g_norm, positions, 2 * n_total)
    grad_xh = _sampled_grad_xh(sampled, w_int4, sw, generator, group) if need_x else None
    grad_wh = _sampled_grad_wh(sampled, x_int4, sx, recipe, generator) if need_w else None
    return grad_xh, grad_wh


def _per_tensor_int4(
    t: torch.Tensor, group: Any = None, name: str = "input"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax per-tensor INT4 codes (nearest-even) and the float32 scalar scale; ``group``: the
    tensor is sharded over those processes (rows of a batch), the absmax is the global one. NaN/Inf (seen
    in the absmax, at no extra cost) raise ``ValueError`` naming ``name``."""
    t32 = t.detach().float()
    amax = absmax(t32)
    if group is not None:
        amax = all_max([float(amax)], group).float().reshape(())
    if not bool(torch.isfinite(amax)):
        bad = ~torch.isfinite(t32)
        raise ValueError(
            f"int4-naive {name} holds {int(bad.sum())} NaN/Inf values here (absmax {float(amax)}); "
            "the per-tensor scale needs finite values (a diverged training or bad data: lower the learning "
            "rate, clip gradients, or torch.nan_to_num the input)"
        )
    # the one symmetric quantizer, without the float32-normal floor (a tiny absmax keeps its subnormal scale)
    scale = symmetric_scale(amax, INT4_SYMMETRIC.hi, floor=None, zero_scale=1.0)
    return symmetric_codes(t32, scale, INT4_SYMMETRIC), scale


class Int4NaiveLinearFn(torch.autograd.Function):
    """Per-tensor round-to-nearest INT4 for X, W and ∇Y; no Hadamard, no bit splitting, no sampling."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, recipe: Recipe):
        x_int4, sx = _per_tensor_int4(x, recipe.group)
        w_int4, sw = _per_tensor_int4(weight, name="weight")
        y = int_matmul_scaled(
            x_int4, w_int4, sx, sw, None if bias is None else bias.detach().float(), bits=4, layout="nt"
        )
        ctx.save_for_backward(x_int4, w_int4, sx, sw)
        ctx.has_bias, ctx.group = bias is not None, recipe.group
        return y

    @staticmethod
    def backward(ctx: Any, grad_out):
        x_int4, w_int4, sx, sw = ctx.saved_tensors
        g_int4, sg = _per_tensor_int4(grad_out, ctx.group, "output gradient")
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # grad_input = ∇Ŷ Ŵ  (absmax scales: nothing clips, plain STE)
            grad_x = int_matmul_scaled(g_int4, w_int4, sg, sw, bits=4, layout="nn")
        if ctx.needs_input_grad[1]:  # grad_weight = ∇Ŷᵀ X̂
            grad_w = int_matmul_scaled(g_int4, x_int4, sg, sx, bits=4, layout="tn")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, None


def _rows_over_batch(t: torch.Tensor, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rows(t, 8)`` of a (M, K) tensor whose K columns are batch rows; with ``group`` (data
    parallelism: each process holds a shard of the columns) each row's scale is its absmax over all shards,
    computed by the same kernel (the global absmax rides along as one extra column)."""
    if group is None:
        return quantize_rows(t, 8)
    amax = t.abs().amax(1) if t.shape[1] else t.new_zeros(t.shape[0])
    amax = all_max(amax, group).float()
    codes, scale = quantize_rows(torch.cat([t, amax[:, None]], 1), 8)
    return codes[:, :-1].contiguous(), scale


class Int8LinearFn(torch.autograd.Function):
    """INT8 baseline: per-token X / per-channel W forward; per-token ∇Y × per-feature W; per-channel ∇Yᵀ ×
    per-feature X (scales never on a reduction dim, so every product dequantizes in the epilogue)."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, recipe: Recipe):
        x_int8, sx = quantize_rows(x.detach().float().contiguous(), 8)  # per token (N,)
        w_int8, sw = quantize_rows(weight.detach().float().contiguous(), 8)  # per output channel (C,)
        y = int_matmul_scaled(
            x_int8, w_int8, sx, sw, None if bias is None else bias.detach().float(), bits=8, layout="nt"
        )
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.group = bias is not None, recipe.group
        return y

    @staticmethod
    def backward(ctx: Any, grad_out):
        x, weight = ctx.saved_tensors
        g32 = grad_out.float().contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # grad_input (N, D) = ∇Y(per token) · W(per input feature)
            g_tok, sg_tok = quantize_rows(g32, 8)
            w_feat, sw_feat = quantize_rows(weight.detach().float().t().contiguous(), 8)  # (D, C), (D,)
            grad_x = int_matmul_scaled(g_tok, w_feat.t(), sg_tok, sw_feat, bits=8, layout="nn")
        if ctx.needs_input_grad[1]:  # grad_weight (C, D) = ∇Y(per channel)ᵀ · X(per input feature)
            # scales over the batch dim N: the whole batch's under data parallelism (ctx.group)
            g_ch, sg_ch = _rows_over_batch(g32.t().contiguous(), ctx.group)  # (C, N), (C,)
            x_feat, sx_feat = _rows_over_batch(x.detach().float().t().contiguous(), ctx.group)  # (D, N), (D,)
            grad_w = int_matmul_scaled(g_ch.t(), x_feat.t(), sg_ch, sx_feat, bits=8, layout="tn")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, None
