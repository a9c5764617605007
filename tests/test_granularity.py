"""One granularity vocabulary: lowbit.granularity.Granularity, and the PTQ recipes' role spellings of it."""

from __future__ import annotations

import pytest
import torch

import lowbit
import lowbit.formats as F
from lowbit import granularity, quantizers
from lowbit.granularity import Granularity, for_role, role_spelling
from lowbit.ptq.config import ACTIVATION_GRANULARITIES, WEIGHT_GRANULARITIES, PTQConfig, WeightOnlyConfig
from lowbit.ptq.weights import encode_weight


def test_one_class_everywhere():
    assert lowbit.Granularity is quantizers.Granularity is granularity.Granularity
    assert quantizers.GRANULARITY_KINDS == ("tensor", "row", "column", "group", "block")


def test_role_spellings_name_granularities():
    assert WEIGHT_GRANULARITIES == ("tensor", "channel", "group")
    assert ACTIVATION_GRANULARITIES == ("tensor", "token")
    assert for_role("channel", "weight") == Granularity("row")  # per output channel of W (N, K)
    assert for_role("token", "activation") == Granularity("row")  # per token of X (tokens, K)
    assert for_role("group", "weight", 32) == Granularity("group", 32)
    assert for_role("tensor", "activation") == Granularity("tensor")
    assert role_spelling(Granularity("row"), "weight") == ("channel", None)
    assert role_spelling(Granularity("row"), "activation") == ("token", None)
    assert role_spelling(Granularity("group", 64), "weight") == ("group", 64)
    for bad, role in [("token", "weight"), ("channel", "activation"), ("row", "weight")]:
        with pytest.raises(ValueError, match=f"{role} granularity must be"):
            for_role(bad, role)
    with pytest.raises(ValueError, match="no weight spelling"):
        role_spelling(Granularity("column"), "weight")


def test_channel_is_not_a_generic_alias():
    """For a generic tensor a per-channel (feature) scale is 'column': 'channel' stays a PTQ weight word."""
    with pytest.raises(ValueError, match="granularity must be"):
        quantizers.quantize(torch.ones(4, 6), F.INT4, "channel")


def test_configs_take_the_granularity_type():
    row = Granularity("row")
    by_type = PTQConfig("int8", "int8", weight_granularity=row, activation_granularity=row)
    by_name = PTQConfig("int8", "int8", weight_granularity="channel", activation_granularity="token")
    assert by_type == by_name and by_type.weight_granularity == "channel" and by_type.int8_kernel == "w7"
    assert by_name.weight_gran == Granularity("row") and by_name.activation_gran == Granularity("row")
    w_type = WeightOnlyConfig("int4", weight_granularity=Granularity("group", 32))
    assert w_type == WeightOnlyConfig("int4", weight_granularity="group", group_size=32)
    assert w_type.weight_gran == Granularity("group", 32)
    with pytest.raises(ValueError, match="disagrees"):
        WeightOnlyConfig("int4", weight_granularity=Granularity("group", 32), group_size=64)
    with pytest.raises(ValueError, match="no activation spelling"):
        PTQConfig("int8", "int8", activation_granularity=Granularity("column"))


def test_weight_spelling_quantizes_as_its_granularity(gen):
    w = torch.randn(8, 64, generator=gen)
    for spelling, group in [("tensor", None), ("channel", None), ("group", 16)]:
        got = encode_weight(w, F.INT8, spelling, group)
        want = quantizers.quantize(w, F.INT8, for_role(spelling, "weight", group))
        assert torch.equal(got["w_codes"], want.codes)
