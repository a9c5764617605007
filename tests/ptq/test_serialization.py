"""Save/load of quantized models: identical outputs, clear errors for corrupt or foreign files."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
import torch

from lowbit import ptq
from lowbit.ptq import CheckpointError, PTQConfig, WeightOnlyConfig

CONFIGS = [
    PTQConfig("fp8-e4m3", "fp8-e4m3"),
    PTQConfig("int8", "int8", "channel"),
    PTQConfig("mxfp4", "mxfp4"),
    WeightOnlyConfig("int4", "group", group_size=32),
]


def _quantized(tiny_bert, batches, config):
    model = copy.deepcopy(tiny_bert)
    ptq.quantize(model, config, ptq.calibrate(model, batches[:2]))
    return model


@pytest.mark.parametrize("config", CONFIGS, ids=["e4m3", "int8-channel", "mxfp4", "int4-group"])
def test_round_trip_gives_identical_outputs(tiny_bert, batches, tmp_path: Path, config) -> None:
    model = _quantized(tiny_bert, batches, config)
    path = ptq.save_quantized(model, tmp_path / "q.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["q.safetensors"]  # no temporary file left behind
    loaded = ptq.load_quantized(copy.deepcopy(tiny_bert), path)
    with torch.no_grad():
        for b in batches:
            assert torch.equal(loaded(**b).last_hidden_state, model(**b).last_hidden_state)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        bits_a, bits_b = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
        assert a.dtype == b.dtype and torch.equal(bits_a, bits_b), name


def _rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n :])


def test_corrupt_foreign_and_incompatible_files(tiny_bert, batches, tmp_path: Path) -> None:
    model = _quantized(tiny_bert, batches, CONFIGS[0])
    good = ptq.save_quantized(model, tmp_path / "good.safetensors")
    fresh = lambda: copy.deepcopy(tiny_bert)  # noqa: E731

    flipped = tmp_path / "flipped.safetensors"
    data = bytearray(good.read_bytes())
    data[-100] ^= 0x10  # one bit in the tensor payload
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        ptq.load_quantized(fresh(), flipped)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ptq.load_quantized(fresh(), truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ptq.load_quantized(fresh(), garbage)

    future = tmp_path / "future.safetensors"
    future.write_bytes(good.read_bytes())
    _rewrite_header(future, lambda h: h["__metadata__"].update(lowbit_format_version="99"))
    with pytest.raises(CheckpointError, match="format version 99"):
        ptq.load_quantized(fresh(), future)

    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not written by lowbit"):
        ptq.load_quantized(fresh(), foreign)

    with pytest.raises(FileNotFoundError):
        ptq.load_quantized(fresh(), tmp_path / "missing.safetensors")


def test_wrong_architecture_is_refused_without_touching_the_model(tiny_bert, batches, tmp_path) -> None:
    from transformers import BertConfig, BertModel

    path = ptq.save_quantized(_quantized(tiny_bert, batches, CONFIGS[1]), tmp_path / "q.safetensors")
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    other = BertModel(cfg)
    with pytest.raises(CheckpointError, match="different architecture"):
        ptq.load_quantized(other, path)
    assert not any(isinstance(m, ptq.PTQLinear) for m in other.modules())
    with pytest.raises(ValueError, match="no quantized layers"):
        ptq.save_quantized(tiny_bert, tmp_path / "plain.safetensors")


def _edit_layer(path: Path, name: str, resign: bool, **fields) -> None:
    """Change fields of one layer's spec in the file; ``resign`` recomputes the digest (a consistent forgery
    or a buggy writer), else the digest is left as written (an edit or corruption)."""
    from safetensors import safe_open

    from lowbit.ptq.serialization import _digest

    def edit(header: dict) -> None:
        meta = header["__metadata__"]
        layers = json.loads(meta["layers"])
        layers[name].update(fields)
        meta["layers"] = json.dumps(layers, sort_keys=True)
        if resign:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta["sha256"] = _digest(tensors, meta)

    _rewrite_header(path, edit)


QUERY = "encoder.layer.0.attention.self.query"


def test_layer_metadata_is_inside_the_digest(tiny_bert, batches, tmp_path: Path) -> None:
    """Issue 14 #8: switching one layer's activation format E4M3 -> E5M2 in the file loaded silently (with
    other outputs): the digest covered the tensors only."""
    good = ptq.save_quantized(_quantized(tiny_bert, batches, CONFIGS[0]), tmp_path / "q.safetensors")
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(good.read_bytes())
    _edit_layer(edited, QUERY, resign=False, activation="fp8-e5m2")
    fresh = copy.deepcopy(tiny_bert)
    with pytest.raises(CheckpointError, match="corrupt.*metadata"):
        ptq.load_quantized(fresh, edited)
    assert not any(isinstance(m, ptq.PTQLinear) for m in fresh.modules())


@pytest.mark.parametrize(
    ("config", "fields", "match"),
    [
        (0, {"activation_granularity": "token"}, "act_scale"),  # was a raw RuntimeError after the swap
        (0, {"kind": "int8"}, "int8 layer needs int8"),  # loaded, then the forward raised a TypeError
        (0, {"fp8_compute": "xx"}, "fp8_compute"),  # loaded, then the forward raised UnboundLocalError
        (1, {"activation": "fp8-e5m2"}, "int8 layer needs int8"),
        (1, {"weight_granularity": "tensor"}, "w_scale should hold 1"),
        (3, {"group_size": 7}, "group_size"),
    ],
)
def test_inconsistent_metadata_is_refused_before_any_swap(
    tiny_bert, batches, tmp_path: Path, config: int, fields: dict, match: str
) -> None:
    """Issue 14 #8: inconsistent metadata (with a valid digest) raised a raw RuntimeError after some layers
    were already swapped, or loaded a layer that failed at its first forward."""
    path = ptq.save_quantized(_quantized(tiny_bert, batches, CONFIGS[config]), tmp_path / "q.safetensors")
    _edit_layer(
        path, "encoder.layer.1.output.dense", resign=True, **fields
    )  # a late layer: others come first
    fresh = copy.deepcopy(tiny_bert)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=match) as info:
        ptq.load_quantized(fresh, path)
    assert isinstance(info.value, ValueError)
    assert not any(isinstance(m, ptq.PTQLinear) for m in fresh.modules())
    after = fresh.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_file_respects_the_umask(tiny_bert, batches, tmp_path: Path, umask: int) -> None:
    """Issue 14 #8: save_quantized files were 0600 (mkstemp); they follow the umask like the checkpoints."""
    import os

    model = _quantized(tiny_bert, batches, CONFIGS[0])
    old = os.umask(umask)
    try:
        path = ptq.save_quantized(model, tmp_path / "q.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["q.safetensors"]


def test_version_1_files_are_refused_with_the_fix(tiny_bert, batches, tmp_path: Path) -> None:
    """Version 1 digested the tensors only; accepting it would reopen the metadata hole."""
    path = ptq.save_quantized(_quantized(tiny_bert, batches, CONFIGS[0]), tmp_path / "q.safetensors")
    _rewrite_header(path, lambda h: h["__metadata__"].update(lowbit_format_version="1"))
    with pytest.raises(CheckpointError, match="version 1.*re-quantize"):
        ptq.load_quantized(copy.deepcopy(tiny_bert), path)


def test_save_and_load_name_a_non_module(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        ptq.save_quantized({"w": torch.zeros(2)}, tmp_path / "q.safetensors")
    with pytest.raises(TypeError, match="nn.Module"):
        ptq.load_quantized("bert", tmp_path / "q.safetensors")
