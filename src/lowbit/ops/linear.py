"""Prepacked weights and the fused quantized linear: float32 x -> per-row codes -> integer GEMM -> float32 y.

Pack a weight once with :func:`pack_weight` and call :func:`linear` many times: each call quantizes the
activation rows on the fly straight into the kernel's panel layout (for M >= 192 rows per thread inside the
GEMM's parallel region, one 48-row band at a time, so the codes never leave the core's caches), runs the
integer GEMM and dequantizes ``acc * x_scale[i] * w_scale[j] + bias[j]`` in the kernel's epilogue, optionally
into a reused ``out`` buffer. The result is bit-identical to ``quantize_rows`` followed by
``int_matmul_scaled``. With ``act_scale=s`` every row is quantized with that one static scale instead
(calibrated per-tensor activations, the codes of ``lowbit.ptq``'s static quantizer), in the same fused kernel.

Which native path runs (``PackedWeight.path(act_bits)`` tells):

* ``bits=4``: activations quantized to [-7, 7] (``act_bits`` <= 4), u4 x s4 kernel with int16 accumulation.
* ``bits=8`` and weight codes within [-64, 64] (a 7-bit weight): any activation bits, u8 x s7 kernel.
* ``bits=8``, ``act_bits=7`` (activations in [-63, 63]): u7 x s8 kernel, as fast as the above.
* ``bits=8``, 8-bit activations and 8-bit weights: the exact int16 kernel (slower, about 0.7x the above).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.formats import INT4_RANGE, U8S8_WEIGHT_RANGE, IntFormat
from lowbit.ops import api, backends, native_gemm, onednn, reference
from lowbit.quantizers import symmetric_codes


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A (N, K) weight of integer codes with a float32 scale per output channel, packed for repeated products.

    ``codes``/``scale`` keep the plain form (used by the reference backend); ``packed``/``colsum`` hold the
    u8/s8-kernel layout, ``packed_s16`` the int16-kernel layout (only for 8-bit codes outside [-64, 64]).
    The packed fields are None when the weight was packed with ``backend="reference"``.
    """

    bits: int
    codes: torch.Tensor  # (N, K) int8
    scale: torch.Tensor  # (N,) float32
    code_range: tuple[int, int]
    packed: torch.Tensor | None = None
    colsum: torch.Tensor | None = None
    packed_s16: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    def plan(self, act_bits: int, static: bool = False, isa: str = "avx2") -> tuple[int, int, int]:
        """(kernel kind, activation offset, activation qmax) of the native path on ``isa`` for
        ``act_bits``-bit activation codes: [-qmax, qmax] per row, [-qmax - 1, qmax] with a ``static``
        scale."""
        qmax = 2 ** (act_bits - 1) - 1
        a_range = (-qmax - 1 if static else -qmax, qmax)
        kind, off = native_gemm.plan(self.bits, a_range, self.code_range, isa)
        if kind == native_gemm.KIND_S8U4:  # needs A row sums from packing; a 4-bit weight is 7-bit too
            kind, off = native_gemm.KIND_U8S8, 128
        return kind, off, qmax

    def path(self, act_bits: int | None = None, static: bool = False, isa: str = "avx2") -> str:
        """Name of the native kernel path used on ``isa`` for activations of ``act_bits`` bits."""
        kind, off, _ = self.plan(act_bits or self.bits, static, isa)
        return {
            0: f"u8xs8 (activation offset {off})",
            1: "u4xs4 int16-accumulate",
            2: "s16xs16 exact",
            4: "u8xs8 vpdpbusd (AVX-512 VNNI)",
        }[kind]


def pack_weight(
    w_codes: torch.Tensor,
    w_scale: torch.Tensor | float,
    *,
    bits: int,
    transposed: bool = False,
    backend: str = "auto",
) -> PackedWeight:
    """Pack weight codes (N, K) — or (K, N) with ``transposed=True`` — and their scale for :func:`linear`.

    ``w_codes``: int8 codes (bits=8: any int8; bits=4: [-8, 7], or uint8 packed nibbles); ``w_scale``: float
    or float32 (N,). Packing costs about one pass over the weight; the packed copy is ~1x (u8 paths) or 3x
    (8-bit codes outside [-64, 64], which also keep an int16 copy) the size of the codes.
    """
    if not isinstance(w_codes, torch.Tensor) or w_codes.dim() != 2:
        got = f"{w_codes.dim()}-D tensor" if isinstance(w_codes, torch.Tensor) else type(w_codes).__name__
        raise TypeError(f"w_codes must be a 2-D tensor of codes (N, K), got a {got}; quantize the weight")
    layout = "nn" if transposed else "nt"
    dummy = torch.zeros(1, w_codes.shape[1] if not transposed else w_codes.shape[0], dtype=torch.int8)
    _, codes = api.check_matmul_args(dummy, w_codes, bits, layout)
    codes_nk = codes.t() if transposed else codes
    n = codes_nk.shape[0]
    scale = api._scale_vector("w_scale", w_scale, n, positive=True)
    chosen = api.resolve_backend(backend)
    use_native = backends.is_native(chosen)
    if use_native:
        lo, hi = native_gemm.minmax(codes_nk)
    else:
        lo, hi = (int(v) for v in torch.aminmax(codes_nk)) if codes_nk.numel() else (0, 0)
    if bits == 4 and not INT4_RANGE.contains(lo, hi):
        raise ValueError(f"w_codes holds codes in [{lo}, {hi}], outside [-8, 7] for bits=4")
    codes_nk = codes_nk.contiguous()
    weight = PackedWeight(bits=bits, codes=codes_nk, scale=scale, code_range=(lo, hi))
    if not use_native:
        return weight
    kind = native_gemm.KIND_INT4 if bits == 4 else native_gemm.KIND_U8S8  # kind 4 shares this layout
    packed, colsum = native_gemm.pack_b(kind, codes_nk)
    packed_s16 = None
    if bits == 8 and not U8S8_WEIGHT_RANGE.contains(lo, hi) and chosen == "avx2":
        packed_s16, _ = native_gemm.pack_b(native_gemm.KIND_S16, codes_nk)
    return PackedWeight(bits, codes_nk, scale, (lo, hi), packed, colsum, packed_s16)


def linear(
    x: torch.Tensor,
    weight: PackedWeight,
    bias: torch.Tensor | None = None,
    *,
    act_bits: int | None = None,
    act_scale: float | torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``y = dequant(quantize_rows(x, act_bits) · weight_codesᵀ) + bias`` in float32, fused.

    x: float32 (..., K); returns float32 (..., N) (written into ``out`` when given: float32, contiguous,
    shape (..., N)). ``act_bits`` defaults to ``weight.bits`` (4 -> codes in [-7, 7], 8 -> [-127, 127]);
    ``act_bits=7`` with an 8-bit weight selects the fast u7 x s8 path. Bit-identical on every backend.

    ``act_scale`` (a positive finite Python float or one-element float32 tensor) replaces the per-row scales
    by one static scale (calibrated per-tensor activations): codes ``clamp(round_half_even(x / act_scale),
    -2**(act_bits-1), 2**(act_bits-1) - 1)`` in float32 — the full signed range, as ``lowbit.ptq``'s static
    quantizer — and ``y = acc · act_scale · w_scale[j] + bias[j]``, i.e. ``int_matmul_scaled(codes,
    weight.codes, act_scale, weight.scale, bias)`` bit for bit. Non-finite x raises ``ValueError`` either way.
    """
    act_bits = _check_linear_args(x, weight, act_bits)
    k, n = weight.in_features, weight.out_features
    x2 = x.reshape(-1, k).contiguous()  # (M, K)
    out = _output_buffer(out, (*x.shape[:-1], n))
    if bias is not None:
        bias = api._scale_vector("bias", bias, n)
    s_static = None if act_scale is None else _static_scale(act_scale)
    out2 = out.view(x2.shape[0], n)
    chosen = api.resolve_backend(backend)
    if chosen in ("reference", "onednn") or weight.packed is None:
        if backends.is_native(chosen) and backend != "auto":
            raise RuntimeError(
                f"weight was packed without native panels (backend='reference' or 'onednn'); repack it with "
                f"backend={backend!r}"
            )
        _linear_unpacked(x2, weight, bias, act_bits, s_static, chosen, out2)
    else:
        _linear_native(x2, weight, bias, act_bits, s_static, chosen, out2)
    return out


def _check_linear_args(x: object, weight: object, act_bits: object) -> int:
    """Validate ``linear``'s x, weight and act_bits; return act_bits (the weight's bits when None)."""
    if not isinstance(weight, PackedWeight):
        raise TypeError(
            f"weight must be a PackedWeight from lowbit.ops.pack_weight, got {type(weight).__name__}"
        )
    act_bits = weight.bits if act_bits is None else act_bits
    if not isinstance(act_bits, int) or not 2 <= act_bits <= weight.bits:
        raise ValueError(
            f"act_bits must be an int in [2, {weight.bits}] for a {weight.bits}-bit weight, got {act_bits!r}"
        )
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError("x must be a float32 CPU tensor")
    k = weight.in_features
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have last dim {k} (the weight's in_features), got shape {tuple(x.shape)}")
    return act_bits


def _output_buffer(out: torch.Tensor | None, out_shape: tuple[int, ...]) -> torch.Tensor:
    """A fresh float32 output of ``out_shape``, or ``out`` checked to be one."""
    if out is None:
        return torch.empty(out_shape, dtype=torch.float32)
    if out.dtype != torch.float32 or tuple(out.shape) != out_shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {out_shape}")
    return out


def _linear_unpacked(
    x2: torch.Tensor,
    weight: PackedWeight,
    bias: torch.Tensor | None,
    act_bits: int,
    s_static: torch.Tensor | None,
    chosen: str,
    out2: torch.Tensor,
) -> None:
    """``linear`` on the reference or onednn backend (from the plain codes) into ``out2`` (M, N)."""
    m = x2.shape[0]
    # identical codes either way; the native quantizer is just faster
    quant_backend = "native" if chosen == "onednn" and native_gemm.native.available() else "reference"
    if s_static is None:
        codes, sx = api.quantize_rows(x2, act_bits, backend=quant_backend)
    else:
        codes, sx = quantize_static(x2, act_bits, s_static), s_static.reshape(1).expand(m).contiguous()
    if chosen == "onednn":
        onednn.int_matmul_scaled(codes, weight.codes, sx, weight.scale, bias, "nt", out2)
    else:
        out2.copy_(reference.int_matmul_scaled(codes, weight.codes, sx, weight.scale, bias, "nt"))


def _linear_native(
    x2: torch.Tensor,
    weight: PackedWeight,
    bias: torch.Tensor | None,
    act_bits: int,
    s_static: torch.Tensor | None,
    chosen: str,
    out2: torch.Tensor,
) -> None:
    """``linear`` on a native ISA ``chosen`` (from the packed panels) into ``out2`` (M, N)."""
    (m, k), n = x2.shape, weight.out_features
    kind, off, qmax = weight.plan(act_bits, static=s_static is not None, isa=chosen)
    if s_static is not None:
        qmax = native_gemm.ActQuant(qmax, -qmax - 1, float(s_static))
    if kind == native_gemm.KIND_S16:
        b_packed, colsum = weight.packed_s16, None
        if b_packed is None:  # packed for another ISA: the int16 panels are made for this call only
            b_packed, _ = native_gemm.pack_b(native_gemm.KIND_S16, weight.codes, scratch="b")
    else:
        b_packed, colsum = weight.packed, weight.colsum
    if native_gemm.fuses(m) and n and k:  # quantize inside the GEMM's parallel region
        epi = native_gemm.Epilogue(out_f32=out2, b_scale=weight.scale, bias=bias)
        native_gemm.gemm_quant(kind, off, qmax, x2, b_packed, colsum, epi)
        return
    a_packed, sx = native_gemm.quant_pack_a(x2, qmax, off, kind)
    epi = native_gemm.Epilogue(out_f32=out2, a_scale=sx, b_scale=weight.scale, bias=bias)
    native_gemm.gemm(kind, off, a_packed, b_packed, colsum, m, n, k, epi)


def _static_scale(act_scale: object) -> torch.Tensor:
    """``act_scale`` as a 0-dim float32 tensor; TypeError/ValueError name the problem."""
    if isinstance(act_scale, bool) or not isinstance(act_scale, (int, float, torch.Tensor)):
        raise TypeError(
            f"act_scale must be a float or a one-element float32 tensor, got {type(act_scale).__name__}"
        )
    if isinstance(act_scale, torch.Tensor):
        if act_scale.numel() != 1 or act_scale.dtype != torch.float32 or act_scale.device.type != "cpu":
            raise ValueError(
                "act_scale must be a one-element float32 CPU tensor (one static scale for every row), got "
                f"shape {tuple(act_scale.shape)} {act_scale.dtype} on {act_scale.device}; for per-row scales "
                "leave act_scale=None"
            )
        s = act_scale.detach().reshape(())
    else:
        s = torch.tensor(float(act_scale), dtype=torch.float32)
    value = float(s)
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"act_scale must be positive and finite, got {value} (as float32)")
    return s


def quantize_static(x: torch.Tensor, act_bits: int, scale: torch.Tensor) -> torch.Tensor:
    """Reference static quantizer: int8 codes ``clamp(round_half_even(x / scale), -2**(b-1), 2**(b-1) - 1)``
    of a float32 (M, K) matrix for a 0-dim float32 ``scale``; non-finite x raises ``ValueError``."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"x holds {bad} non-finite values; clean them first (torch.nan_to_num or clamp)")
    return symmetric_codes(x, scale, IntFormat(act_bits).code_range)  # the full range [-2^(b-1), 2^(b-1) - 1]
