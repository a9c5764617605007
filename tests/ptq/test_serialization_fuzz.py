"""Fuzz ``ptq.load_quantized`` with damaged files (issue 14): flipped bytes anywhere, truncations, edited
header JSON — every file either loads into exactly the saved model or raises CheckpointError (a
ValueError) naming the file, and a refused load leaves the model untouched (no half-loaded layer)."""

from __future__ import annotations

import copy
import functools
import json
import struct

import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import check_error, fuzz_settings

from lowbit import ptq
from lowbit.ptq import CheckpointError, PTQConfig


@functools.cache
def _saved(tmp: str) -> tuple[torch.nn.Module, torch.nn.Module, bytes, dict]:
    from pathlib import Path

    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)  # fmt: skip
    fresh = BertModel(cfg).eval()
    model = copy.deepcopy(fresh)
    batch = {"input_ids": torch.randint(1, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    ptq.quantize(model, PTQConfig("int8", "int8", "channel"), ptq.calibrate(model, [batch]))
    path = ptq.save_quantized(model, Path(tmp) / "q.safetensors")
    return fresh, model, path.read_bytes(), batch


@fuzz_settings(60)
@given(
    edit=st.sampled_from(["flip", "flip", "truncate", "header", "append"]),
    where=st.floats(0.0, 1.0),
    bit=st.integers(0, 7),
    field=st.sampled_from(
        [
            "kind",
            "weight",
            "activation",
            "activation_granularity",
            "in_features",
            "has_bias",
            "int8_kernel",
            "group_size",
            "extra",
        ]
    ),  # fmt: skip
    value=st.sampled_from([None, 0, -1, 64, "int4", "fp8-e5m2", "token", True, [], {"a": 1}]),
)
def test_fuzz_damaged_files(tmp_path_factory, edit, where, bit, field, value) -> None:
    fresh_proto, saved, data, batch = _saved(str(tmp_path_factory.mktemp("fuzz_ptq")))
    data = bytearray(data)
    if edit == "flip":
        data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
    elif edit == "truncate":
        data = data[: int(where * len(data))]
    elif edit == "append":
        data += b"\0" * (1 + bit)
    else:  # rewrite one layer's spec field in the header (the digest is left as written)
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        layers = json.loads(header["__metadata__"]["layers"])
        name = sorted(layers)[int(where * (len(layers) - 1))]
        layers[name][field] = value
        header["__metadata__"]["layers"] = json.dumps(layers)
        new = json.dumps(header).encode()
        new += b" " * ((8 - len(new) % 8) % 8)
        data = bytearray(struct.pack("<Q", len(new)) + new + data[8 + n :])
    path = tmp_path_factory.mktemp("damaged") / "d.safetensors"
    path.write_bytes(bytes(data))
    fresh = copy.deepcopy(fresh_proto)
    try:
        loaded = ptq.load_quantized(fresh, path)
    except CheckpointError as err:
        check_error(err)
        assert str(path) in str(err)
        assert not any(isinstance(m, ptq.PTQLinear) for m in fresh.modules()), "half-loaded model"
        return
    with torch.no_grad():  # a damage the format tolerates (e.g. in header padding): the same model
        assert torch.equal(loaded(**batch).last_hidden_state, saved(**batch).last_hidden_state)
