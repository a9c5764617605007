"""Low-precision weight storage: encode an FP32 (N, K) weight into codes + scales, and decode it back exactly.

Storage per format (every buffer is what really sits in memory and in the safetensors file):

* int8 — ``w_codes`` int8 (N, K) (int7: the same storage, codes in [-63, 63] after absmax scaling);
  int4 — ``w_codes`` uint8 (N, K/2), two codes per byte (``pack_int4``);
* fp8-e4m3 / fp8-e5m2 — ``w_codes`` as ``torch.float8_e4m3fn`` / ``float8_e5m2`` (N, K);
* ``w_scale`` float32: (1,) per tensor, (N,) per output channel, (N, K/G) per group of G along K;
* MX formats — element codes (float8 for MXFP8, int8 for MXINT8, packed nibbles for MXFP4: sign in bit 3,
  magnitude index in bits 0–2) and ``w_exp`` uint8 (N, K/32): the E8M0 shared exponent, scale = 2^(e−127).

The 8-bit formats cost 1 byte per weight plus their scales: 0.25× FP32 per tensor/channel, ~0.258× for MXFP8.
"""

from __future__ import annotations

import functools

import torch

from lowbit.formats import E8M0_MIN_EXP, FloatFormat, Format, IntFormat, MXFormat
from lowbit.granularity import Granularity, for_role
from lowbit.ops import native
from lowbit.ops.native_gemm import threads
from lowbit.ptq.gptq import gptq_round
from lowbit.quantizers import pack_int4, quantize, unpack_int4

E8M0_BIAS = -E8M0_MIN_EXP  # 127: the stored exponent byte is e + 127


def _granularity(weight_granularity: str, group_size: int | None) -> Granularity:
    """The PTQ spelling's Granularity ("channel": one scale per row of W (N, K), i.e. per output channel)."""
    return for_role(weight_granularity, "weight", group_size)


def _nibble_table(fmt: FloatFormat) -> torch.Tensor:
    """Non-negative values of a 4-bit minifloat, ascending: nibble magnitude index -> value."""
    codes = fmt.codes()
    table = codes[codes >= 0]
    if table.numel() != 8:
        raise ValueError(f"{fmt.name} is not a 4-bit sign-magnitude float (got {table.numel()} magnitudes)")
    return table


def _pack_minifloat4(values: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """On-grid FP4 values (float32) -> uint8, two per byte; nibble = sign << 3 | magnitude index."""
    table = _nibble_table(fmt).float()
    idx = torch.searchsorted(table, values.abs().contiguous())
    if not bool((table[idx.clamp(max=7)] == values.abs()).all()):
        raise ValueError(f"values are not on the {fmt.name} grid; quantize them first")
    nibble = idx | ((values < 0).long() << 3)
    # the nibble read as a two's complement int4, so pack_int4 can store it
    as_int4 = torch.where(nibble >= 8, nibble - 16, nibble).to(torch.int8)
    return pack_int4(as_int4)


def _unpack_minifloat4(packed: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    nibble = unpack_int4(packed).long() & 0xF
    table = _nibble_table(fmt).float()
    mag = table[nibble & 7]
    return torch.where(nibble >= 8, -mag, mag)


def encode_weight(
    w: torch.Tensor,
    fmt: Format,
    weight_granularity: str = "tensor",
    group_size: int | None = None,
    scale_rule: str = "absmax",
    gram: torch.Tensor | None = None,
    act_order: bool = False,
) -> dict[str, torch.Tensor]:
    """Quantize a (N, K) weight (nearest-even, saturating) into its storage buffers (see module doc).

    ``gram`` (K, K), the Gram matrix ``XᵀX`` of the layer's calibration inputs: round with GPTQ error
    feedback (:func:`lowbit.ptq.gptq.gptq_round`, columns by decreasing ``gram`` diagonal if ``act_order``)
    instead of to nearest; same scales, same storage. Tensor and channel granularity only.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor (out, in), got {getattr(w, 'shape', type(w))}")
    w = w.detach().float()
    n, k = w.shape
    if isinstance(fmt, MXFormat):
        if k % fmt.block:
            raise ValueError(f"{fmt.name} needs in_features divisible by {fmt.block}, got {k}")
        q = quantize(w, fmt)  # codes (N, K), scale (N, K/32, 1) powers of two
        _, exp = torch.frexp(q.scale.reshape(n, k // fmt.block))  # scale = 0.5 * 2**exp
        w_exp = (exp - 1 + E8M0_BIAS).to(torch.uint8)
        elem = fmt.element
        if isinstance(elem, FloatFormat) and elem.bits == 4:
            codes = _pack_minifloat4(q.codes, elem)
        elif q.codes.dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.int8):
            codes = q.codes
        else:
            raise ValueError(f"lowbit stores MX weights with 8-bit or 4-bit elements, not {fmt.name}")
        return {"w_codes": codes.contiguous(), "w_exp": w_exp.contiguous()}
    gran = _granularity(weight_granularity, group_size)
    q = quantize(w, fmt, gran, scale=scale_rule)
    codes = q.codes
    if gram is not None:
        if weight_granularity == "group":
            raise ValueError("GPTQ rounding supports weight granularity 'tensor' or 'channel', not 'group'")
        scale2d = q.scale.reshape(-1, 1) if q.scale.numel() > 1 else q.scale.reshape(1, 1)
        values = gptq_round(
            w / scale2d, gram, fmt, act_order=act_order
        )  # same scales, error-compensating choice of grid values
        codes = values.to(q.codes.dtype)  # exact: values are on the grid
    if weight_granularity == "tensor":
        scale = q.scale.reshape(1)
    elif weight_granularity == "channel":
        scale = q.scale.reshape(n)
    else:
        scale = q.scale.reshape(n, k // group_size)
    if isinstance(fmt, IntFormat) and fmt.bits == 4:
        codes = pack_int4(codes)
    elif (isinstance(fmt, IntFormat) and fmt.bits not in (7, 8)) or (
        isinstance(fmt, FloatFormat) and fmt.torch_dtype is None
    ):
        raise ValueError(f"lowbit stores int8 (int7), int4, fp8-e4m3, fp8-e5m2 or MX weights, not {fmt.name}")
    return {"w_codes": codes.contiguous(), "w_scale": scale.contiguous()}


def decode_weight(
    buffers: dict[str, torch.Tensor], fmt: Format, shape: tuple[int, int], out: torch.Tensor | None = None
) -> torch.Tensor:
    """The float32 (N, K) weight the buffers encode (codes × scale; exact in float32).

    Natively (when the AVX2 library loads) every stored code type — INT8, packed INT4, FP8, and the MX
    formats' elements with their power-of-two block scales — decodes in one pass (:func:`_decode_native`,
    bit-identical to the torch expression below) into ``out`` when given (a contiguous float32 (N, K)
    tensor, e.g. a reused workspace).
    """
    n, k = shape
    codes = buffers["w_codes"]
    if native.available() and n * k and codes.dtype in _NATIVE_CODE_DTYPES:
        if isinstance(fmt, MXFormat):
            exp = buffers["w_exp"].to(torch.int32) - E8M0_BIAS
            scale = torch.ldexp(torch.ones(exp.shape), exp)  # (N, K/32), exact powers of two
            elem = fmt.element
            fp4 = isinstance(elem, FloatFormat) and elem.bits == 4
            return _decode_native(codes, scale, n, k, out, _fp4_table(elem) if fp4 else None)
        return _decode_native(codes, buffers["w_scale"], n, k, out)
    if out is not None:
        return out.copy_(decode_weight(buffers, fmt, shape))
    if isinstance(fmt, MXFormat):
        elem = fmt.element
        if isinstance(elem, FloatFormat) and elem.bits == 4:
            values = _unpack_minifloat4(codes, elem)
        else:
            values = codes.float()
        exp = buffers["w_exp"].to(torch.int32) - E8M0_BIAS
        scale = torch.ldexp(torch.ones(exp.shape), exp)  # (N, K/32)
        return (values.reshape(n, k // fmt.block, fmt.block) * scale.unsqueeze(-1)).reshape(n, k)
    values = unpack_int4(codes).float() if codes.dtype == torch.uint8 else codes.float()
    scale = buffers["w_scale"]
    if scale.dim() == 2:  # (N, K/G): groups along K
        groups = scale.shape[1]
        return (values.reshape(n, groups, k // groups) * scale.unsqueeze(-1)).reshape(n, k)
    return values * (scale.unsqueeze(1) if scale.numel() > 1 else scale)


_NATIVE_CODE_DTYPES = (torch.int8, torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2)  # bytes, or nibbles
_ONE = torch.ones(1)


def code_values(codes: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 value of each int8 or float8 code (any shape, last dim the row): ``codes.float()`` bit for
    bit, through the native table decode when it loads (torch's float8 cast costs ~2 ns per value here).
    ``out``: a contiguous float32 tensor of the codes' shape to write into (e.g. a reused workspace)."""
    if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int8, *_NATIVE_CODE_DTYPES[2:]):
        got = getattr(codes, "dtype", type(codes).__name__)
        raise TypeError(f"codes must be an int8 or float8 tensor, got {got}")
    if out is not None and (
        out.dtype != torch.float32 or out.shape != codes.shape or not out.is_contiguous()
    ):
        raise ValueError(f"out must be a contiguous float32 tensor of shape {tuple(codes.shape)}")
    if not native.available() or codes.numel() == 0:
        return codes.float() if out is None else out.copy_(codes.float())
    k = codes.shape[-1] if codes.dim() else 1
    values = _decode_native(
        codes.reshape(-1, k), _ONE, codes.numel() // k, k, None if out is None else out.view(-1, k)
    )
    return values.view(codes.shape) if out is None else out


def _decode_native(
    codes: torch.Tensor,
    scale: torch.Tensor,
    n: int,
    k: int,
    out: torch.Tensor | None,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """codes (int8, packed uint8 nibbles or float8) × scale ((1,), (N,) or (N, G)) -> float32 (N, K).
    ``table``: the value of each code (default: by dtype; packed nibbles as two's complement INT4)."""
    if out is None:
        out = torch.empty((n, k), dtype=torch.float32)
    elif out.shape != (n, k) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape ({n}, {k})")
    groups = 0 if scale.numel() == 1 else (scale.shape[1] if scale.dim() == 2 else 1)
    if groups and k % groups:
        raise ValueError(f"{groups} scale groups do not divide in_features={k}")
    codes = codes.contiguous()
    scale = scale.float().contiguous()
    native.lib().lowbit_decode_scaled(
        codes.view(torch.uint8).data_ptr(),
        n,
        k,
        int(codes.dtype == torch.uint8),
        (_code_table(codes.dtype) if table is None else table).data_ptr(),
        scale.data_ptr(),
        groups,
        out.data_ptr(),
        threads(),
    )
    return out


@functools.lru_cache(maxsize=4)
def _code_table(dtype: torch.dtype) -> torch.Tensor:
    """float32 value of each code: 16 signed nibbles for packed INT4 (uint8 storage), else 256 bytes."""
    if dtype == torch.uint8:
        return torch.arange(16, dtype=torch.float32).sub(torch.arange(16).ge(8).float() * 16)
    return torch.arange(256, dtype=torch.uint8).view(dtype).float()


@functools.lru_cache(maxsize=4)
def _fp4_table(elem: FloatFormat) -> torch.Tensor:
    """float32 value of each packed FP4 nibble (sign in bit 3, magnitude index in bits 0-2)."""
    mag = _nibble_table(elem).float()
    return torch.cat([mag, -mag])


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes held by a dict of tensors (numel × element size)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
