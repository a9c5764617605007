"""Integer-only BERT on a tiny random BertModel: every intermediate integer, embeddings close to FP32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from lowbit.integer import DtypeTrace  # noqa: E402
from lowbit.integer.bert import convert_bert  # noqa: E402
from lowbit.models.bert import mean_pool  # noqa: E402

#: A random tiny BERT is harder than MiniLM (no trained structure); 0.98 still fails any broken stage.
TINY_COSINE_MIN = 0.98


@pytest.fixture(scope="module")
def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=32, attn_implementation="eager",
    )  # fmt: skip
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (4, 12), generator=g)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 7:] = 0  # padding
    mask[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_bert_integer_only_and_close(tiny_bert: torch.nn.Module) -> None:
    im = convert_bert(tiny_bert, [_batch(s) for s in range(3)])
    batch = _batch(10)
    with torch.no_grad():
        ref = mean_pool(tiny_bert(**batch).last_hidden_state, batch["attention_mask"])
    trace = DtypeTrace()
    got = im(batch["input_ids"], batch["attention_mask"], None, trace)
    assert trace.non_integer() == []
    names = {r[0] for r in trace.records}
    assert {"layers.1.attn.probs", "layers.0.gelu", "layers.1.ln2", "pool.sum"} <= names
    cos = F.cosine_similarity(ref, got, dim=-1)
    assert float(cos.min()) >= TINY_COSINE_MIN
    # padded positions do not leak: changing a padded token leaves its sentence embedding unchanged
    ids2 = batch["input_ids"].clone()
    ids2[1, 9] = 5
    assert torch.equal(im(ids2, batch["attention_mask"])[1], got[1])


def test_bert_weight_bytes(tiny_bert: torch.nn.Module) -> None:
    im = convert_bert(tiny_bert, [_batch(0)])
    fp32 = sum(p.numel() * 4 for p in tiny_bert.parameters())
    assert im.weight_bytes() <= 0.3 * fp32  # MiniLM itself: 0.251 (per-channel overhead shrinks with width)


def test_bert_fused_kernels_match_traced_path(tiny_bert: torch.nn.Module) -> None:
    """Off-trace the layers run the fused kernels (QKV GEMM, requantize epilogues, native i-GELU): the same
    integers as the traced unfused path."""
    from lowbit.ops import native

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_not_native()}")
    im = convert_bert(tiny_bert, [_batch(s) for s in range(3)])
    assert all(layer.packed_qkv() is not None for layer in im.layers)
    batch = _batch(11)
    traced = im(batch["input_ids"], batch["attention_mask"], None, DtypeTrace())
    assert torch.equal(im(batch["input_ids"], batch["attention_mask"]), traced)


def test_bert_checks_its_inputs(tiny_bert: torch.nn.Module) -> None:
    """Issue 14 #7 (the BERT graph too): -1 silently indexed the last row; 1-D ids and a wrong mask shape
    gave unpacking / broadcasting errors; non-contiguous ids are valid."""
    im = convert_bert(tiny_bert, [_batch(0)])
    batch = _batch(1)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    bad = ids.clone()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match=r"input_ids holds token ids outside \[0, 100\)"):
        im(bad, mask)
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        im(ids[0], mask[0])
    with pytest.raises(ValueError, match="attention_mask"):
        im(ids, mask[:, :5])
    with pytest.raises(ValueError, match="token_type_ids holds token ids outside"):
        im(ids, mask, torch.full_like(ids, 7))
    torch.testing.assert_close(im(ids.t().contiguous().t(), mask), im(ids, mask), rtol=0, atol=0)
