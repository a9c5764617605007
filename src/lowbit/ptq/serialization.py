"""Save a PTQ-quantized model to safetensors; load it back into a fresh FP32 model of the same architecture.

File layout: the model's whole ``state_dict`` (quantized layers contribute ``w_codes`` as float8/int8/uint8,
``w_scale``/``w_exp``, ``act_scale`` and ``bias``) plus string metadata:

* ``lowbit_format = "lowbit-ptq"``, ``lowbit_format_version`` (:data:`FORMAT_VERSION`), ``lowbit_version``;
* ``layers``: JSON {module name: :class:`~lowbit.ptq.modules.LayerSpec`} — formats, granularities, path;
* ``sha256``: digest of every tensor's name, dtype, shape and bytes, so a corrupted payload is detected
  (safetensors itself only checks the header).

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``). Any problem on load — not a
safetensors file, not written by lowbit.ptq, another format version, digest mismatch, a layer the model does
not have, wrong dtypes or shapes — raises :class:`CheckpointError` and leaves no half-loaded layer behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from lowbit.formats import FloatFormat, IntFormat, MXFormat, get_format
from lowbit.ptq.modules import LayerSpec, QuantLinear, build_layer

logger = logging.getLogger(__name__)

FORMAT_NAME = "lowbit-ptq"
FORMAT_VERSION = 1
_WEIGHT_KEYS = ("w_codes", "w_scale", "w_exp")


class CheckpointError(ValueError):
    """A quantized checkpoint that cannot be loaded faithfully (corrupt, foreign or incompatible)."""


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (after :func:`lowbit.ptq.quantize`) to ``path`` atomically; returns the path."""
    from safetensors.torch import save

    import lowbit

    layers = {name: m.spec for name, m in model.named_modules() if isinstance(m, QuantLinear)}
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
        "sha256": _digest(tensors),
    }
    data = save(tensors, metadata=metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Rebuild the quantized layers recorded in ``path`` inside ``model`` (a fresh FP32 model of the same
    architecture, e.g. from ``load_minilm`` or ``from_config``) and load every tensor; returns ``model``.
    """
    path = Path(path)
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
    if meta.get("sha256") != _digest(tensors):
        raise CheckpointError(f"{path} is corrupt: tensor data does not match its sha256 digest")
    try:
        specs = {n: LayerSpec(**d) for n, d in json.loads(meta["layers"]).items()}
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable layer metadata ({err})") from err
    for name, spec in specs.items():  # validate everything before touching the model
        _check_layer(path, name, spec, model, tensors)
    expected = set(model.state_dict())
    for name in specs:
        expected -= {k for k in expected if k.startswith(f"{name}.")}
        expected |= {k for k in tensors if k.startswith(f"{name}.")}
    if expected != set(tensors):
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(
            f"{path} does not match {type(model).__name__}: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    layers = {}
    for name, spec in specs.items():  # build every layer before replacing any
        buffers = {k: tensors[f"{name}.{k}"] for k in _WEIGHT_KEYS if f"{name}.{k}" in tensors}
        bias = tensors.get(f"{name}.bias")
        act_scale = tensors.get(f"{name}.act_scale")
        try:
            layers[name] = build_layer(spec, buffers, bias, act_scale)
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: layer {name!r} cannot be rebuilt: {err}") from err
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    model.load_state_dict(tensors, strict=True)
    logger.info("loaded %d quantized layers from %s", len(specs), path)
    return model
