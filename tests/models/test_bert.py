"""Tests for lowbit.models.bert: pooling, linear heads, the sentence classifier and the real MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from lowbit.models.bert import (
    SentenceClassifier,
    encode_sentences,
    evaluate_head,
    load_minilm,
    mean_pool,
    train_linear_head,
)

SENTENCES = [
    "A moving, beautifully acted film.",
    "A touching and wonderfully performed movie.",
    "The stock market fell sharply on Tuesday.",
    "Dull, lifeless and far too long.",
]


def _tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return BertModel(config)


def test_mean_pool_ignores_padding(gen: torch.Generator) -> None:
    hidden = torch.randn(2, 4, 3, generator=gen)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian clusters in 16-D, linearly separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, 16, generator=g) * 3
    return centres[labels] + torch.randn(n, 16, generator=g), labels


def test_train_linear_head_learns_and_is_deterministic() -> None:
    x_train, y_train = _blobs(300, 0)
    x_test, y_test = _blobs(150, 0)
    head = train_linear_head(x_train, y_train, n_classes=3, epochs=50, seed=0)
    again = train_linear_head(x_train, y_train, n_classes=3, epochs=50, seed=0)
    assert isinstance(head, nn.Linear) and head.out_features == 3
    assert torch.equal(head.weight, again.weight) and torch.equal(head.bias, again.bias)
    assert evaluate_head(head, x_test, y_test) > 95.0
    assert evaluate_head(head, x_test, (y_test + 1) % 3) < 5.0


def test_linear_head_errors() -> None:
    x, y = _blobs(30, 0)
    with pytest.raises(ValueError, match="labels must lie"):
        train_linear_head(x, y, n_classes=2)
    with pytest.raises(ValueError, match="features must be"):
        train_linear_head(x[:, :, None], y, n_classes=3)
    with pytest.raises(ValueError, match="feature rows"):
        evaluate_head(nn.Linear(16, 3), x, y[:5])


def test_sentence_classifier_on_a_tiny_bert(gen: torch.Generator) -> None:
    model = SentenceClassifier(_tiny_bert(), n_classes=3)
    ids = torch.randint(1, 50, (4, 7), generator=gen)
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, 4:] = 0
    logits = model(ids, mask)
    assert logits.shape == (4, 3)
    assert isinstance(model.classifier, nn.Linear)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert model.encoder.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    model.eval()
    ids_changed = ids.clone()
    ids_changed[0, 5] = (ids[0, 5] % 49) + 1  # a padded position: the prediction must not change
    torch.testing.assert_close(model(ids_changed, mask)[0], model(ids, mask)[0])
    with pytest.raises(ValueError, match="n_classes"):
        SentenceClassifier(_tiny_bert(), n_classes=1)


def test_load_minilm_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_minilm(tmp_path)


@pytest.fixture(scope="module")
def minilm() -> tuple[nn.Module, object]:
    return load_minilm()


@pytest.mark.slow
def test_minilm_sentence_embeddings(minilm: tuple[nn.Module, object]) -> None:
    model, tokenizer = minilm
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert not model.training
    emb = encode_sentences(model, tokenizer, SENTENCES, batch_size=3)
    assert emb.shape == (4, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6  # paraphrases
    assert sim[0, 1] > sim[0, 2] + 0.3  # film review vs finance news
    assert sim[0, 2] < 0.3
    # padding does not change the embedding: one sentence at a time gives the same vectors
    single = torch.cat([encode_sentences(model, tokenizer, [s]) for s in SENTENCES])
    torch.testing.assert_close(single, emb, rtol=1e-4, atol=1e-5)
    raw = encode_sentences(model, tokenizer, SENTENCES[:1], normalize=False)
    torch.testing.assert_close(F.normalize(raw, dim=-1), emb[:1], rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="sequence of strings"):
        encode_sentences(model, tokenizer, "one string")
