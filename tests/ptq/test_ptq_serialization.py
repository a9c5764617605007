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
    assert not any(isinstance(m, ptq.QuantLinear) for m in other.modules())
    with pytest.raises(ValueError, match="no quantized layers"):
        ptq.save_quantized(tiny_bert, tmp_path / "plain.safetensors")
