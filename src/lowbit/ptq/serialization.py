"""Save a PTQ-quantized model to safetensors; load it back into a fresh FP32 model of the same architecture.

File layout: the model's whole ``state_dict`` (quantized layers contribute ``w_codes`` as float8/int8/uint8,
``w_scale``/``w_exp``, ``act_scale`` and ``bias``) plus string metadata:

* ``lowbit_format = "lowbit-ptq"``, ``lowbit_format_version`` (:data:`FORMAT_VERSION`), ``lowbit_version``;
* ``layers``: JSON {module name: :class:`~lowbit.ptq.modules.LayerSpec`} — formats, granularities, path;
* ``sha256``: digest of every tensor's name, dtype, shape and bytes and of the metadata above (format,
  version, model class, every layer's spec), so a corrupted payload or an edited layer spec (say an
  activation format switched from E4M3 to E5M2) is detected (safetensors itself only checks the header).
  Format version 1 digested the tensors only; its files are refused (re-quantize to write version 2).

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``) and the file gets the usual
permissions (``0666`` less the umask, as the training checkpoints), not ``mkstemp``'s ``0600``. Any problem on
load — not a safetensors file, not written by lowbit.ptq, another format version, digest mismatch, layer
metadata inconsistent with itself or with the tensors, a layer the model does not have, wrong dtypes or
shapes — raises :class:`CheckpointError` (a ``ValueError``) before any layer of the model is replaced: the
file is validated completely first, then the layers are swapped, so no half-loaded model is left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lowbit.files import CheckpointError, atomic_write_bytes
from lowbit.formats import FloatFormat, IntFormat, MXFormat, get_format
from lowbit.modules import replace_module
from lowbit.ptq.base import LayerSpec, PTQLinear
from lowbit.ptq.config import FP8_COMPUTE
from lowbit.ptq.modules import build_layer

logger = logging.getLogger(__name__)

FORMAT_NAME = "lowbit-ptq"
FORMAT_VERSION = 2  # 2: the sha256 digest covers the metadata too (1: tensors only)
_WEIGHT_KEYS = ("w_codes", "w_scale", "w_exp")
#: Metadata entries inside the digest (everything but the digest itself and lowbit_version, which is
#: informational: a file stays valid across lowbit releases of the same format version).
_DIGESTED_METADATA = ("lowbit_format", "lowbit_format_version", "model_class", "layers")


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in _DIGESTED_METADATA:
        value = metadata.get(key)
        h.update(
            f"meta:{key}|{'' if value is None else len(value)}|{'' if value is None else value}|".encode()
        )
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (after :func:`lowbit.ptq.quantize`) to ``path`` atomically; returns the path."""
    from safetensors.torch import save

    import lowbit

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module quantized by lowbit.ptq, got {type(model).__name__}")
    layers = {name: m.spec for name, m in model.named_modules() if isinstance(m, PTQLinear)}
    if not layers:
        raise ValueError("model holds no quantized layers; run lowbit.ptq.quantize(model, config) first")
    # Clone so that tied/shared tensors become separate entries (safetensors refuses shared storage).
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "lowbit_format": FORMAT_NAME,
        "lowbit_format_version": str(FORMAT_VERSION),
        "lowbit_version": lowbit.__version__,
        "model_class": type(model).__name__,
        "layers": json.dumps({n: json.loads(s.to_json()) for n, s in layers.items()}, sort_keys=True),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    data = save(tensors, metadata=metadata)
    path = Path(path)
    atomic_write_bytes(path, data)
    logger.info("saved %d quantized layers to %s (%d bytes)", len(layers), path, len(data))
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no quantized checkpoint at {path}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[key] = f.get_tensor(key)
    except Exception as err:  # safetensors raises its own error types for unreadable files
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err})"
        ) from err
    return tensors, metadata


def _expected_codes(spec: LayerSpec) -> tuple[torch.dtype, tuple[int, int]]:
    fmt = get_format(spec.weight)
    n, k = spec.out_features, spec.in_features
    elem = fmt.element if isinstance(fmt, MXFormat) else fmt
    if isinstance(elem, FloatFormat) and elem.torch_dtype is not None:
        return elem.torch_dtype, (n, k)
    if isinstance(elem, IntFormat) and elem.bits == 8:
        return torch.int8, (n, k)
    return torch.uint8, (n, k // 2)  # int4 / fp4 nibbles, two per byte


def _check_spec(path: Path, name: str, spec: LayerSpec, tensors: dict) -> None:
    """The spec agrees with itself and with the layer's tensors (kind vs formats, granularities, scales)."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: inconsistent metadata for layer {name!r}: {why}")

    for field in ("in_features", "out_features"):
        v = getattr(spec, field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise bad(f"{field} must be a positive integer, got {v!r}")
    w = get_format(spec.weight)
    a = get_format(spec.activation) if spec.activation is not None else None
    _check_granularities(spec, w, a, bad)
    _check_kind(spec, w, a, bad)
    _check_scales(name, spec, w, tensors, bad)


def _check_granularities(
    spec: LayerSpec, w: object, a: object | None, bad: Callable[[str], CheckpointError]
) -> None:
    """Weight and activation granularities fit the formats (MX: block) and each other; group sizes divide."""
    mx = isinstance(w, MXFormat)
    if (spec.activation is None) != (spec.activation_granularity is None):
        raise bad(
            f"activation={spec.activation!r} with activation_granularity={spec.activation_granularity!r}"
        )
    if mx != (spec.weight_granularity == "block") or spec.weight_granularity not in (
        "tensor", "channel", "group", "block"
    ):  # fmt: skip
        raise bad(f"weight {spec.weight} with weight_granularity={spec.weight_granularity!r}")
    if a is not None:
        a_mx = isinstance(a, MXFormat)
        if a_mx != mx or a_mx != (spec.activation_granularity == "block"):
            raise bad(f"activation {spec.activation}/{spec.activation_granularity} with weight {spec.weight}")
        if spec.activation_granularity not in ("tensor", "token", "block"):
            raise bad(f"activation_granularity={spec.activation_granularity!r}")
    if spec.weight_granularity == "group":
        g = spec.group_size
        if not isinstance(g, int) or g < 1 or spec.in_features % g:
            raise bad(f"group_size={g!r} must be a positive divisor of in_features={spec.in_features}")


def _check_kind(spec: LayerSpec, w: object, a: object | None, bad: Callable[[str], CheckpointError]) -> None:
    """The layer kind (int8, fp8, emulated) fits the weight and activation formats and ``fp8_compute``."""
    mx = isinstance(w, MXFormat)
    is_int8 = lambda f: isinstance(f, IntFormat) and f.bits <= 8  # noqa: E731
    is_fp8 = lambda f: isinstance(f, FloatFormat) and f.bits == 8  # noqa: E731
    if spec.kind == "int8" and not (is_int8(w) and is_int8(a)):
        raise bad(
            f"an int8 layer needs int8 weight and activation formats, got {spec.weight}/{spec.activation}"
        )
    if spec.kind == "fp8" and not (is_fp8(w) and is_fp8(a)):
        raise bad(
            f"an fp8 layer needs FP8 weight and activation formats, got {spec.weight}/{spec.activation}"
        )
    if spec.kind == "emulated" and a is not None and not mx:
        raise bad(f"an emulated layer with activations takes MX formats, got {spec.weight}/{spec.activation}")
    if (spec.fp8_compute is not None) != (spec.kind == "fp8") or (
        spec.fp8_compute is not None and spec.fp8_compute not in FP8_COMPUTE
    ):
        raise bad(
            f"fp8_compute={spec.fp8_compute!r} on a {spec.kind} layer (fp8 layers: one of {FP8_COMPUTE})"
        )


def _check_scales(
    name: str, spec: LayerSpec, w: object, tensors: dict, bad: Callable[[str], CheckpointError]
) -> None:
    """The file holds as many weight scales as the spec's granularity needs, and an act_scale exactly when
    the activations are scaled statically."""
    n, k = spec.out_features, spec.in_features
    if isinstance(w, MXFormat):
        scale_key, want = "w_exp", n * (k // w.block) if k % w.block == 0 else None
    else:
        scale_key = "w_scale"
        want = {"tensor": 1, "channel": n, "group": n * (k // spec.group_size) if spec.group_size else None}
        want = want[spec.weight_granularity]
    scale = tensors.get(f"{name}.{scale_key}")
    if scale is None or want is None or scale.numel() != want:
        got = None if scale is None else tuple(scale.shape)
        raise bad(
            f"{scale_key} should hold {want} values for {spec.weight}/{spec.weight_granularity}, got {got}"
        )
    has_act_scale = f"{name}.act_scale" in tensors
    if has_act_scale != spec.static_activation:
        raise bad(
            f"activation_granularity={spec.activation_granularity!r} "
            f"{'needs' if spec.static_activation else 'takes no'} act_scale, the file "
            f"{'has' if has_act_scale else 'has none'}"
        )


def _check_layer(path: Path, name: str, spec: LayerSpec, model: nn.Module, tensors: dict) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise CheckpointError(f"{path}: layer {name!r} does not exist in {type(model).__name__}") from err
    if not isinstance(module, nn.Linear):
        raise CheckpointError(
            f"{path}: {name!r} is a {type(module).__name__}, expected an FP32 nn.Linear; load into a fresh "
            "(unquantized) model of the same architecture"
        )
    if (module.in_features, module.out_features) != (spec.in_features, spec.out_features):
        raise CheckpointError(
            f"{path}: {name!r} is {module.in_features}->{module.out_features} in the model but "
            f"{spec.in_features}->{spec.out_features} in the file: a different architecture"
        )
    dtype, shape = _expected_codes(spec)
    codes = tensors.get(f"{name}.w_codes")
    if codes is None or codes.dtype != dtype or tuple(codes.shape) != shape:
        got = None if codes is None else (codes.dtype, tuple(codes.shape))
        raise CheckpointError(
            f"{path}: {name}.w_codes should be {dtype} {shape} for {spec.weight}, got {got}"
        )


def _read_specs(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, LayerSpec]]:
    """The file's tensors and layer specs, after checking its format, version and digest."""
    tensors, meta = _read(path)
    if meta.get("lowbit_format") != FORMAT_NAME:
        raise CheckpointError(f"{path} was not written by lowbit.ptq.save_quantized (no lowbit-ptq metadata)")
    version = meta.get("lowbit_format_version", "?")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} uses lowbit PTQ format version {version} (written by lowbit "
            f"{meta.get('lowbit_version')}); this lowbit reads version {FORMAT_VERSION}: "
            "re-quantize the model with this version"
        )
    if meta.get("sha256") != _digest(tensors, meta):
        raise CheckpointError(
            f"{path} is corrupt: its tensors or layer metadata do not match its sha256 digest"
        )
    try:
        specs = {n: LayerSpec(**d) for n, d in json.loads(meta["layers"]).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable layer metadata ({err})") from err
    return tensors, specs


def _check_keys(path: Path, model: nn.Module, specs: dict[str, LayerSpec], tensors: dict) -> None:
    """The file holds exactly the model's state-dict keys, the quantized layers' own in place of theirs."""
    expected = set(model.state_dict())
    for name in specs:
        expected -= {k for k in expected if k.startswith(f"{name}.")}
        expected |= {k for k in tensors if k.startswith(f"{name}.")}
    if expected != set(tensors):
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(
            f"{path} does not match {type(model).__name__}: missing {missing[:5]}, unexpected {extra[:5]}"
        )


def _build_layers(path: Path, specs: dict[str, LayerSpec], tensors: dict) -> dict[str, PTQLinear]:
    """Every quantized layer built, loaded and run once on a zero row (a spec it cannot run fails here)."""
    layers = {}
    for name, spec in specs.items():
        buffers = {k: tensors[f"{name}.{k}"] for k in _WEIGHT_KEYS if f"{name}.{k}" in tensors}
        bias = tensors.get(f"{name}.bias")
        act_scale = tensors.get(f"{name}.act_scale")
        own = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
        try:
            layer = build_layer(spec, buffers, bias, act_scale)
            layer.load_state_dict(own, strict=True)
            with torch.no_grad():  # one zero row: a spec the layer cannot run fails here, not in use
                layer(torch.zeros(1, spec.in_features))
        except (ValueError, KeyError, TypeError, RuntimeError, NotImplementedError) as err:
            raise CheckpointError(f"{path}: layer {name!r} cannot be rebuilt: {err}") from err
        layers[name] = layer
    return layers


def _check_other_shapes(path: Path, model: nn.Module, specs: dict[str, LayerSpec], tensors: dict) -> None:
    """The rest of the model (not quantized layers) has the file's shapes (load_state_dict casts dtypes)."""
    model_state = model.state_dict()
    for key, t in tensors.items():
        if key in model_state and not any(key.startswith(f"{n}.") for n in specs):
            ref = model_state[key]
            if tuple(ref.shape) != tuple(t.shape):
                raise CheckpointError(
                    f"{path}: {key} is {tuple(t.shape)} in the file but {tuple(ref.shape)} in the model: "
                    "a different architecture"
                )


def _swap_in(path: Path, model: nn.Module, layers: dict[str, PTQLinear], tensors: dict) -> None:
    """Replace the layers and load every tensor; on any failure put the original layers back."""
    originals = {}
    try:
        for name, layer in layers.items():
            originals[name] = replace_module(model, name, layer)
        model.load_state_dict(tensors, strict=True)
    except Exception as err:  # not expected after the checks above; never leave a half-loaded model
        for name, module in originals.items():
            replace_module(model, name, module)
        raise CheckpointError(f"{path}: cannot be loaded into {type(model).__name__}: {err}") from err


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Rebuild the quantized layers recorded in ``path`` inside ``model`` (a fresh FP32 model of the same
    architecture, e.g. from ``load_minilm`` or ``from_config``) and load every tensor; returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a fresh FP32 model), got {type(model).__name__}")
    path = Path(path)
    tensors, specs = _read_specs(path)
    for name, spec in specs.items():  # validate everything before touching the model
        _check_spec(path, name, spec, tensors)
        _check_layer(path, name, spec, model, tensors)
    _check_keys(path, model, specs, tensors)
    layers = _build_layers(path, specs, tensors)  # build (and load, and run) every layer before replacing any
    _check_other_shapes(path, model, specs, tensors)
    _swap_in(path, model, layers, tensors)
    logger.info("loaded %d quantized layers from %s", len(specs), path)
    return model
