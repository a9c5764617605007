"""The integer-only graph's run-time pieces: integer linear layers, attention, dtype tracing, the IntegerGPT.

Everything between the input (token ids) and the output dequantization (logits) is integer: int8 between
operations, int32 accumulators and residual stream, int64 inside kernels where products need the width.
Pass a :class:`DtypeTrace` to ``forward`` to record the dtype of every intermediate tensor (attention then
runs its unfused path — int_matmul scores, row weights, int_matmul P·V, row requantization — which gives the
same integers as the fused native kernel used otherwise; a test checks they agree bit for bit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from lowbit.formats import U8S8_WEIGHT_RANGE
from lowbit.integer import kernels
from lowbit.integer.fast import (
    PackedLinear,
    attention_fused,
    attention_rows,
    native_kernels_enabled,
    norm_rows,
    requant_channels,
    requant_rows,
    to_offset,
)
from lowbit.models.gpt import check_token_ids
from lowbit.ops import int_matmul

logger = logging.getLogger(__name__)


@dataclass
class DtypeTrace:
    """Records (name, dtype, shape) of every intermediate tensor an integer graph produces."""

    records: list[tuple[str, torch.dtype, tuple[int, ...]]] = field(default_factory=list)

    def record(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Log one tensor and return it unchanged."""
        self.records.append((name, t.dtype, tuple(t.shape)))
        return t

    def non_integer(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """The records whose dtype is not an integer type (empty for an integer-only run)."""
        return [r for r in self.records if r[1].is_floating_point or r[1].is_complex or r[1] == torch.bool]


def _rec(trace: DtypeTrace | None, name: str, t: torch.Tensor) -> torch.Tensor:
    return trace.record(name, t) if trace is not None else t


def _packed(owner: object, off: int, parts) -> PackedLinear | None:
    """PackedLinear of ``parts()`` = (weight, bias, mult, shift, relu), built once per (owner, off), kept on
    the owner (it lives and dies with the converted model).

    ``off`` 0 or 128: the 7-bit-weight path (uint8 inputs), None when the weights are wider; ``off`` -1: any
    int8 weights, int8 inputs (the 7-bit path's uint8 ``code + 128`` is not used then: the int16 path)."""
    cache = owner.__dict__.get("_fused_cache")
    if cache is None:
        cache = {}
        object.__setattr__(owner, "_fused_cache", cache)  # the dataclasses are frozen; this is a cache
    if off in cache:
        return cache[off]
    w, bias, mult, shift, relu = parts()
    seven = int(w.to(torch.int16).abs().max()) <= U8S8_WEIGHT_RANGE.magnitude
    pl = None
    use_native = native_kernels_enabled("auto")
    if use_native and off >= 0 and w.shape[1] % 4 == 0 and seven:
        pl = PackedLinear(w, bias, mult, shift, relu, off)
    elif use_native and off < 0 and w.shape[1] % 2 == 0 and not seven:
        pl = PackedLinear(w, bias, mult, shift, relu, 0)  # wide: int16 path on int8 codes
    cache[off] = pl
    return pl


@dataclass(frozen=True, eq=False)
class IntLinear:
    """int8 x (M, K) · int8 weight (N, K)ᵀ → int32 (+ int32 bias) → dyadic per-channel rescale.

    Output int8 at the next operation's scale, or (``residual``) added into an int32 residual stream.
    """

    weight: torch.Tensor  # int8 (N, K)
    bias: torch.Tensor | None  # int32 (N,) at scale s_x · s_w
    mult: torch.Tensor  # int32 (N,)
    shift: torch.Tensor  # int32 (N,)
    relu: bool = False

    def packed(self, off: int) -> PackedLinear | None:
        """This layer packed for the fused GEMM + requantize kernel (inputs uint8 ``code + off``), or None
        when it cannot run there (no native kernels, weight codes beyond 7 bits, K not a multiple of 4)."""
        return _packed(self, off, lambda: (self.weight, self.bias, self.mult, self.shift, self.relu))

    def packed_wide(self) -> PackedLinear | None:
        """This layer on the fused kernel's int16 path (int8 inputs, weights wider than 7 bits), or None."""
        return _packed(self, -1, lambda: (self.weight, self.bias, self.mult, self.shift, self.relu))

    def accumulate(self, x: torch.Tensor, trace: DtypeTrace | None, name: str) -> torch.Tensor:
        """The raw int32 accumulator (M, N)."""
        return _rec(trace, f"{name}.acc", int_matmul(x, self.weight, bits=8, layout="nt"))

    def __call__(
        self, x: torch.Tensor, trace: DtypeTrace | None, name: str, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        acc = self.accumulate(x, trace, name)
        y = requant_channels(acc, self.bias, self.mult, self.shift, relu=self.relu, residual=residual)
        return _rec(trace, name, y)

    def nbytes(self) -> int:
        """Stored bytes (codes, bias, multipliers, shifts)."""
        extra = self.bias.nbytes if self.bias is not None else 0
        return self.weight.nbytes + extra + self.mult.nbytes + self.shift.nbytes


@dataclass(frozen=True, eq=False)
class IntAttention:
    """Integer multi-head attention on int8 q, k, v: scores int32, poly or softmax weights, P·V rescale.

    ``kind="poly"``: ``ReLU(s + b)^2 + |δ|`` (``bias`` (H, 1, 1) int64, ``delta`` int in score² units);
    ``kind="softmax"``: i-exp with ``exp`` constants. Rows are normalised by :func:`kernels.normalize_rows`,
    and P·V is rescaled per row by ``row_const`` with ``row_shift``.
    """

    n_head: int
    kind: str
    row_const: int
    row_shift: int
    bias: torch.Tensor | None = None
    delta: int = 0
    exp: kernels.ExpConstants | None = None

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        key_mask: torch.Tensor | None,
        trace: DtypeTrace | None,
        name: str,
    ) -> torch.Tensor:
        """q, k, v int8 (B, T, C) → int8 (B, T, C); key_mask bool (B, T) (True = real token) or None."""
        b, t, c = q.shape
        if trace is None and native_kernels_enabled("auto"):
            return attention_fused(
                q, k, v, self.n_head, causal=causal, key_mask=key_mask, row_const=self.row_const,
                row_shift=self.row_shift, poly_bias=self.bias if self.kind == "poly" else None,
                delta=self.delta, exp=self.exp if self.kind == "softmax" else None,
            )  # fmt: skip
        hd = c // self.n_head
        scores = torch.empty(b, self.n_head, t, t, dtype=torch.int32)  # (B, H, T, T)
        for i in range(b):
            for h in range(self.n_head):
                cols = slice(h * hd, (h + 1) * hd)
                int_matmul(q[i, :, cols], k[i, :, cols], bits=8, layout="nt", out=scores[i, h])
        _rec(trace, f"{name}.scores", scores)
        codes, row_mult = attention_rows(
            scores, causal=causal, key_mask=key_mask, row_const=self.row_const,
            poly_bias=self.bias if self.kind == "poly" else None, delta=self.delta,
            exp=self.exp if self.kind == "softmax" else None,
        )  # fmt: skip
        _rec(trace, f"{name}.probs", codes)
        _rec(trace, f"{name}.row_mult", row_mult)
        y = torch.empty(b, t, c, dtype=torch.int8)
        acc = torch.empty(t, hd, dtype=torch.int32)
        for i in range(b):
            for h in range(self.n_head):
                cols = slice(h * hd, (h + 1) * hd)
                int_matmul(codes[i, h], v[i, :, cols], bits=8, layout="nn", out=acc)
                requant_rows(acc, row_mult[i, h], self.row_shift, y[i, :, cols])
        _rec(trace, f"{name}.pv_acc", acc)
        return _rec(trace, name, y)


@dataclass(frozen=True, eq=False)
class IntNorm:
    """An integer L1 ("l1") or standard ("layer") LayerNorm from int32 input to int8."""

    kind: str
    consts: kernels.NormConstants

    def __call__(self, x: torch.Tensor, trace: DtypeTrace | None, name: str) -> torch.Tensor:
        return _rec(trace, name, norm_rows(x, self.kind, self.consts))

    def nbytes(self) -> int:
        return self.consts.gamma.nbytes + self.consts.beta.nbytes


@dataclass(frozen=True, eq=False)
class IntGPTBlock:
    """Pre-norm block on the int32 residual: r += out(attn(norm1(r))); r += fc_out(relu(fc_in(norm2(r))))."""

    norm1: IntNorm
    q: IntLinear
    k: IntLinear
    v: IntLinear
    attn: IntAttention
    out: IntLinear
    norm2: IntNorm
    fc_in: IntLinear
    fc_out: IntLinear

    def __call__(self, r: torch.Tensor, trace: DtypeTrace | None, name: str) -> None:
        """Update the residual r (B, T, C) int32 in place."""
        b, t, c = r.shape
        r2 = r.view(b * t, c)
        fused = self.fused_linears()
        if fused is not None:  # fused GEMM + requantize kernels; every activation stays 8-bit
            qkv, out, fc_in, fc_out, off = fused
            x = _rec(trace, f"{name}.norm1", norm_rows(r2, "l1", self.norm1.consts, out_off=off))
            q, k, v = _rec(trace, f"{name}.qkv", qkv(x)).view(b, t, 3 * c).split(c, dim=2)
            if trace is None:
                a = self.attn
                y = attention_fused(
                    q, k, v, a.n_head, causal=True, key_mask=None, row_const=a.row_const,
                    row_shift=a.row_shift, poly_bias=a.bias if a.kind == "poly" else None, delta=a.delta,
                    exp=a.exp if a.kind == "softmax" else None, out_off=off,
                )  # fmt: skip
            else:  # the unfused path, recording scores and weights (the same integers, tested)
                y = self.attn(q, k, v, True, None, trace, f"{name}.attn")
                y = to_offset(y, off) if off else y
            out(y.view(b * t, c), residual=r2)
            _rec(trace, f"{name}.residual_attn", r2)
            x = _rec(trace, f"{name}.norm2", norm_rows(r2, "l1", self.norm2.consts, out_off=off))
            h = _rec(trace, f"{name}.fc_in", fc_in(x))  # ReLU: codes in [0, 127]
            fc_out(h.view(torch.uint8) if off else h, residual=r2)
            _rec(trace, f"{name}.residual", r)
            return
        x = self.norm1(r2, trace, f"{name}.norm1")
        q, k, v = (
            lin(x, trace, f"{name}.{nm}").view(b, t, c)
            for nm, lin in (("q", self.q), ("k", self.k), ("v", self.v))
        )
        y = self.attn(q, k, v, True, None, trace, f"{name}.attn")
        self.out(y.view(b * t, c), trace, f"{name}.out_proj", residual=r2)
        x = self.norm2(r2, trace, f"{name}.norm2")
        h = self.fc_in(x, trace, f"{name}.fc_in")
        self.fc_out(h, trace, f"{name}.fc_out", residual=r2)
        _rec(trace, f"{name}.residual", r)

    def fused_linears(self) -> tuple | None:
        """(qkv, out, fc_in, fc_out, input offset) on the fused GEMM kernel: the 7-bit-weight path (uint8
        ``code + 128`` activations; ReLU outputs as they are) when every weight fits 7 bits, else the int16
        path (int8 activations) when none does; None otherwise (the unfused path runs)."""
        lins = (self.q, self.k, self.v, self.out, self.fc_in, self.fc_out)
        if not self.fc_in.relu:
            return None
        if all(lin.packed(128) is not None for lin in lins) and self.fc_out.packed(0) is not None:
            return _packed(self, 128, self._qkv_parts), self.out.packed(128), self.fc_in.packed(128), (
                self.fc_out.packed(0)
            ), 128  # fmt: skip
        if all(lin.packed_wide() is not None for lin in lins):
            wide = (lin.packed_wide() for lin in (self.out, self.fc_in, self.fc_out))
            return _packed(self, -1, self._qkv_parts), *wide, 0
        return None

    def _qkv_parts(self) -> tuple:
        """q, k, v as one (3C, C) linear: weights, biases and per-channel constants concatenated."""
        lins = (self.q, self.k, self.v)
        bias = [lin.bias if lin.bias is not None else torch.zeros_like(lin.mult) for lin in lins]
        cat = torch.cat
        return (cat([lin.weight for lin in lins]), cat(bias), cat([lin.mult for lin in lins]),
                cat([lin.shift for lin in lins]), False)  # fmt: skip

    def nbytes(self) -> int:
        parts = (self.norm1, self.q, self.k, self.v, self.out, self.norm2, self.fc_in, self.fc_out)
        return sum(p.nbytes() for p in parts)


@dataclass(frozen=True, eq=False)
class IntegerGPT:
    """The Integer Transformer GPT as an integer-only graph; ``forward(idx)`` → dequantized float32 logits."""

    wte: torch.Tensor  # int8 (V, C)
    wte_mult: torch.Tensor  # int32 (C,): dyadic wte scale -> residual scale
    wte_shift: torch.Tensor
    wpe: torch.Tensor  # int8 (block_size, C)
    wpe_mult: torch.Tensor
    wpe_shift: torch.Tensor
    blocks: tuple[IntGPTBlock, ...]
    ln_f: IntNorm
    lm_head: torch.Tensor  # int8 (V, C)
    logit_scale: torch.Tensor  # float32 (V,): s_lnf · s_w — the output dequantization
    block_size: int

    def forward(self, idx: torch.Tensor, trace: DtypeTrace | None = None) -> torch.Tensor:
        """idx (B, T) int64 → logits (B, T, V) float32.

        ``idx``: token ids of shape (batch, seq), any strides, each in [0, V) (checked: ``ValueError``).
        """
        idx = check_token_ids(idx, self.wte.shape[0], self.block_size)
        b, t = idx.shape
        c = self.wte.shape[1]
        tok = _rec(trace, "wte", self.wte[idx].view(b * t, c).to(torch.int32))
        zero = torch.zeros(c, dtype=torch.int32)
        r = requant_channels(
            tok, None, self.wte_mult, self.wte_shift, residual=torch.zeros(b * t, c, dtype=torch.int32)
        )
        pos = self.wpe[:t].to(torch.int32).repeat(b, 1)
        requant_channels(pos, zero, self.wpe_mult, self.wpe_shift, residual=r)
        r = _rec(trace, "embed", r).view(b, t, c)
        for i, block in enumerate(self.blocks):
            block(r, trace, f"blocks.{i}")
        x = self.ln_f(r.view(b * t, c), trace, "ln_f")
        acc = _rec(trace, "lm_head.acc", int_matmul(x, self.lm_head, bits=8, layout="nt"))
        return (acc.to(torch.float32) * self.logit_scale).view(b, t, -1)  # output dequantization

    __call__ = forward

    def weight_bytes(self) -> int:
        """Bytes of every stored weight-side tensor (int8 codes, int32 biases/multipliers, norm constants)."""
        emb = sum(
            t.nbytes
            for t in (
                self.wte,
                self.wte_mult,
                self.wte_shift,
                self.wpe,
                self.wpe_mult,
                self.wpe_shift,
                self.lm_head,
                self.logit_scale,
            )
        )
        return emb + sum(blk.nbytes() for blk in self.blocks) + self.ln_f.nbytes()


def integer_lm_loss(model: IntegerGPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Token-weighted mean cross-entropy of an IntegerGPT's dequantized logits over (x, y) batches."""
    total, count = 0.0, 0
    for x, y in batches:
        logits = model(x)  # (B, T, V) float32: the output dequantization
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    if count == 0:
        raise ValueError("integer_lm_loss got no batches")
    return total / count
