"""Quantized linear layers that replace ``nn.Linear`` after PTQ: INT8 on the integer engine, FP8, emulated.

* :class:`Int8Linear` — int8 weight codes packed once; activations quantized with the calibrated static
  scale (or per token) inside the GEMM by ``lowbit.ops.linear``: exact int32 accumulation, dequantization and
  bias fused (activation formats ``ops.linear`` does not take fall back to ``ops.int_matmul_scaled``).
* :class:`FP8Linear` — float8 weight codes; activations cast to FP8 with the static scale (or per token).
  ``fp8_compute="emulated"`` (default) takes both FP8 operands as float32 — exact, every FP8 value is a
  float32 — and runs one float32 GEMM: each product of two FP8 values (≤ 8 significant bits) is exact in
  float32, so this is an FP8 GEMM with float32 accumulation; the scales are applied afterwards. The
  activations go to the float32 values of their FP8 codes in one fused pass (:mod:`lowbit.ptq.fp8_kernels`)
  and the weight codes are decoded by a table (:func:`lowbit.ptq.weights.code_values`; torch's float8 casts
  cost ~2 ns per value), into per-thread workspaces: the layer runs at 0.59–0.93x FP32 (``lowbit bench ptq``,
  two quiet runs, 2026-11-30; it was 0.37–0.64x with torch's casts) — the float32 GEMM plus ~10–30 % for the
  rounding and decoding.
  ``fp8_compute="scaled_mm"`` calls ``torch._scaled_mm`` on the float8 tensors instead.
  Measured on this machine (AMD EPYC, AVX2, no AVX-512/AMX; torch 2.13 CPU; 2 cores shared with other
  jobs; ``lowbit bench ptq``, M=2048 tokens, MiniLM's K×N ∈ {384×384, 384×1536, 1536×384}, variants
  interleaved in one process, three runs): the bare ``torch._scaled_mm`` FP8 GEMM runs at 0.39–0.58× the
  speed of the FP32 GEMM, the bare emulated product (upcasts + FP32 GEMM) at 0.54–0.76×; end to end the
  layer is 0.3–0.55× FP32 emulated and 0.2–0.54× with ``_scaled_mm``. Both give the same values up to
  float32 summation order. So this CPU has no usable real FP8 product, and the emulation is the default
  (faster, and no private torch API). Re-measured with the INT8 layers in the same loop
  (``results/ptq_bench/amd-epyc_avx2.txt``, load ~8 from other jobs): ``_scaled_mm`` 0.36–0.53×, upcast
  GEMM 0.54–0.67×, FP8 layer 0.28–0.42× (emulated) / 0.26–0.39× (``_scaled_mm``).
* :class:`EmulatedLinear` — weight-only formats (INT4 packed, INT8, FP8, MXFP8, MXFP4) and MX weight +
  activation recipes: the weight is decoded to float32 on each call (exact), MX activations are quantized
  per 32-element block on the fly, and the product runs in float32.

Each layer keeps only its low-precision buffers (no FP32 weight copy), reports ``weight_nbytes()`` and
carries a :class:`LayerSpec` from which :mod:`lowbit.ptq.serialization` rebuilds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit import ops
from lowbit.formats import INT7, W7_WEIGHT_RANGE, Format, IntFormat
from lowbit.ops import backends, native_bf16
from lowbit.ops.native_gemm import scratch
from lowbit.ptq import fp8_kernels
from lowbit.ptq.base import LayerSpec, PTQLinear
from lowbit.ptq.weights import code_values, decode_weight
from lowbit.quantizers import quantize, symmetric_codes
from lowbit.scales import compute_scale

# INT8 code ranges -> lowbit.ops kernel: "w7" weight codes in [-63, 63] x 8-bit activations and "a7" 8-bit
# weights x activation codes in [-64, 63] both take the u8 x s8 (vpmaddubsw) path; "exact" (full-range
# codes on both sides, the paper's INT8) takes the exact int16 kernel at ~0.7x its speed.
INT8_KERNELS = ("w7", "a7", "exact")


class Int8Linear(PTQLinear):
    """INT8 weights × INT8 activations on ``lowbit.ops`` (int32 accumulation, fused dequant + bias).

    ``spec.int8_kernel`` fixes the code ranges and so the engine's kernel (see :data:`INT8_KERNELS`):
    ``"w7"`` — weight codes in [-63, 63], activations in the full int8 range; ``"a7"`` — activation codes in
    [-64, 63] (static scale ``clip / 63``) or [-63, 63] (per token); ``"exact"`` — full range on both sides.
    Both activation modes run ``ops.linear`` on a :class:`~lowbit.ops.PackedWeight` packed once (re-packed
    only if the weight buffers are overwritten), which quantizes the activations inside the GEMM: static
    per-tensor scales with ``act_scale=`` (codes ``clamp(round_half_even(x / s), qmin, qmax)`` of the
    activation format, as :func:`quantize_static`), per-token scales without. Every result is the exact
    integer product, dequantized in float32 (``acc · s_x · s_w + bias``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kernel = self.kernel
        if kernel == "w7" and self.w_codes.numel():
            lo, hi = (int(v) for v in torch.aminmax(self.w_codes))
            if not W7_WEIGHT_RANGE.contains(lo, hi):
                raise ValueError(
                    f"int8_kernel='w7' needs weight codes in [{W7_WEIGHT_RANGE.lo}, {W7_WEIGHT_RANGE.hi}], "
                    f"got [{lo}, {hi}]"
                )
        self._packed: ops.PackedWeight | None = None
        self._packed_key: tuple | None = None

    @property
    def kernel(self) -> str:
        return self.spec.int8_kernel or "exact"

    def packed_weight(self) -> ops.PackedWeight:
        """The weight packed for ``ops.linear`` (cached; keyed on the buffers' storage and version)."""
        w, s = self.w_codes, self.w_scale
        key = (w.data_ptr(), w._version, s.data_ptr(), s._version)
        if self._packed is None or self._packed_key != key:
            scale = s.reshape(-1).expand(self.out_features).contiguous()
            self._packed, self._packed_key = ops.pack_weight(w, scale, bits=8), key
        return self._packed

    def _linear(self, x2: torch.Tensor) -> torch.Tensor:
        if self.act_scale is not None:  # static per-tensor scale from calibration, saturating
            fmt = INT7 if self.kernel == "a7" else self.act_format
            if not (isinstance(fmt, IntFormat) and fmt.signed and not fmt.narrow and fmt.bits <= 8):
                a_codes = quantize_static(x2, fmt, self.act_scale)  # a range ops.linear does not take
                w_codes, w_scale = self.w_codes, self.w_scale
                return ops.int_matmul_scaled(a_codes, w_codes, self.act_scale, w_scale, self.bias, bits=8)
            packed = self.packed_weight()
            return ops.linear(x2.contiguous(), packed, self.bias, act_bits=fmt.bits, act_scale=self.act_scale)
        act_bits = 7 if self.kernel == "a7" else 8  # dynamic per token, fused quantize + GEMM
        return ops.linear(x2.contiguous(), self.packed_weight(), self.bias, act_bits=act_bits)

    def compute_path(self) -> str:
        kernel = {"w7": "u8 x s8, 7-bit weight codes", "a7": "u8 x s8, 7-bit activation codes",
                  "exact": "exact int16 kernel, full-range codes"}[self.kernel]  # fmt: skip
        return f"int8 GEMM ({kernel}), int32 accumulate ({ops.backend().chosen})"


def bf16_dot_usable(x2: torch.Tensor | None) -> bool:
    """Whether a call on ``x2`` can multiply on ``vdpbf16ps``: the CPU has AVX512-BF16, ``backend="auto"``
    resolves to lowbit's native kernels, and no gradient is needed (the float32 GEMM stays differentiable)."""
    grad = x2 is not None and x2.requires_grad and torch.is_grad_enabled()
    return not grad and native_bf16.has_bf16_dot() and backends.is_native(backends.resolve("auto"))


class FP8Linear(PTQLinear):
    """FP8 weights × FP8 activations: products on the CPU's bf16 dot-product instruction (``"bf16_dot"``,
    AVX512-BF16: every FP8 value is an exact bf16 value, so products are exact and sums float32), emulated
    exactly in float32 (``"emulated"``) or by ``torch._scaled_mm``; ``"auto"`` takes ``bf16_dot`` where the
    CPU has it and no gradient is needed, else ``emulated``."""

    def compute(self, x2: torch.Tensor | None = None, strict: bool = True) -> str:
        """The compute path a call on ``x2`` takes (``spec.fp8_compute``, ``"auto"`` resolved); ``strict``:
        raise when an explicit ``"bf16_dot"`` cannot run here."""
        mode = self.spec.fp8_compute
        if mode == "bf16_dot" and strict and not native_bf16.has_bf16_dot():
            raise RuntimeError(
                "fp8_compute='bf16_dot' needs AVX512-BF16 and lowbit's native kernels "
                f"({ops.why_not_native() or 'this CPU lacks avx512_bf16'}); use fp8_compute='auto'"
            )
        if mode == "auto":
            return "bf16_dot" if bf16_dot_usable(x2) else "emulated"
        return mode

    def _linear(self, x2: torch.Tensor) -> torch.Tensor:
        w_fp8 = self.w_codes  # (N, K) float8
        w_scale = self.w_scale  # (1,) or (N,)
        mode = self.compute(x2)
        if mode == "bf16_dot":
            m = x2.shape[0]
            a_out = scratch("fp8-activations", x2.numel(), torch.float32).view(x2.shape)
            a_scale = (
                self.act_scale
                if self.act_scale is not None
                else compute_scale(x2.detach(), (1,), self.act_format, "absmax")
            )
            a_vals = fp8_kernels.round_to_grid(x2.detach(), self.act_format, a_scale, out=a_out)
            y = torch.empty(m, self.out_features)
            sa = a_scale.reshape(-1).expand(m).contiguous()
            sb = w_scale.reshape(-1).expand(self.out_features).contiguous()
            bias = None if self.bias is None else self.bias.detach().contiguous()
            w_panels = self.bf16_weight(lambda: code_values(w_fp8))
            native_bf16.bf16_matmul_scaled(a_vals, w_panels, self.out_features, sa, sb, bias, y)
            return y
        if mode == "emulated":
            # activations straight to the float32 values of their FP8 codes, weight codes decoded by table
            # (fused kernels: the same values as quantize_static / quantize(..., "row") + .float()), both
            # into per-thread workspaces: they live only until the GEMM below has read them, and fresh
            # multi-MB buffers would cost page faults on every call
            a_out = scratch("fp8-activations", x2.numel(), torch.float32).view(x2.shape)
            w_out = scratch("fp8-weight", w_fp8.numel(), torch.float32).view(w_fp8.shape)
            if self.act_scale is not None:  # static per-tensor scale from calibration, saturating
                a_scale = self.act_scale
            else:
                # (M, 1) as quantize(.., "row"); like quantize, no gradient flows through the codes or scales
                a_scale = compute_scale(x2.detach(), (1,), self.act_format, "absmax")
            a_vals = fp8_kernels.round_to_grid(x2, self.act_format, a_scale, out=a_out)
            acc = a_vals @ code_values(w_fp8, out=w_out).t()  # exact products, float32 sums (M, N)
            if a_scale.numel() == 1:  # one pass, in place (no second M x N buffer): acc * (s_x * s_w) + bias
                scale = a_scale * w_scale
                return (
                    torch.addcmul(self.bias, acc, scale, out=acc)
                    if self.bias is not None
                    else acc.mul_(scale)
                )
            y = acc.mul_(a_scale).mul_(w_scale)
            return y.add_(self.bias) if self.bias is not None else y
        if self.act_scale is not None:
            a_fp8, a_scale = quantize_static(x2, self.act_format, self.act_scale), self.act_scale
        else:
            q = quantize(x2, self.act_format, "row")
            a_fp8, a_scale = q.codes, q.scale  # (M, K), (M, 1)
        if self.spec.fp8_compute == "scaled_mm":
            if a_scale.numel() == 1 and w_scale.numel() == 1:
                sa, sb = a_scale.reshape(()), w_scale.reshape(())
            else:  # row-wise form: (M, 1) and (1, N)
                sa = a_scale.reshape(-1, 1).expand(a_fp8.shape[0], 1).contiguous()
                sb = w_scale.reshape(1, -1).expand(1, self.out_features).contiguous()
            y = torch._scaled_mm(a_fp8, w_fp8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y

    def compute_path(self) -> str:
        mode = self.compute(strict=False)
        if mode == "bf16_dot" and not native_bf16.has_bf16_dot():
            return "FP8 bf16_dot requested, unavailable on this CPU (calls raise; use fp8_compute='auto')"
        if mode == "scaled_mm":
            return "FP8 torch._scaled_mm"
        if mode == "bf16_dot":
            return "FP8 x FP8 on vdpbf16ps (AVX512-BF16): exact products, float32 sums"
        return "FP8 emulated (exact upcast, float32 GEMM)"


class EmulatedLinear(PTQLinear):
    """Weight decoded to float32 per call (natively for INT8/INT4/FP8 codes: one pass, bit-identical); MX
    activations (if any) quantized per block; float32 GEMM."""

    def uses_bf16_dot(self, x2: torch.Tensor | None = None) -> bool:
        """MX weights and activations multiply on ``vdpbf16ps`` where the CPU has AVX512-BF16 and no gradient
        is needed: every MX value (element x power-of-two block scale) is an exact bf16 value, so the products
        are exact and the sums float32 (inputs below bf16's normal range, 2**-126, are flushed by the
        instruction — an absolute error far below the float32 rounding of any sum they join)."""
        return self.act_format is not None and bf16_dot_usable(x2)

    def _linear(self, x2: torch.Tensor) -> torch.Tensor:
        if self.act_format is not None:  # MX: dynamic per-block scale (the element rounding fused in C)
            x2 = fp8_kernels.mx_fake_quantize(x2, self.act_format)
        if self.uses_bf16_dot(x2):
            m, n = x2.shape[0], self.out_features
            y = torch.empty(m, n)
            bias = None if self.bias is None else self.bias.detach().contiguous()
            ones_m, ones_n = torch.ones(m), torch.ones(n)
            shape = (self.out_features, self.in_features)
            w_panels = self.bf16_weight(
                lambda: decode_weight(self.weight_buffers(), self.weight_format, shape)
            )
            native_bf16.bf16_matmul_scaled(x2.detach().contiguous(), w_panels, n, ones_m, ones_n, bias, y)
            return y
        # The decoded weight goes to a per-thread workspace (it lives until the GEMM has read it) unless
        # autograd would keep it for the input's gradient.
        shape = (self.out_features, self.in_features)
        out = (
            None
            if x2.requires_grad
            else scratch("weight-decode", shape[0] * shape[1], torch.float32).view(shape)
        )
        w = decode_weight(self.weight_buffers(), self.weight_format, shape, out=out)
        return F.linear(x2, w, self.bias)

    def compute_path(self) -> str:
        if self.uses_bf16_dot():
            return "MX x MX on vdpbf16ps (AVX512-BF16): exact products, float32 sums"
        return "decode to float32, float32 GEMM"


def quantize_static(x: torch.Tensor, fmt: Format, scale: torch.Tensor) -> torch.Tensor:
    """Codes of ``x`` (float32) for a fixed scalar step: ``quantize(x, fmt, scale=scale).codes`` bit for bit
    (round half to even, saturating at the format's range), in a single fused pass — the generic quantizer
    costs ~50x more per call. int8 codes for INT8, float8 codes for FP8. NaN/Inf raise ``ValueError``.
    """
    # One cheap reduction: any NaN/Inf makes the sum non-finite (a finite sum that overflows is rechecked).
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"input holds {int(torch.isnan(x).sum())} NaN and {int(torch.isinf(x).sum())} infinite values; "
            "a quantized layer needs finite activations"
        )
    if isinstance(fmt, IntFormat):
        return symmetric_codes(x, scale, fmt.code_range)
    return (x / scale).clamp_(-fmt.max, fmt.max).to(fmt.torch_dtype)  # the cast rounds half to even


LAYER_CLASSES: dict[str, type[PTQLinear]] = {
    "int8": Int8Linear,
    "fp8": FP8Linear,
    "emulated": EmulatedLinear,
}


def build_layer(
    spec: LayerSpec,
    weight_buffers: dict[str, torch.Tensor],
    bias: torch.Tensor | None,
    act_scale: float | torch.Tensor | None = None,
) -> PTQLinear:
    """The quantized linear class for ``spec.kind``, holding the given buffers."""
    return LAYER_CLASSES[spec.kind](spec, weight_buffers, bias, act_scale)
