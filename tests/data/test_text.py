"""Tests for lowbit.data.text: user text files, the char tokenizer and seeded batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowbit.data.text import (
    MIN_SPLIT_CHARS,
    CharTokenizer,
    TextSplits,
    batch_iterator,
    load_text_file,
    random_batch,
    sequential_batches,
)


def test_load_text_file_holds_out_the_last_part(tmp_path: Path) -> None:
    text = "".join(f"line {i}: to be or not to be\n" for i in range(200))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    splits = load_text_file(path, val_fraction=0.25)
    assert splits.train + splits.val == text
    assert len(splits.val) == int(len(text) * 0.25)
    assert splits.name == "corpus.txt"


def test_load_text_file_normalises_crlf(tmp_path: Path) -> None:
    path = tmp_path / "dos.txt"
    path.write_bytes(b"abc def\r\n" * 100)
    splits = load_text_file(path)
    assert "\r" not in splits.train + splits.val


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe latin \xe9" * 50, "not valid UTF-8"), (b"too short", "too short")],
    ids=["not-utf8", "too-short"],
)
def test_load_text_file_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_text_file(path)


def test_load_text_file_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_text_file(tmp_path / "nope.txt")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1], ids=["zero", "one", "negative"])
def test_load_text_file_rejects_bad_fraction(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "ok.txt"
    path.write_text("x" * 1000, encoding="utf-8")
    with pytest.raises(ValueError, match="val_fraction"):
        load_text_file(path, val_fraction=fraction)


def test_text_splits_rejects_tiny_split() -> None:
    with pytest.raises(ValueError, match="val split"):
        TextSplits("t", "a" * MIN_SPLIT_CHARS, "b")


def test_char_tokenizer_round_trip_and_serialisation() -> None:
    tok = CharTokenizer.from_text("hello world", "HELLO\n")
    assert tok.vocab_size == len(set("hello worldHELLO\n"))
    ids = tok.encode("hello\nHELLO")
    assert ids.dtype == torch.long and ids.shape == (11,)
    assert tok.decode(ids) == "hello\nHELLO"
    assert tok.chars == sorted(tok.chars)
    assert CharTokenizer.from_dict(tok.to_dict()) == tok


def test_char_tokenizer_errors() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="CharTokenizer state"):
        CharTokenizer.from_dict({"type": "bpe"})
    with pytest.raises(ValueError, match="at least one"):
        CharTokenizer("")


def test_random_batch_shapes_shift_and_determinism() -> None:
    tokens = torch.arange(1000)
    x, y = random_batch(tokens, block_size=16, batch_size=8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)  # tokens are consecutive integers
    x2, _ = random_batch(tokens, 16, 8, torch.Generator().manual_seed(0))
    x3, _ = random_batch(tokens, 16, 8, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2)
    assert not torch.equal(x, x3)


def test_random_batch_reaches_the_last_token() -> None:
    tokens = torch.arange(10)
    _, y = random_batch(tokens, block_size=9, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, torch.arange(1, 10).expand(4, 9))


def test_batch_iterator_matches_repeated_random_batch() -> None:
    tokens = torch.arange(500)
    it = batch_iterator(tokens, 8, 4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x_it, _ = next(it)
        x_ref, _ = random_batch(tokens, 8, 4, g)
        assert torch.equal(x_it, x_ref)


def test_sequential_batches_cover_the_stream_in_order() -> None:
    tokens = torch.arange(103)
    batches = list(sequential_batches(tokens, block_size=10, batch_size=4))
    xs = torch.cat([x for x, _ in batches])
    assert xs.shape == (10, 10)  # (103 - 1) // 10 windows
    assert torch.equal(xs.flatten(), torch.arange(100))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    assert len(list(sequential_batches(tokens, 10, 4, max_batches=2))) == 2


def test_batches_reject_short_streams() -> None:
    with pytest.raises(ValueError, match="block_size"):
        random_batch(torch.arange(8), 8, 2, torch.Generator().manual_seed(0))


def test_load_text_file_minimum_length_is_what_the_error_says(tmp_path: Path) -> None:
    path = tmp_path / "edge.txt"
    path.write_text("x" * 639, encoding="utf-8")
    with pytest.raises(ValueError, match="at least about 640 characters"):
        load_text_file(path, val_fraction=0.1)
    path.write_text("x" * 640, encoding="utf-8")
    assert len(load_text_file(path, val_fraction=0.1).val) == MIN_SPLIT_CHARS
