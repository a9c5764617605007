"""Tests for lowbit.data.fashion_mnist on the Debian IDX files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from lowbit.data.fashion_mnist import (
    DEFAULT_ROOT,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    TRAIN_MEAN,
    TRAIN_STD,
    load_fashion_mnist,
    read_idx,
    shuffled_batches,
    to_float,
)


@pytest.fixture(scope="module")
def fmnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return load_fashion_mnist()


def test_shapes_dtypes_and_balance(fmnist: tuple[torch.Tensor, ...]) -> None:
    x_train, y_train, x_test, y_test = fmnist
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == torch.uint8
    assert x_test.shape == (10000, 28, 28) and x_test.dtype == torch.uint8
    assert y_train.dtype == y_test.dtype == torch.int64
    assert torch.equal(y_train.bincount(), torch.full((10,), 6000))
    assert torch.equal(y_test.bincount(), torch.full((10,), 1000))
    assert int(x_train.max()) == 255 and int(x_train.min()) == 0


def test_normalisation_constants(fmnist: tuple[torch.Tensor, ...]) -> None:
    x = to_float(fmnist[0][:20000])
    assert x.shape == (20000, 1, 28, 28) and x.dtype == torch.float32
    pixels = fmnist[0].double() / 255
    assert abs(float(pixels.mean()) - TRAIN_MEAN) < 1e-3
    assert abs(float(pixels.std()) - TRAIN_STD) < 1e-3


def test_missing_root_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_bad_magic_and_truncated_files(tmp_path: Path) -> None:
    labels = Path(DEFAULT_ROOT) / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(ValueError, match="magic number"):
        read_idx(labels, IDX_IMAGES_MAGIC)
    truncated = tmp_path / "short.gz"
    with gzip.open(labels, "rb") as f:
        data = f.read()
    with gzip.open(truncated, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(ValueError, match="header promises"):
        read_idx(truncated, IDX_LABELS_MAGIC)


def test_mismatched_counts(tmp_path: Path) -> None:
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (tmp_path / name).symlink_to(Path(DEFAULT_ROOT) / name)
    shutil.copy(Path(DEFAULT_ROOT) / "train-labels-idx1-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="10000 images but 60000 labels"):
        load_fashion_mnist(tmp_path)


def test_shuffled_batches_cover_an_epoch_in_seeded_order() -> None:
    images = torch.arange(10).view(10, 1, 1).expand(10, 2, 2)
    labels = torch.arange(10)
    batches = list(shuffled_batches(images, labels, 4, torch.Generator().manual_seed(0)))
    assert [y.shape[0] for _, y in batches] == [4, 4, 2]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(10)) and not torch.equal(seen, labels)
    for x, y in batches:
        assert torch.equal(x[:, 0, 0], y)  # images stay paired with their labels
    again = torch.cat([y for _, y in shuffled_batches(images, labels, 4, torch.Generator().manual_seed(0))])
    assert torch.equal(seen, again)
    with pytest.raises(ValueError, match="labels"):
        next(shuffled_batches(images, labels[:3], 4, torch.Generator()))
