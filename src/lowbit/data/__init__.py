"""Loaders for lowbit's offline material (docs/SPEC.md §5) and for users' own text, CSV and image files."""

from lowbit.data.fashion_mnist import load_fashion_mnist
from lowbit.data.rotten_tomatoes import TextClassificationSplits, load_rotten_tomatoes, load_text_csv
from lowbit.data.shakespeare import load_shakespeare
from lowbit.data.text import (
    CharTokenizer,
    TextSplits,
    batch_iterator,
    load_text_file,
    random_batch,
    sequential_batches,
)

__all__ = [
    "CharTokenizer",
    "TextClassificationSplits",
    "TextSplits",
    "batch_iterator",
    "load_fashion_mnist",
    "load_rotten_tomatoes",
    "load_shakespeare",
    "load_text_csv",
    "load_text_file",
    "random_batch",
    "sequential_batches",
]
