"""Users' data files (issue 14): CSV columns mapped by their header or refused, labels checked per row, empty
texts refused; corrupt Fashion-MNIST .gz files named in a ValueError."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from lowbit.data.fashion_mnist import IDX_LABELS_MAGIC, read_idx
from lowbit.data.rotten_tomatoes import load_text_csv


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _snippets(n: int = 40) -> list[tuple[str, int]]:
    return [(f"snippet number {i} is {'good' if i % 2 else 'bad'}", i % 2) for i in range(n)]


def test_label_text_header_maps_columns_by_name(tmp_path):
    rows = "".join(f"{y},{t}\n" for t, y in _snippets())
    splits = load_text_csv(_write(tmp_path, "Label,Text\n" + rows))
    assert splits.label_names == ("0", "1")  # not one class per text
    texts = splits.train_texts + splits.test_texts
    assert all(t.startswith("snippet number") for t in texts)
    for text, label in zip(splits.train_texts, splits.train_labels.tolist(), strict=True):
        assert label == int(text.split()[2]) % 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("".join(f"{y},{t}\n" for t, y in _snippets()), "columns look swapped"),
        ("review,score\n" + "".join(f"{t},{y}\n" for t, y in _snippets()), "does not name the columns"),
        (
            "text,label\n" + "".join(f"t{i},{'x' if i == 7 else i % 2}\n" for i in range(20)),
            r"row 9: label 'x'",
        ),
        ("text,label\n" + "".join(f" ,{i % 2}\n" for i in range(20)), "every text is empty"),
        ("".join(f"{t},{t[::-1]}\n" for t, _ in _snippets()), "looks like text"),
        ("text,label\n", "no rows"),
    ],
    ids=[
        "swapped-no-header",
        "unnamed-header",
        "non-integer-label",
        "empty-texts",
        "text-as-labels",
        "no-rows",
    ],
)
def test_csv_problems_are_named(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as err:
        load_text_csv(path)
    assert str(path) in str(err.value)


def test_rows_with_empty_text_are_dropped_and_logged(tmp_path, caplog):
    rows = "".join(f"{t},{y}\n" for t, y in _snippets(20)) + ",1\n,0\n"
    splits = load_text_csv(_write(tmp_path, "text,label\n" + rows))
    assert len(splits.train_texts) + len(splits.test_texts) == 20
    assert "2 rows with an empty text dropped" in caplog.text


@pytest.mark.parametrize(
    "content",
    [b"not gzip at all", b"\x1f\x8b\x08\x00garbage after a gzip magic", b""],
    ids=["plain", "bad", "empty"],
)
def test_corrupt_idx_gz_is_a_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        read_idx(path, IDX_LABELS_MAGIC)


def test_truncated_idx_gz_is_a_value_error(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(
        gzip.compress(IDX_LABELS_MAGIC.to_bytes(4, "big") + (10).to_bytes(4, "big") + b"\x01" * 10)
    )
    assert read_idx(path, IDX_LABELS_MAGIC).shape == (10,)
    path.write_bytes(path.read_bytes()[:-12])  # cut inside the deflate stream / trailer
    with pytest.raises(ValueError, match="labels.gz"):
        read_idx(path, IDX_LABELS_MAGIC)
