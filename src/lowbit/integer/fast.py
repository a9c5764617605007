"""Native integer kernels of the run-time graph (``ops/csrc/int_*.c``) + their PyTorch references.

Every native path returns the same integers as its reference (tested bit-exactly); the ``backend`` argument
is resolved by ``lowbit.ops.backends`` like every other product's (``"auto"``, ``"native"``, an ISA name,
``"onednn"``, ``"reference"``): the native kernels run on a native ISA or ``onednn``, and the GEMM tiles use
``vpdpbusd`` on ``avx512-vnni``. The kernels are independent of the ``gemm_*`` engine:

* :class:`PackedLinear` (``int_gemm.c``): a weight packed once; GEMM + bias + dyadic requantization (+ ReLU)
  fused in the 6x16 tile epilogue, writing int8 codes or adding into the int32 residual in place
  (accumulators never leave the kernel). 7-bit weights (``[-64, 64]``) take u8 x s8 ``vpmaddubsw`` with
  activations stored as uint8 ``code + 128`` (``128 · colsum`` folded into the bias; ReLU outputs need no
  offset); wider weights take an exact int16 ``vpmaddwd`` path on int8 codes.
* :func:`attention_fused` (``int_attn.c`` for head dims that are multiples of 16, else ``int_rows.c``):
  int16 score tiles, vectorised poly / i-exp row weights, u8 x s8 P·V tiles, per-row rescale; q, k, v may be
  slices of one (B, T, 3C) QKV output.
* :func:`norm_rows`, :func:`gelu_requant` (``int_rows.c``, ``int_gelu.c``): integer LayerNorms and i-GELU +
  requantization. Divisions by per-row constants are restoring divisions over the clamped quotient range in
  int64 lanes, or reciprocal multiplications — no divide instruction per element.
* :func:`requant_channels`, :func:`requant_rows` (``int_requant.c``): stand-alone requantization.
"""

from __future__ import annotations

import torch

from lowbit.formats import INT8_RANGE, INT8_SYMMETRIC, U8S8_WEIGHT_RANGE, UINT8
from lowbit.integer import kernels
from lowbit.integer._native import _lib, _threads, native_kernels_enabled
from lowbit.integer.fast_attention import attention_fused, attention_rows  # noqa: F401 (re-exported)
from lowbit.ops import backends


def _gemm_kind(wide: bool) -> int:
    """Kind of ``lowbit_int_gemm_rq``: 2 (int16, wide weights), else 4 on the avx512-vnni backend, else 0."""
    if wide:
        return 2
    return 4 if backends.resolve("auto") == "avx512-vnni" else 0


def _dyadic(x: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    m64, s64 = mult.to(torch.int64), shift.to(torch.int64)
    half = torch.where(s64 > 0, torch.ones_like(s64) << (s64 - 1).clamp_min(0), torch.zeros_like(s64))
    return (x.to(torch.int64) * m64 + half) >> s64


def _check_2d(acc: torch.Tensor, n_channels: int) -> None:
    if acc.dtype != torch.int32 or acc.dim() != 2 or acc.stride(1) != 1:
        raise ValueError(f"acc must be 2-D int32 with unit column stride, got {acc.dtype} {tuple(acc.shape)}")
    if acc.shape[1] != n_channels:
        raise ValueError(f"acc has {acc.shape[1]} columns but the multipliers have {n_channels}")


def requant_channels(
    acc: torch.Tensor,
    bias: torch.Tensor | None,
    mult: torch.Tensor,
    shift: torch.Tensor,
    *,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``y[i, j] = round_half_up(sat32(acc[i, j] + bias[j]) · mult[j] / 2^shift[j])`` (ReLU first if asked).

    Without ``residual``: returns int8 (M, N) saturated to [-127, 127]. With ``residual`` (int32 (M, N),
    contiguous): adds y into it in place (saturating to int32) and returns it. ``bias``/``mult``/``shift``
    are int32 (N,).
    """
    _check_2d(acc, mult.numel())
    for name, t in (("bias", bias), ("mult", mult), ("shift", shift)):
        if t is not None and (t.dtype != torch.int32 or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous int32 vector, got {t.dtype}")
    m, n = acc.shape
    if residual is not None and (
        residual.dtype != torch.int32 or residual.shape != acc.shape or not residual.is_contiguous()
    ):
        raise ValueError("residual must be a contiguous int32 tensor shaped like acc")
    if native_kernels_enabled(backend):
        out = residual if residual is not None else torch.empty(m, n, dtype=torch.int8)
        _lib().lowbit_int_requant(
            acc.data_ptr(),
            m,
            n,
            acc.stride(0),
            bias.data_ptr() if bias is not None else None,
            mult.data_ptr(),
            shift.data_ptr(),
            int(relu),
            0 if residual is None else 1,
            out.data_ptr(),
            n,
            _threads(m * n),
        )
        return out
    x = acc.to(torch.int64)
    if bias is not None:
        x = (x + bias).clamp(-(2**31), 2**31 - 1)  # the accumulator plus bias saturates to int32
    if relu:
        x = x.clamp_min(0)
    y = _dyadic(x, mult, shift)
    if residual is None:
        return y.clamp(*INT8_SYMMETRIC).to(torch.int8)
    residual.copy_((y + residual).clamp(-(2**31), 2**31 - 1).to(torch.int32))
    return residual


def requant_rows(
    acc: torch.Tensor, row_mult: torch.Tensor, shift: int, out: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """``out[i, j] = clamp(round_half_up(acc[i, j] · row_mult[i] / 2^shift), ±127)`` into int8 ``out``.

    ``acc`` int32 (M, N) with unit column stride; ``row_mult`` int64 (M,); ``out`` int8 (M, N), unit column
    stride (may be a strided view, e.g. one head's columns of a (T, C) activation).
    """
    m, n = acc.shape
    _check_2d(acc, n)
    if row_mult.dtype != torch.int64 or row_mult.numel() != m or not row_mult.is_contiguous():
        raise ValueError("row_mult must be a contiguous int64 vector with one entry per row")
    if out.dtype != torch.int8 or out.shape != acc.shape or out.stride(1) != 1:
        raise ValueError("out must be int8, shaped like acc, with unit column stride")
    if native_kernels_enabled(backend):
        _lib().lowbit_int_requant_rows(
            acc.data_ptr(),
            m,
            n,
            acc.stride(0),
            row_mult.data_ptr(),
            shift,
            out.data_ptr(),
            out.stride(0),
            _threads(m * n),
        )
        return out
    sh = torch.tensor(shift, dtype=torch.int64)
    out.copy_(_dyadic(acc, row_mult.reshape(m, 1), sh).clamp(*INT8_SYMMETRIC).to(torch.int8))
    return out


def norm_rows(
    x: torch.Tensor, kind: str, k: kernels.NormConstants, *, out_off: int = 0, backend: str = "auto"
) -> torch.Tensor:
    """Integer L1 (``kind="l1"``) or standard (``"layer"``) LayerNorm of int32 rows (M, C) → int8 (M, C).

    ``out_off=128``: the codes are returned as uint8 ``code + 128`` (the input form of :class:`PackedLinear`).
    """
    if x.dtype != torch.int32 or x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous 2-D int32 tensor, got {x.dtype} {tuple(x.shape)}")
    if kind not in ("l1", "layer"):
        raise ValueError(f"kind must be 'l1' or 'layer', got {kind!r}")
    if out_off not in (0, 128):
        raise ValueError(f"out_off must be 0 or 128, got {out_off}")
    if not native_kernels_enabled(backend):
        y = (kernels.l1_layernorm if kind == "l1" else kernels.layernorm)(x, k)
        return to_offset(y, 128) if out_off else y
    m, c = x.shape
    gamma, beta = _norm_int32(k)
    out = torch.empty(m, c, dtype=torch.uint8 if out_off else torch.int8)
    _lib().lowbit_int_norm(
        x.data_ptr(),
        m,
        c,
        0 if kind == "l1" else 1,
        k.pre_shift,
        k.eps,
        gamma.data_ptr(),
        k.gamma_shift,
        beta.data_ptr(),
        out.data_ptr(),
        out_off,
        _threads(m * c),
    )
    return out


_NORM_CACHE: dict[int, tuple[kernels.NormConstants, torch.Tensor, torch.Tensor]] = {}


def _norm_int32(k: kernels.NormConstants) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma, beta as contiguous int32 (cached per constants object: no conversion per call)."""
    hit = _NORM_CACHE.get(id(k))
    if hit is None or hit[0] is not k:
        hit = (k, k.gamma.to(torch.int32).contiguous(), k.beta.to(torch.int32).contiguous())
        _NORM_CACHE[id(k)] = hit
    return hit[1], hit[2]


# ---------------------------------------------------------------- packed linear with fused requantization


class PackedLinear:
    """An int8 weight (N, K) packed once for ``lowbit_int_gemm_rq``, with its folded requantization constants.

    7-bit weight codes (in [-64, 64], K % 4 == 0) take the u8 x s8 ``vpmaddubsw`` path: inputs are uint8
    ``code + off`` (``off`` 128 for signed codes, 0 for non-negative ones such as ReLU outputs) and
    ``off · colsum`` is folded into the int64 bias. Other int8 weights (``wide``, K even) take the exact int16
    ``vpmaddwd`` path on int8 input codes (``off`` must be 0). ``fast`` (the 32-bit epilogue) is enabled only
    when |codes·w + bias| < 2^31 and |y| < 2^31 are proven from the code bounds: the same integers either way.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        mult: torch.Tensor,
        shift: torch.Tensor,
        relu: bool,
        off: int,
    ) -> None:
        n, k = weight.shape
        wmax = int(weight.to(torch.int16).abs().max()) if weight.numel() else 0
        self.wide = wmax > U8S8_WEIGHT_RANGE.magnitude  # the u8 x s8 path's weight bound
        if (k % 4 and not self.wide) or k % 2 or (self.wide and off):
            raise ValueError(
                "PackedLinear needs weight codes in [-64, 64] with K % 4 == 0, or any int8 codes with K even "
                "and off 0"
            )
        self.n, self.k, self.relu, self.off = n, k, relu, off
        npan = -(-n // 16)
        w = weight.contiguous()
        if self.wide:
            self.packed = torch.empty(npan * 16 * k, dtype=torch.int16)
            _lib().lowbit_int_pack_w16(w.data_ptr(), n, k, self.packed.data_ptr())
            colsum = torch.zeros(n, dtype=torch.int32)
        else:
            self.packed = torch.empty(npan * 16 * k, dtype=torch.int8)
            colsum = torch.empty(n, dtype=torch.int32)
            _lib().lowbit_int_pack_w(w.data_ptr(), n, k, self.packed.data_ptr(), colsum.data_ptr())
        b = bias.to(torch.int64) if bias is not None else torch.zeros(n, dtype=torch.int64)
        self.bias = (b - off * colsum.to(torch.int64)).contiguous()
        self.mult = mult.to(torch.int64).contiguous()
        self.shift = shift.to(torch.int64).contiguous()
        one = torch.ones_like(self.shift)
        half = torch.where(self.shift > 0, one << (self.shift - 1).clamp_min(0), torch.zeros_like(one))
        self.add = (half + (1 << 62)).contiguous()
        self.sub = ((1 << 62) >> self.shift).contiguous()
        # fast epilogue: acc + bias and |y| provably inside int32 for every input (codes in [-128, 127] for
        # off 128 and the int16 path, [0, 255] for off 0)
        amax = UINT8.qmax if (off == 0 and not self.wide) else INT8_RANGE.magnitude
        x_bound = amax * int(weight.to(torch.int64).abs().sum(1).max()) + int(b.abs().max())
        y_bound = (x_bound * self.mult + self.add - (1 << 62)) >> self.shift
        self.fast = x_bound < 2**31 - 1 and int(y_bound.max()) < 2**30  # (|y| <= y_bound + 2: margin)
        self.b32 = self.bias.clamp(-(2**31), 2**31 - 1).to(torch.int32).contiguous()  # used only when fast
        self.m32 = self.mult.to(torch.int32).contiguous()

    def __call__(
        self,
        x: torch.Tensor,
        *,
        residual: torch.Tensor | None = None,
        out_off: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (M, K) with unit column stride — uint8 ``code + off`` (7-bit path) or int8 codes (``wide``) →
        int8 (M, N) codes (uint8 ``code + out_off`` when out_off is 128), or added into ``residual`` int32
        (M, N) in place."""
        m, k = x.shape
        want = torch.int8 if self.wide else torch.uint8
        if x.dtype != want or k != self.k or x.stride(1) != 1:
            raise ValueError(
                f"x must be {want} (M, {self.k}) with unit column stride, got {x.dtype} {tuple(x.shape)}"
            )
        if residual is not None:
            if residual.dtype != torch.int32 or residual.shape != (m, self.n) or not residual.is_contiguous():
                raise ValueError("residual must be a contiguous int32 (M, N) tensor")
            dst, mode, fast = residual, 1, 0
        else:
            dtype = torch.uint8 if out_off else torch.int8
            dst = out if out is not None else torch.empty(m, self.n, dtype=dtype)
            mode, fast = 0, int(self.fast)
        _lib().lowbit_int_gemm_rq(
            _gemm_kind(self.wide), x.data_ptr(), m, k, x.stride(0), self.packed.data_ptr(), self.n,
            self.bias.data_ptr(), self.mult.data_ptr(), self.add.data_ptr(), self.shift.data_ptr(),
            self.sub.data_ptr(), self.b32.data_ptr(), self.m32.data_ptr(), int(self.relu), mode, out_off,
            fast, dst.data_ptr(), dst.stride(0), _threads(m * self.n * 16),
        )  # fmt: skip
        return dst


def to_offset(codes: torch.Tensor, off: int) -> torch.Tensor:
    """int8 codes → uint8 storage of ``code + off`` (off 128: any code; 0: non-negative codes)."""
    if off == 0:
        return codes.view(torch.uint8)
    return (codes.to(torch.int16) + off).to(torch.uint8)


def gelu_requant(
    g: torch.Tensor,
    k: kernels.GeluConstants,
    pre_shift: int,
    mult: torch.Tensor,
    shift: torch.Tensor,
    *,
    out_off: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """i-GELU of int32 ``g`` (M, N) at the GELU input scale → ``round(·/2^pre_shift)`` saturated to int32 →
    per-channel dyadic (``mult``, ``shift`` int32 (N,)) → int8 codes (uint8 ``code + out_off`` if out_off)."""
    if g.dtype != torch.int32 or g.dim() != 2 or g.stride(1) != 1:
        raise ValueError(f"g must be 2-D int32 with unit column stride, got {g.dtype} {tuple(g.shape)}")
    if not native_kernels_enabled(backend):
        g64 = kernels.i_gelu(g, k)
        if pre_shift:
            g64 = (g64 + (1 << (pre_shift - 1))) >> pre_shift
        g32 = g64.clamp(-(2**31), 2**31 - 1).to(torch.int32)
        h = requant_channels(g32, None, mult, shift, backend=backend)
        return to_offset(h, out_off) if out_off else h
    m, n = g.shape
    out = torch.empty(m, n, dtype=torch.uint8 if out_off else torch.int8)
    _lib().lowbit_int_gelu_rq(
        g.data_ptr(), m, n, g.stride(0), k.b, k.c, k.one, pre_shift, mult.data_ptr(), shift.data_ptr(),
        out.data_ptr(), n, out_off, INT8_SYMMETRIC.hi, _threads(m * n),
    )  # fmt: skip
    return out
