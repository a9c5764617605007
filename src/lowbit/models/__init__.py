"""lowbit's models: a small GPT (incl. the Integer Transformer), a small ViT and BERT-family wrappers.

Plain torch: every projection is an ``nn.Linear``; the final layer is ``lm_head`` (GPT), ``head`` (ViT) or
``classifier`` (SentenceClassifier), so conversions can find and skip it.
"""

from lowbit.models.bert import (
    SentenceClassifier,
    encode_sentences,
    evaluate_head,
    load_minilm,
    mean_pool,
    train_linear_head,
)
from lowbit.models.gpt import GPT, GPTConfig, evaluate_lm_loss
from lowbit.models.layers import L1LayerNorm, make_activation, make_norm, poly_attention_weights
from lowbit.models.vit import ViT, ViTConfig

__all__ = [
    "GPT",
    "GPTConfig",
    "L1LayerNorm",
    "SentenceClassifier",
    "ViT",
    "ViTConfig",
    "encode_sentences",
    "evaluate_head",
    "evaluate_lm_loss",
    "load_minilm",
    "make_activation",
    "make_norm",
    "mean_pool",
    "poly_attention_weights",
    "train_linear_head",
]
