"""Fashion-MNIST from the Debian ``dataset-fashion-mnist`` IDX files, parsed here (no torchvision)."""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
#: IDX magic numbers: 0x00000801 = unsigned bytes, 1 dimension (labels); 0x00000803 = 3 dimensions (images).
IDX_LABELS_MAGIC = 0x0801
IDX_IMAGES_MAGIC = 0x0803
#: Pixel mean and std of the 60k training images (after /255), measured once with load_fashion_mnist().
TRAIN_MEAN = 0.2860
TRAIN_STD = 0.3530
_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Parse one gzip-compressed IDX file of unsigned bytes, checking its magic number and its length."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"{path} is not a readable gzip file ({type(err).__name__}: {err}); reinstall "
            "dataset-fashion-mnist or pass a folder with the four intact IDX .gz files"
        ) from None
    if len(data) < 4:
        raise ValueError(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number {magic:#010x}, expected {expected_magic:#010x}")
    n_dims = magic & 0xFF
    header = 4 + 4 * n_dims
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"{path}: {len(data) - header} data bytes, but the header promises shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(
    root: str | Path = DEFAULT_ROOT,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train uint8 (60000, 28, 28), y_train int64, x_test uint8 (10000, 28, 28), y_test int64)."""
    root = Path(root)
    missing = [name for name in _FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {root} (missing {', '.join(missing)}); "
            "run: sudo apt-get install dataset-fashion-mnist, or pass root= a folder with the 4 IDX .gz files"
        )
    arrays = {
        key: read_idx(root / name, IDX_IMAGES_MAGIC if key.endswith("images") else IDX_LABELS_MAGIC)
        for key, name in _FILES.items()
    }
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
        out += [torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))]
    logger.info("Fashion-MNIST from %s: %d train / %d test images", root, out[0].shape[0], out[2].shape[0])
    return out[0], out[1], out[2], out[3]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) to float32 (N, 1, 28, 28), normalised with the training-set mean and std."""
    return ((images.float() / 255.0 - TRAIN_MEAN) / TRAIN_STD).unsqueeze(1)


def shuffled_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (images, labels) mini-batches in a seeded random order; the last partial batch is kept."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(images.shape[0], generator=generator)
    for start in range(0, images.shape[0], batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]
